"""The leader: fleet view, fleet-wide caps, the global kill switch, liveness and paging.

Public API: :class:`Leader` (the daemon), :class:`FleetView` and its snapshot
(:class:`FleetSnapshot`), :class:`LeaderConfig` and :func:`load_leader_config`,
:class:`FleetDB`, :class:`KillSwitchController`, :func:`ack_subject`, :class:`LeaderLease`
(standby leaders).
"""

from __future__ import annotations

from qtd.fleetsnapshot import FleetSnapshot
from qtd.leader.config import LeaderConfig, load_leader_config, parse_leader_config
from qtd.leader.daemon import CommandRequest, Leader
from qtd.leader.fleetdb import FleetDB, Origin
from qtd.leader.kill import KillRound, KillSwitchController, ack_subject
from qtd.leader.lease import LeaderLease, LeaseRecord
from qtd.leader.view import FleetView

__all__ = [
    "CommandRequest",
    "FleetDB",
    "FleetSnapshot",
    "FleetView",
    "KillRound",
    "KillSwitchController",
    "Leader",
    "LeaderConfig",
    "LeaderLease",
    "LeaseRecord",
    "Origin",
    "ack_subject",
    "load_leader_config",
    "parse_leader_config",
]
