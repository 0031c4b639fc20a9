"""The leader's one command dispatcher: every operator command, from the CLI or the page.

Two doors lead here: ``<prefix>.ctl.leader.<verb>`` requests over NATS
(:meth:`CommandDispatcher.on_msg`, used by ``qtd resume``/``ack``/``alerts``/``caps``) and the
status page's controls (:meth:`CommandDispatcher.control`, a
:class:`~qtd.control.ControlAction`). Both end in :meth:`CommandDispatcher.command`, so a kill
or a resume runs the same code whoever asked; only ``source`` (``"cli"``, ``"web"``) differs.
A page action on one node is a request to that agent (:class:`~qtd.control.NodeRequest`).

A standby leader leaves NATS requests unanswered (the active leader answers); the kill switch
itself refuses kills and resumes on a standby (:class:`~qtd.errors.OperationalError`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from qtd.bus import Subjects
from qtd.control import ControlAction, LeaderRequest, NodeReply, NodeRequest
from qtd.control.transport import request
from qtd.deploy.model import VersionRow
from qtd.errors import QtdError
from qtd.events import DECODE_ERRORS, CapOverride, Scope
from qtd.fleetsnapshot import AlertView, FleetSnapshot
from qtd.leader.alerts import AlertRecord
from qtd.leader.caps import Breach, FleetCaps
from qtd.leader.killround import KillRound, ResumeResult
from qtd.leader.lease import Standing
from qtd.leader.view import FleetView

log = logging.getLogger("qtd.leader")


class KillSwitch(Protocol):
    """The kill switch as commands use it
    (:class:`~qtd.leader.kill_switch.KillSwitchController`)."""

    async def trigger_kill(self, scope: Scope, key: str, reason: str, operator: str = "",
                           flatten: bool = False, source: str = "leader",
                           cap: str = "") -> KillRound: ...

    async def resume(self, operator: str, reason: str, timeout_s: float = 2.0, *,
                     kill_ids: list[str] | None = None, scope: Scope | None = None,
                     key: str = "", everything: bool = False) -> ResumeResult: ...


class AlertDesk(Protocol):
    """Open alerts as commands use them (:class:`~qtd.leader.alerts.AlertBook`)."""

    def ack(self, alert_id: str, operator: str) -> AlertRecord | None: ...

    def views(self) -> list[AlertView]: ...


class VersionRows(Protocol):
    """Desired vs running versions (:class:`~qtd.leader.versions.VersionBoard`)."""

    def rows(self) -> list[VersionRow]: ...


class StatusSource(Protocol):
    """The fleet now (:class:`~qtd.leader.status.FleetStatus`)."""

    def snapshot(self) -> FleetSnapshot: ...


class AuditLog(Protocol):
    """fleet.db's leader-local events (:meth:`~qtd.leader.fleetdb.FleetDB.append_local`)."""

    async def append_local(self, events: list[Any]) -> Any: ...


