"""The leader's side of the status page: :class:`LeaderSource`, the
:class:`~qtd.web.protocol.FleetSource` over a running :class:`~qtd.leader.Leader`.

The web app sees only the protocol; this module is the one place that reads the leader for
it (view, kill switch, alerts, version board, quality monitor, fleet.db). Every control is
audited by the leader as a :class:`~qtd.events.CommandAudit` event (``source="web"``, with
the operator), on top of the kill switch's own :class:`~qtd.events.KillSwitch` audit.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from qtd.agent.control import CommandReply, CommandRequest, request
from qtd.deploy.model import VersionRow
from qtd.errors import ConfigError
from qtd.events import AnyEvent, CommandAudit, Scope, decode_many
from qtd.fleetsnapshot import FleetSnapshot
from qtd.leader.fleetdb import LEADER_NODE
from qtd.quality.daily import DailyReport, build_daily, previous_day
from qtd.web.protocol import ControlAction, QualityView

if TYPE_CHECKING:
    from qtd.leader.daemon import Leader

SCOPES: dict[str, Scope] = {"global": Scope.GLOBAL, "bot": Scope.STRATEGY,
                            "account": Scope.ACCOUNT, "symbol": Scope.SYMBOL}


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
    """:class:`~qtd.web.protocol.FleetSource` over a running :class:`~qtd.leader.Leader`.

    Args:
        leader: a started leader (its view, kill switch, alerts, version board, quality
            monitor and fleet.db are used).
        node_timeout_s: how long a node-level command waits for the agent's reply.
    """

    def __init__(self, leader: Leader, node_timeout_s: float = 5.0) -> None:
        self.leader = leader
        self.reader = FleetDBReader(leader.cfg.fleet_db)
        self.node_timeout_s = node_timeout_s

    def snapshot(self) -> FleetSnapshot:
        return self.leader.view.snapshot()

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
        lead = self.leader
        if a.target == "node":
            verb = {"kill": "halt", "flatten": "flatten", "resume": "resume"}[a.verb]
            reply = await self._ask_node(a.key, verb, a)
            return {"node": a.key, "ok": reply.ok, "message": reply.message}
        if a.verb == "resume":
            res = await lead.kill.resume(
                a.operator, a.reason, kill_ids=[a.key] if a.target == "kill" else None,
                scope=SCOPES.get(a.target) if a.target not in ("global", "kill") else None,
                key=a.key)
            return {"resumed": not res.still_active, **msgspec.to_builtins(res)}
        if a.target == "kill":
            raise ConfigError("target 'kill' is for resume only", source="<request>",
                              field="target", value=a.target, rule="resume only")
        rnd = await lead.kill.trigger_kill(SCOPES[a.target], a.key, a.reason, a.operator,
                                           flatten=a.verb == "flatten", source="web")
        return {"kill_id": rnd.kill_id, "expected": sorted(rnd.expected)}

    async def _ask_node(self, node: str, verb: str, a: ControlAction) -> CommandReply:
        req = CommandRequest(operator=a.operator, reason=a.reason)
        try:
            return await request(self.leader.nc, node, verb, req,
                                 prefix=self.leader.subjects.prefix,
                                 timeout_s=self.node_timeout_s)
        except Exception as exc:  # timeout, no responders: the operator must see it
            return CommandReply(ok=False, node=node, verb=verb,
                                message=f"no reply ({type(exc).__name__})")

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
