"""The per-server agent daemon: supervised bots, telemetry over NATS, control, fail-safe.

* :mod:`qtd.agent.config` — :class:`AgentConfig` (``etc/agent.toml``).
* :mod:`qtd.agent.daemon` — :func:`~qtd.agent.daemon.build_agent` and the agent: start-up
  order, task group, shutdown (only the CLI imports it).
* :mod:`qtd.agent.kernel` — the immutable kernel (store, projections, risk engine, router,
  clock), built before any service.
* :mod:`qtd.agent.ports` — the narrow interfaces services are built with; services:
  :mod:`~qtd.agent.bots`, :mod:`~qtd.agent.schedule`, :mod:`~qtd.agent.deploy_watch`
  (deploys and canary), :mod:`~qtd.agent.reconciling`, :mod:`~qtd.agent.loops`
  (telemetry, kill file), :mod:`~qtd.agent.control_verbs` (control),
  :mod:`~qtd.agent.storefault`, :mod:`~qtd.agent.storebehind`.
* :mod:`qtd.agent.accounts` — broker accounts: credentials, adapters, parallel start-up.
* :mod:`qtd.agent.schedule` — session schedule: start, stop or flatten on the venue session.
* :mod:`qtd.agent.routed` — bots yielded by the routes file.
"""

from __future__ import annotations

from qtd.agent.config import AgentConfig, load_agent_config, parse_agent_config

__all__ = [
    "AgentConfig",
    "load_agent_config",
    "parse_agent_config",
]
