"""``qtd up``: the whole fleet on one machine, on real market data.

* :mod:`qtd.up.layout` — the state directory and the shipped ``etc/``.
* :mod:`qtd.up.configs` — leader, agent, risk and bot configs generated from ``etc/``.
* :mod:`qtd.up.procs` — child processes: start, stop in order, leftover pids.
* :mod:`qtd.up.summary` — the live summary from the leader's fleet view.
* :mod:`qtd.up.runner` — :func:`run_up`, which drives it all.
"""

from __future__ import annotations

from qtd.up.configs import DEFAULT_BARS_PER_S
from qtd.up.layout import Layout, find_etc
from qtd.up.runner import DEFAULT_AGENTS, UpOptions, run_up

__all__ = ["DEFAULT_AGENTS", "DEFAULT_BARS_PER_S", "Layout", "UpOptions", "find_etc", "run_up"]
