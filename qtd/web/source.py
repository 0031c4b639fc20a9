"""What the status page reads and asks: the :class:`FleetSource` protocol and its leader
implementation :class:`LeaderSource`.

The web app never touches the leader's internals; it calls a source. Tests pass a source
built on a :class:`~qtd.leader.FleetView` fed events directly, or the real leader wrapped in
:class:`LeaderSource`. Every control is audited by the leader as a
:class:`~qtd.events.CommandAudit` event (``source="web"``, with the operator), on top of the
kill switch's own :class:`~qtd.events.KillSwitch` audit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol

import msgspec

from qtd.agent.control import CommandReply, CommandRequest, request
from qtd.errors import ConfigError
from qtd.events import AnyEvent, CommandAudit, Scope
from qtd.fleetsnapshot import FleetSnapshot
from qtd.leader.fleetdb import LEADER_NODE
from qtd.web.detail import FleetDBReader

if TYPE_CHECKING:
    from qtd.leader.daemon import Leader
    from qtd.quality.monitor import QualityMonitor

Target = Literal["global", "node", "bot", "account", "symbol", "kill"]
Verb = Literal["kill", "flatten", "resume"]
SCOPES: dict[str, Scope] = {"global": Scope.GLOBAL, "bot": Scope.STRATEGY,
                            "account": Scope.ACCOUNT, "symbol": Scope.SYMBOL}


class ControlAction(msgspec.Struct, frozen=True, kw_only=True):
    """One operator control from the status page or the API.

    Attributes:
        verb: ``kill`` (halt), ``flatten`` (halt and close positions) or ``resume``.
        target: ``global``, ``node`` (one agent), ``bot`` (a strategy, fleet-wide),
            ``account``, ``symbol``, or ``kill`` (resume only: one active kill by id).
        key: the node, bot, account, symbol or kill id ("" for global). Resume of
            ``global`` releases the only active kill (refused when several are active);
            of ``bot``/``account``/``symbol`` every active kill on that scope and key.
        reason: why (required, audited).
        operator: who (audited).
    """

    verb: Verb
    target: Target = "global"
    key: str = ""
    reason: str
    operator: str


class FleetSource(Protocol):
    """The leader's read and control API as the web app uses it."""

    def snapshot(self) -> FleetSnapshot:
        """The fleet now (see :mod:`qtd.fleetsnapshot`)."""
        ...

    async def control(self, action: ControlAction) -> dict[str, Any]:
        """Run a kill, flatten or resume; returns a JSON-able result."""
        ...

    async def ack(self, alert_id: str, operator: str) -> bool:
        """Acknowledge an open alert; False when there is no such open alert."""
        ...

    async def bot_events(self, node: str, bot: str, limit: int,
                         kinds: tuple[str, ...] = ()) -> list[AnyEvent]:
        """The bot's last ``limit`` stored events (of ``kinds`` if given), oldest first."""
        ...


class LeaderSource:
    """:class:`FleetSource` over a running :class:`~qtd.leader.Leader`.

    Args:
        leader: a started leader (its view, kill switch, alerts and fleet.db are used).
        node_timeout_s: how long a node-level command waits for the agent's reply.
    """

    def __init__(self, leader: Leader, node_timeout_s: float = 5.0) -> None:
        self.leader = leader
        self.reader = FleetDBReader(leader.cfg.fleet_db)
        self.node_timeout_s = node_timeout_s

    def snapshot(self) -> FleetSnapshot:
        return self.leader.view.snapshot()

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

    def quality(self) -> QualityMonitor:
        """The leader's execution-quality and surveillance monitor (optional in a source)."""
        return self.leader.quality

    async def bot_events(self, node: str, bot: str, limit: int,
                         kinds: tuple[str, ...] = ()) -> list[AnyEvent]:
        return await self.reader.bot_events(node, bot, limit, kinds)
