"""Liveness: agents' heartbeats (P2 when missing) and bots' data (P3 when stale).

Ages are measured on the leader's clock from when a heartbeat, PnL tick or event was
*received*. An agent is checked from its first heartbeat, a bot from its first tick or event.
When the heartbeat or the data comes back the alert is closed (and the recovery paged).
"""

from __future__ import annotations

from qtd.events import Severity
from qtd.leader.alerts import AlertBook
from qtd.leader.config import LivenessConfig
from qtd.leader.view import FleetView

_NS = 1_000_000_000


class LivenessMonitor:
    """Opens and closes heartbeat and staleness alerts (call :meth:`check` periodically).

    Args:
        cfg: timeouts.
        view: the fleet view (heartbeats and activity times).
        alerts: the alert book.
    """

    def __init__(self, cfg: LivenessConfig, view: FleetView, alerts: AlertBook) -> None:
        self.cfg = cfg
        self.view = view
        self.alerts = alerts

    def check(self) -> None:
        """Open alerts for silent agents and stale bots; close recovered ones."""
        now = self.view.clock.now_ns()
        limit = self.cfg.heartbeat_timeout_s
        for node, (_, seen) in self.view.heartbeats.items():
            age = (now - seen) / _NS
            key = f"hb:{node}"
            if age > limit:
                self.alerts.raise_alert(
                    key, Severity.P2, f"agent {node} heartbeat missing for {age:.1f}s",
                    trigger="heartbeat_missing", limit=limit, value=round(age, 3), unit="s",
                    node=node)
            elif key in self.alerts.open:
                self.alerts.close(key, f"agent {node} heartbeat back")
        for (node, bot), seen in self.view.activity.items():
            self._check_bot(node, bot, (now - seen) / _NS)

    def _check_bot(self, node: str, bot: str, age: float) -> None:
        limit = self.cfg.bot_stale_overrides.get(f"{node}/{bot}", self.cfg.bot_stale_s)
        key = f"stale:{node}/{bot}"
        if age > limit:
            self.alerts.raise_alert(
                key, Severity.P3, f"bot {node}/{bot} has sent no data for {age:.0f}s",
                trigger="bot_data_stale", limit=limit, value=round(age, 3), unit="s",
                node=node, bot=bot)
        elif key in self.alerts.open:
            self.alerts.close(key, f"bot {node}/{bot} data back")