class CommandDispatcher:
    """Runs operator commands (see the module docstring).

    Args:
        kill: the kill switch.
        alerts: open alerts (``ack``, ``alerts``).
        caps / view: the fleet caps and the view they are measured on (``caps``,
            ``caps_raise``).
        status: the fleet snapshot (``status``).
        versions: deployed versions (``versions``).
        db: where cap overrides are stored.
        on_breaches: called with the breaches a raised cap still shows (the leader trips
            them).
        standing: whether this leader acts.
        nc / subjects: the bus link (replies; page actions on one node).
        instance: this leader's ``lease.instance`` (``status``).
        node_timeout_s: how long a page action on one node waits for the agent's reply.
    """

    def __init__(self, *, kill: KillSwitch, alerts: AlertDesk, caps: FleetCaps,
                 view: FleetView, status: StatusSource, versions: VersionRows, db: AuditLog,
                 on_breaches: Callable[[list[Breach]], None], standing: Standing,
                 nc: Client, subjects: Subjects, instance: str,
                 node_timeout_s: float = 5.0) -> None:
        self._kill, self._alerts, self._caps, self._view = kill, alerts, caps, view
        self._versions, self._db, self._on_breaches = versions, db, on_breaches
        self._status = status
        self._standing, self._nc, self._subjects = standing, nc, subjects
        self._instance, self._node_timeout_s = instance, node_timeout_s

    async def on_msg(self, msg: Msg) -> None:
        """A ``<prefix>.ctl.leader.<verb>`` request: run it, reply ``{"ok": true, ...}`` or
        ``{"ok": false, "error": ...}``; a standby stays silent."""
        if not self._standing.is_active():
            return  # a standby stays silent: the active leader answers
        verb = msg.subject.rsplit(".", 1)[-1]
        try:
            req = msgspec.json.decode(msg.data or b"{}", type=LeaderRequest)
            reply: dict[str, Any] = {"ok": True, **await self.command(verb, req)}
        except (QtdError, *DECODE_ERRORS) as exc:
            reply = {"ok": False, "error": str(exc)}
        if msg.reply:
            await self._nc.publish(msg.reply, msgspec.json.encode(reply))

    async def control(self, action: ControlAction) -> dict[str, Any]:
        """A page control: one node's agent (``target="node"``) or the leader's ``kill`` /
        ``resume`` with ``source="web"``; returns a JSON-able result.

        Raises:
            QtdError: as :meth:`command`; ConfigError for target ``kill`` but resume.
        """
        if action.target == "node":
            verb, node_req = action.node_request()
            reply = await self._ask_node(action.key, verb, node_req)
            return {"node": action.key, "ok": reply.ok, "message": reply.message}
        verb, req = action.leader_request()
        return await self.command(verb, req, source="web")

    async def command(self, verb: str, req: LeaderRequest, *,
                      source: str = "cli") -> dict[str, Any]:
        """Run an operator command (``resume``, ``ack``, ``alerts``, ``kill``, ``versions``,
        ``caps``, ``caps_raise``, ``status``).

        Args:
            verb: the command.
            req: its body.
            source: who asked, recorded with a kill (``"cli"``, ``"web"``).

        Raises:
            QtdError: unknown verb, missing operator/reason, unknown alert.
        """
        if verb == "resume":
            res = await self._kill.resume(req.operator, req.reason, kill_ids=req.kill_ids,
                                          scope=req.scope, key=req.key,
                                          everything=req.everything)
            return {"resumed": not res.still_active, **msgspec.to_builtins(res)}
        if verb == "ack":
            rec = self._alerts.ack(req.alert_id, req.operator or "operator")
            if rec is None:
                raise QtdError(f"no open alert {req.alert_id!r}", alert_id=req.alert_id)
            return {"alert_id": rec.alert_id, "status": rec.status}
        if verb == "alerts":
            return {"alerts": msgspec.to_builtins(self._alerts.views())}
        if verb == "kill":
            rnd = await self._kill.trigger_kill(req.scope or Scope.GLOBAL, req.key,
                                                req.reason or "operator kill",
                                                req.operator, req.flatten, source=source)
            return {"kill_id": rnd.kill_id, "expected": sorted(rnd.expected)}
        if verb == "versions":  # the bots' versions, and the qtd release of each agent
            return {"versions": msgspec.to_builtins(self._versions.rows()),
                    "qtd_versions": msgspec.to_builtins(self._status.snapshot().qtd_versions)}
        if verb in ("caps", "caps_raise"):
            return await self._caps_command(verb, req)
        if verb == "status":
            return {"snapshot": msgspec.to_builtins(self._status.snapshot()),
                    "instance": self._instance, "active": self._standing.is_active()}
        raise QtdError(f"unknown leader command {verb!r}", verb=verb)

    async def _caps_command(self, verb: str, req: LeaderRequest) -> dict[str, Any]:
        """``caps``: every cap and today's overrides; ``caps_raise``: store an audited
        override in fleet.db, then put it in force (and measure the caps again)."""
        caps, view = self._caps, self._view
        if verb == "caps_raise":
            ev: CapOverride = caps.raise_limit(view, req.cap, req.key, req.limit,
                                               req.operator, req.reason)
            await self._db.append_local([ev])
            caps.apply_override(ev)
            log.warning("caps.raised cap=%s key=%s old=%g new=%g day=%s operator=%s "
                        "reason=%r", ev.cap, ev.cap_key, ev.old_limit, ev.new_limit,
                        ev.trading_day, ev.operator, ev.reason)
            breaches: list[Breach] = caps.evaluate(view)
            self._on_breaches(breaches)
        return {"caps": msgspec.to_builtins(view.caps),
                "overrides": msgspec.to_builtins(caps.overrides.active()),
                "trading_day": caps.overrides.today()}

    async def _ask_node(self, node: str, verb: str, req: NodeRequest) -> NodeReply:
        try:
            return await request(self._nc, node, verb, req, prefix=self._subjects.prefix,
                                 timeout_s=self._node_timeout_s)
        except Exception as exc:  # timeout, no responders: the operator must see it
            return NodeReply(ok=False, node=node, verb=verb,
                             message=f"no reply ({type(exc).__name__})")
