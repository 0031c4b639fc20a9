"""The agent's side of control: kill switches (NATS, KV, kill file) and ctl verbs.

Every command is audited as a :class:`~qtd.events.CommandAudit` event in the store; every
applied kill is acknowledged twice on ``<prefix>.ack.kill.<node>`` (see
:mod:`qtd.control.transport`): a :class:`~qtd.events.KillAck` with ``stage="in_force"`` as
soon as the scope is HALTED in memory (published only), then the one stored in the event log
(``stage="durable"``) once it and the kill's KillSwitch and TradingStateChanged are fsynced.

Verbs on ``<prefix>.ctl.<node>.<verb>``:

* ``status`` — states, bots, store and outbox figures, NATS and leader.
* ``halt`` — HALT a scope (default GLOBAL) and cancel its open orders (a kill without
  flatten); needs ``operator`` and ``reason``.
* ``resume`` — lift a scope to ACTIVE; needs ``operator`` and ``reason``. Refused while a
  kill in the fleet's kill set (KV ``kill``) holds exactly that scope and key: release that
  kill first (``qtd resume --kill-id``). Resuming a bot (scope STRATEGY) that the supervisor
  left HALTED also restarts it.
* ``flatten`` — HALT the scope, cancel its orders and close its positions (reduce-only
  market orders through the risk engine); needs ``operator`` and ``reason``.
* ``reload`` — re-admit the bot configs; a bot whose params changed (same strategy source)
  swaps them at its next bar; anything else needs a restart and is reported.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from qtd.admit import admit_bot
from qtd.agent.storebehind import refuses_resume
from qtd.agent.wiring import bot_files, status_of
from qtd.bus.rejects import reject_server_reply
from qtd.control import KillCommand, NodeReply, NodeRequest, decode_kill
from qtd.control.transport import kill_ack_subject, read_kills
from qtd.errors import ConfigError
from qtd.events import (
    DECODE_ERRORS,
    AckStage,
    CommandAudit,
    KillAck,
    ParamsChanged,
    Scope,
)
from qtd.outbox import Outbox
from qtd.runner import BotState

if TYPE_CHECKING:
    from qtd.agent.kernel import Kernel
    from qtd.agent.link import BusLink
    from qtd.agent.ports import ControlledBots
    from qtd.agent.telemetry import FailSafe

log = logging.getLogger("qtd.control.transport")
_bus_log = logging.getLogger("qtd.agent")  # NATS-side messages, as the other loops
NATS_ERRORS = (nats.errors.Error, nats.js.errors.Error, OSError, asyncio.TimeoutError)


class Control:
    """The agent's control service (module docstring): kills and ctl verbs.

    Args:
        kernel: the agent's kernel (router, engine, store, clock, config).
        bots: the bots it reports, resumes and reloads.
        link: the bus link (None: no NATS configured).
        failsafe: the leader fail-safe (its silence is reported).
        sessions: the session schedule's status (bot → session, phase, on_close).

    Attributes:
        kills_applied: ids of every kill applied by this process (in force).
        kills_durable: ids of those whose KillAck is stored (durable).
        kv_kill: a kill is set in the fleet's kill set (as last read).
    """

    def __init__(self, kernel: Kernel, bots: ControlledBots, link: BusLink | None,
                 failsafe: FailSafe, sessions: Callable[[], dict[str, dict[str, str]]]
                 ) -> None:
        self.k, self.bots, self.link, self.failsafe = kernel, bots, link, failsafe
        self.sessions = sessions
        self.kills_applied: set[str] = set()
        self.kills_durable: set[str] = set()
        self.kv_kill = False
        self._verbs: dict[str, Callable[[NodeRequest], Awaitable[NodeReply]]] = {
            "status": self._status, "halt": self._halt, "resume": self._resume,
            "flatten": self._flatten, "reload": self._reload}

    @property
    def kill_active(self) -> bool:
        """A kill is set: in the KV bucket (as last read) or as the local kill file."""
        return self.kv_kill or os.path.exists(self.k.cfg.kill_file)

    # --- subscriptions ----------------------------------------------------------------------

    async def subscribe(self, nc: Client) -> None:
        """Answer ctl verbs on ``<prefix>.ctl.<node>.<verb>``, apply kills broadcast on
        ``<prefix>.ctl.kill``, then apply the kill set in KV."""
        s = self.k.subjects

        async def on_ctl(m: Msg) -> None:
            if reject_server_reply("command", m.subject, m.data, m.headers, _bus_log):
                return  # e.g. a stream republish or an API answer aimed here
            verb = m.subject.rsplit(".", 1)[-1]
            reply = await self.handle(verb, m.data)
            if m.reply:
                await m.respond(msgspec.json.encode(reply))

        async def on_kill(m: Msg) -> None:
            if reject_server_reply("kill", m.subject, m.data, m.headers, _bus_log):
                return  # another client made the server answer here: not a kill
            await self.apply_kill(decode_kill(m.data), via="core")

        await nc.subscribe(s.ctl_node(self.k.node), cb=on_ctl)
        await nc.subscribe(s.ctl_kill, cb=on_kill)

    async def poll_kv_once(self) -> None:
        """Read the fleet's kill set (KV) and apply every kill in it not applied yet."""
        link = self.link
        if link is None or link.nc is None or not link.connected:
            return
        try:
            kills = await asyncio.wait_for(read_kills(link.nc), 2.0)
        except NATS_ERRORS as exc:
            _bus_log.debug("kill key read failed: %r", exc)
            return
        self.kv_kill = bool(kills.kills)
        for msg in kills.kills:
            await self.apply_kill(msg, via="kv")

    # --- kills ------------------------------------------------------------------------------

    async def apply_kill(self, msg: KillCommand, *, via: str) -> KillAck | None:
        """Apply a kill once per id and acknowledge it twice on ``<prefix>.ack.kill.<node>``:
        ``stage="in_force"`` as soon as the scope is HALTED in memory (before its cancels),
        then ``stage="durable"`` once the KillSwitch, TradingStateChanged and KillAck events
        are fsynced (after the cancels, the ``kill_store_delay_s`` pause unless the kill
        flattens, and any flatten orders). A repeat over core NATS is
        acknowledged once with ``duplicate=True`` (``durable`` when the first application
        finished, else ``in_force``); a repeat seen in the KV bucket is ignored.

        Returns:
            The stored (durable) KillAck, the duplicate ack published, or None.
        """
        now = self.k.clock.now_ns()
        if msg.id in self.kills_applied:
            if via == "kv":
                return None
            ack = self._ack(msg, now, AckStage.DURABLE if msg.id in self.kills_durable
                            else AckStage.IN_FORCE, duplicate=True)
            await self._publish_ack(ack)
            return ack
        self.kills_applied.add(msg.id)
        self.kv_kill = True

        async def in_force() -> None:
            await self._publish_ack(self._ack(msg, now, AckStage.IN_FORCE))
            await asyncio.sleep(0)  # let the client's flusher write it before the cancels

        async def before_store() -> None:  # the cancels are out; a flatten's orders wait
            delay = self.k.cfg.kill_store_delay_s
            if delay and not msg.flatten:
                await asyncio.sleep(delay)

        report = await self.k.router.kill(msg, in_force, before_store)
        stored = await self.k.store.append(self._ack(
            msg, now, AckStage.DURABLE, canceled=report.canceled,
            flatten_orders=len(report.flatten)))
        assert isinstance(stored, KillAck)
        self.kills_durable.add(msg.id)
        await self._publish_ack(stored)  # before the log line (0.3 ms of formatting)
        log.warning("kill %s applied (%s %s:%s, via %s): %s; %d cancels", msg.id,
                    stored.state.value, msg.scope.value, msg.key, via, msg.reason,
                    len(report.canceled), extra={"kill_id": msg.id})
        return stored

    def _ack(self, msg: KillCommand, now: int, stage: AckStage, *, duplicate: bool = False,
             canceled: list[str] | None = None, flatten_orders: int = 0) -> KillAck:
        return KillAck(node=self.k.node, ts_event=now, ts_init=now, kill_id=msg.id,
                       scope=msg.scope, scope_key=msg.key, reason=msg.reason,
                       state=self.k.risk.states.get(msg.scope, msg.key),
                       canceled=canceled or [], flatten_orders=flatten_orders,
                       duplicate=duplicate, stage=stage)

    async def _publish_ack(self, ack: KillAck) -> None:
        if self.link is not None:
            await self.link.publish(kill_ack_subject(self.k.subjects, self.k.node),
                                    msgspec.json.encode(ack))

    async def apply_file_kill(self, cmd: KillCommand) -> None:
        """A kill from the local kill file (works with NATS down)."""
        report = await self.k.router.kill(cmd)
        await self.audit("kill", NodeRequest(operator=cmd.operator, reason=cmd.reason,
                                                  scope=cmd.scope, key=cmd.key),
                    True, f"kill file: {len(report.canceled)} cancels", source="kill_file")
        log.warning("kill file applied: %s:%s: %s; %d cancels", cmd.scope.value, cmd.key,
                    cmd.reason, len(report.canceled))


    # --- ctl verbs -----------------------------------------------------------------------------


    async def audit(self, verb: str, req: NodeRequest, ok: bool, result: str,
                    source: str = "nats") -> None:
        now = self.k.clock.now_ns()
        await self.k.store.append(CommandAudit(
            node=self.k.node, ts_event=now, ts_init=now, verb=verb, operator=req.operator,
            reason=req.reason, scope=req.scope, scope_key=req.key, ok=ok, result=result[:500],
            source=source))


    async def handle(self, verb: str, data: bytes) -> NodeReply:
        """Run one ctl verb and audit it; never raises for bad input."""
        try:
            req = msgspec.json.decode(data or b"{}", type=NodeRequest)
        except DECODE_ERRORS as exc:
            req, reply = NodeRequest(), self._reply(verb, False, f"bad request: {exc}")
        else:
            fn = self._verbs.get(verb)
            if fn is None:
                reply = self._reply(verb, False, f"unknown verb {verb!r}; one of "
                               f"{', '.join(sorted(self._verbs))}")
            else:
                try:
                    reply = await fn(req)
                except ConfigError as exc:
                    reply = self._reply(verb, False, exc.message)
        await self.audit(verb, req, reply.ok, reply.message)
        return reply


    def _reply(self, verb: str, ok: bool, message: str,
               data: dict[str, Any] | None = None) -> NodeReply:
        return NodeReply(ok=ok, node=self.k.node, verb=verb, message=message, data=data or {})


    async def _status(self, req: NodeRequest) -> NodeReply:
        wm = await self.k.store.watermark(Outbox.WATERMARK)
        mono = self.k.loop_time()
        data = {
            "states": [{"scope": s.value, "key": k, "state": st.value}
                       for (s, k), st in self.k.risk.states.snapshot().items()],
            "global": self.k.risk.states.get(Scope.GLOBAL).value,
            "bots": status_of(self.bots.slots),
            "refused": self.bots.refused,
            "accounts": {**{a: "ok" for a in self.k.brokers}, **self.k.failed_accounts},
            "last_seq": self.k.store.last_seq,
            "watermark": wm,
            "nats": self.link is not None and self.link.connected,
            "leader_silence_s": round(self.failsafe.silence_s(mono), 3),
            "kill_active": self.kill_active,
            "open_orders": sum(1 for _ in self.k.proj.orders.open_orders()),
            "orders": msgspec.structs.asdict(self.k.proj.orders.stats()),  # held in memory
            "sessions": self.sessions(),
            "workers": self.bots.worker_report(),  # strategy worker processes
        }
        return self._reply("status", True, f"{self.k.node}: GLOBAL {data['global']}", data)


    async def _halt(self, req: NodeRequest) -> NodeReply:
        return await self._kill_verb("halt", req, flatten=False)


    async def _flatten(self, req: NodeRequest) -> NodeReply:
        return await self._kill_verb("flatten", req, flatten=True)


    async def _kill_verb(self, verb: str, req: NodeRequest, *, flatten: bool
                         ) -> NodeReply:
        _check_scope(req)
        _check_who(req, verb)
        report = await self.k.router.kill(KillCommand(
            scope=req.scope, key=req.key, reason=req.reason or f"operator {verb}",
            flatten=flatten, operator=req.operator, source="ctl"))
        state = self.k.risk.states.get(req.scope, req.key)
        return self._reply(verb, True,
                      f"{req.scope.value}:{req.key} {state.value}; {len(report.canceled)} cancels"
                      + (f", {len(report.flatten)} flatten orders" if flatten else ""),
                      {"canceled": report.canceled, "state": state.value,
                       "flatten_orders": len(report.flatten)})


    async def _held_by(self, req: NodeRequest) -> str:
        """Why the fleet's kill set forbids resuming ``req``'s scope ("" when it does not)."""
        link = self.link
        if link is None or link.nc is None:
            return ""
        try:
            kills = await asyncio.wait_for(read_kills(link.nc), 2.0)
        except Exception as exc:  # NATS away mid-request: do not lift a kill we cannot see
            return f"the kill set cannot be read now ({type(exc).__name__}); try again"
        held = kills.holding(req.scope, req.key)
        return "; ".join(f"kill {k.id} ({k.reason}, {k.operator or k.source}) is still active: "
                         f"release it first (qtd resume --kill-id {k.id})" for k in held)


    async def _resume(self, req: NodeRequest) -> NodeReply:
        _check_scope(req)
        if why := refuses_resume(self.link.behind if self.link else None, req.scope):
            return self._reply("resume", False, why)
        held = await self._held_by(req)
        if held:
            state = self.k.risk.states.get(req.scope, req.key)
            return self._reply("resume", False,
                          f"{req.scope.value}:{req.key} stays {state.value}: {held}",
                          {"state": state.value, "restarted": False})
        change = await self.k.router.resume(req.scope, req.key, operator=req.operator,
                                           reason=req.reason)
        restarted = False
        slot = self.bots.slots.get(req.key) if req.scope is Scope.STRATEGY else None
        if slot is not None and slot.state is BotState.HALTED:
            task = self.bots.bot_task(slot.name)
            if task is None or task.done():
                slot.restarts.clear()
                self.bots.spawn_bot(slot)
                restarted = True
        state = self.k.risk.states.get(req.scope, req.key)
        msg = (f"{req.scope.value}:{req.key} {state.value}" + ("" if change else " (unchanged)")
               + ("; bot restarted" if restarted else ""))
        return self._reply("resume", True, msg, {"state": state.value, "restarted": restarted})


    async def reload_file(self, path: Path) -> str:
        """Re-admit one bot config and apply it to the running bot (hot reload).

        Returns ``"swapped"`` (new params from the next bar boundary), ``"unchanged"``,
        ``"needs_restart"`` (a new strategy class or bot) or ``"refused"`` (admission failed:
        the old params keep running; ``ParamsChanged(accepted=False)`` is stored with the
        reasons and a warning logged — the alert).
        """
        adm = await admit_bot(path, store=self.k.store, node=self.k.node, clock=self.k.clock,
                              smoke=self.k.cfg.admit_smoke)
        slot = self.bots.slots.get(adm.bot)
        if not adm.ok:
            reasons = "; ".join(str(p) for p in adm.problems)[:2000]
            log.warning("bot config %s: change refused, old params keep running: %s", path,
                        reasons, extra={"bot": adm.bot})
            if slot is not None:
                now = self.k.clock.now_ns()
                await self.k.store.append(ParamsChanged(
                    node=self.k.node, bot=adm.bot, ts_event=now, ts_init=now,
                    old_hash=slot.content_hash, new_hash=adm.content_hash, accepted=False,
                    reason=reasons))
            return "refused"
        ref = adm.ref()
        if slot is None or not ref.same_code(slot.ref):
            return "needs_restart"
        if adm.content_hash == slot.content_hash:
            return "unchanged"
        slot.ref = ref
        if slot.runner is not None:
            slot.runner.swap_params(ref.params, ref.content_hash)
        return "swapped"


    async def _reload(self, req: NodeRequest) -> NodeReply:
        outcome: dict[str, list[str]] = {"swapped": [], "needs_restart": [], "refused": []}
        for path in bot_files(self.k.cfg):
            result = await self.reload_file(path)
            if result in outcome:
                outcome[result].append(str(path) if result == "refused" else path.stem)
        msg = "; ".join(f"{k.replace('_', ' ')}: {', '.join(v) or '-'}" for k, v in outcome.items())
        return self._reply("reload", not outcome["refused"], msg, dict(outcome))


def _check_who(req: NodeRequest, verb: str) -> None:
    for field, value in (("operator", req.operator), ("reason", req.reason)):
        if not value.strip():
            raise ConfigError(f"{verb} needs a non-empty {field}", source="<request>",
                              field=field, value=value, rule="must not be empty")


def _check_scope(req: NodeRequest) -> None:
    if req.scope is not Scope.GLOBAL and not req.key:
        raise ConfigError(f"scope {req.scope.value} needs a key", source="<request>",
                          field="key", value="", rule="required unless scope is GLOBAL")
