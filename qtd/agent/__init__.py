"""The per-server agent daemon: supervised bots, telemetry over NATS, control, fail-safe.

* :mod:`qtd.agent.config` — :class:`AgentConfig` (``etc/agent.toml``).
* :mod:`qtd.agent.daemon` — :class:`Agent`: start-up order, task group, shutdown.
* :mod:`qtd.agent.control` — the control protocol over NATS, :func:`send_kill` (for ``qtd
  kill`` and the leader); its messages are in :mod:`qtd.control`.
* :mod:`qtd.agent.accounts` — broker accounts: credentials, adapters, parallel start-up.
* :mod:`qtd.agent.schedule` — session schedule: start, stop or flatten on the venue session.
* :mod:`qtd.agent.routed` — bots yielded by the routes file.
"""

from __future__ import annotations

from qtd.agent.config import AgentConfig, load_agent_config, parse_agent_config
from qtd.agent.control import kill_ack_subject, read_kills, release_kills, send_kill

__all__ = [
    "AgentConfig",
    "kill_ack_subject",
    "load_agent_config",
    "parse_agent_config",
    "read_kills",
    "release_kills",
    "send_kill",
]
