"""Strategy workers: the operator's strategy code runs in worker processes, never in the agent.

* :mod:`qtd.workers.protocol` — the messages (msgspec, msgpack frames on a Unix socket).
* :mod:`qtd.workers.host` — the worker process: imports admitted strategies, runs hooks.
* :mod:`qtd.workers.pool` — the agent's side: a forkserver template, grouping, deadlines,
  killing, memory reports.
* :mod:`qtd.workers.load` — importing a strategy file (admission and workers alike).

The runner (:mod:`qtd.runner`) drives a bot the same way inline (backtests) and through a
worker (the live agent, ``qtd backtest --isolate``): only the transport of a hook call differs.
"""
