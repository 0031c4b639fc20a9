"""The leader's side of the status page: :class:`LeaderSource`, the
:class:`~qtd.web.protocol.FleetSource` over a running leader's parts (:class:`LeaderParts`).

The web app sees only the protocol; this module is the one place that reads the leader for
it (view, kill switch, alerts, version board, quality monitor, fleet.db). Every control is
audited by the leader as a :class:`~qtd.events.CommandAudit` event (``source="web"``, with
the operator), on top of the kill switch's own :class:`~qtd.events.KillSwitch` audit.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any, Protocol

from qtd.clock import Clock
from qtd.control import SCOPES, ControlAction
from qtd.deploy.model import VersionRow
from qtd.events import AnyEvent, CommandAudit, decode_many
from qtd.fleetsnapshot import FleetSnapshot
from qtd.leader.alerts import AlertBook
from qtd.leader.dispatch import CommandDispatcher
from qtd.leader.fleetdb import LEADER_NODE, FleetDB
from qtd.leader.status import FleetStatus
from qtd.leader.versions import VersionBoard
from qtd.quality.daily import DailyReport, build_daily, previous_day
from qtd.quality.monitor import QualityMonitor
from qtd.web.protocol import QualityView


class LeaderParts(Protocol):
    """What the page's source reads of a running leader (the leader's read-only
    properties; :class:`qtd.leader.daemon.Leader` has them)."""

    @property
    def clock(self) -> Clock: ...
    @property
    def db(self) -> FleetDB: ...
    @property
    def alerts(self) -> AlertBook: ...
    @property
    def status(self) -> FleetStatus: ...
    @property
    def dispatch(self) -> CommandDispatcher: ...
    @property
    def versions(self) -> VersionBoard: ...
    @property
    def quality(self) -> QualityMonitor: ...


class FleetDBReader:
    """Read-only queries on fleet.db (a fresh ``mode=ro`` connection per query, off-loop:
    the web app can never write the leader's record).

    Args:
        path: the leader's fleet.db.
    """

    def __init__(self, path: str | Path) -> None:
        self.uri = f"{Path(path).resolve().as_uri()}?mode=ro"

    async def bot_events(self, node: str, bot: str, limit: int,
                         kinds: tuple[str, ...] = ()) -> list[AnyEvent]:
        """The bot's last ``limit`` events (of ``kinds`` if given), oldest first."""
        return await asyncio.to_thread(self._bot_events, node, bot, limit, kinds)

    def _bot_events(self, node: str, bot: str, limit: int, kinds: tuple[str, ...]
                    ) -> list[AnyEvent]:
        sql = "SELECT payload FROM events WHERE node = ? AND bot = ?"
        args: list[object] = [node, bot]
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            args += kinds
        conn = sqlite3.connect(self.uri, uri=True)
        try:
            rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        finally:
            conn.close()
        return decode_many([r[0] for r in reversed(rows)])


class LeaderSource:
    """:class:`~qtd.web.protocol.FleetSource` over a running leader.

    Args:
        leader: a started leader's parts (status, command dispatcher, alerts, version
            board, quality monitor, fleet.db, clock).
        fleet_db: the leader's fleet.db path, read through :class:`FleetDBReader`.
    """

    def __init__(self, leader: LeaderParts, fleet_db: str | Path) -> None:
        self.leader = leader
        self.reader = FleetDBReader(fleet_db)

    def snapshot(self) -> FleetSnapshot:
        return self.leader.status.snapshot()

    def versions(self) -> list[VersionRow]:
        return list(self.leader.versions.rows())

    def quality(self) -> QualityView:
        mon = self.leader.quality
        return QualityView(rows=mon.rows(), breaches=list(mon.breaches),
                           finding_counts=dict(mon.finding_counts))

    async def daily_report(self, day: str | None) -> DailyReport | None:
        mon = self.leader.quality
        if mon.db_path is None:
            return None
        day = day or previous_day(mon.clock.now_ns(), mon.trading_day)
        return await build_daily(mon.db_path, day, mon.trading_day,
                                 thresholds=mon.cfg.execution, surveil=mon.cfg.surveil)

    async def control(self, action: ControlAction) -> dict[str, Any]:
        try:
            result = await self._control(action)
        except Exception as exc:
            await self._audit(action, ok=False, result=f"{type(exc).__name__}: {exc}")
            raise
        await self._audit(action, ok=True, result=str(result)[:500])
        return result

    async def _control(self, a: ControlAction) -> dict[str, Any]:
        return await self.leader.dispatch.control(a)

    async def _audit(self, a: ControlAction, *, ok: bool, result: str) -> None:
        now = self.leader.clock.now_ns()
        scope = None if a.target == "node" else SCOPES.get(a.target)
        await self.leader.db.append_local([CommandAudit(
            node=LEADER_NODE, ts_event=now, ts_init=now, verb=f"{a.verb}:{a.target}",
            operator=a.operator, reason=a.reason, scope=scope, scope_key=a.key, ok=ok,
            result=result, source="web")])

    async def ack(self, alert_id: str, operator: str) -> bool:
        return self.leader.alerts.ack(alert_id, operator) is not None

    async def bot_events(self, node: str, bot: str, limit: int,
                         kinds: tuple[str, ...] = ()) -> list[AnyEvent]:
        return await self.reader.bot_events(node, bot, limit, kinds)
