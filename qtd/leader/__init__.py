"""The leader: fleet view, fleet-wide caps, the global kill switch, liveness and paging.

Public API: :class:`FleetView` and its snapshot
(:class:`FleetSnapshot`), :class:`LeaderConfig` and :func:`load_leader_config`,
:class:`FleetDB`, :class:`KillSwitchController`, :func:`ack_subject`, :class:`LeaderLease`
(standby leaders). The daemon (:mod:`qtd.leader.daemon`) is imported by the CLI alone.
"""

from __future__ import annotations

from qtd.fleetsnapshot import FleetSnapshot
from qtd.leader.config import LeaderConfig, load_leader_config, parse_leader_config
from qtd.leader.fleetdb import FleetDB, Origin
from qtd.leader.kill_switch import KillSwitchController, ack_subject
from qtd.leader.killround import KillRound
from qtd.leader.lease import LeaderLease, LeaseRecord
from qtd.leader.view import FleetView

__all__ = [
    "FleetDB",
    "FleetSnapshot",
    "FleetView",
    "KillRound",
    "KillSwitchController",
    "LeaderConfig",
    "LeaderLease",
    "LeaseRecord",
    "Origin",
    "ack_subject",
    "load_leader_config",
    "parse_leader_config",
]
