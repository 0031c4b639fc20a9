"""The agent's side of control: kill switches (NATS, KV, kill file) and ctl verbs.

Every command is audited as a :class:`~qtd.events.CommandAudit` event in the store; every
applied kill is stored as a :class:`~qtd.events.KillAck` and the ack is also published on
``<prefix>.ack.kill.<node>`` (see :mod:`qtd.agent.control`).

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from qtd.admit import admit_bot
from qtd.agent.control import kill_ack_subject, read_kills
from qtd.agent.storebehind import refuses_resume
from qtd.agent.wiring import bot_files, status_of
from qtd.control import KillCommand, NodeReply, NodeRequest
from qtd.errors import ConfigError
from qtd.events import DECODE_ERRORS, CommandAudit, KillAck, ParamsChanged, Scope
from qtd.outbox import Outbox
from qtd.runner import BotState

if TYPE_CHECKING:
    from qtd.agent.daemon import Agent

log = logging.getLogger("qtd.agent.control")


# --- kills ---------------------------------------------------------------------------------


async def apply_kill(agent: Agent, msg: KillCommand, *, via: str) -> KillAck | None:
    """Apply a kill once per id; publish the ack (a repeat over core NATS is acknowledged
    with ``duplicate=True``; a repeat seen in the KV bucket is ignored)."""
    now = agent.clock.now_ns()
    if msg.id in agent.kills_applied:
        if via == "kv":
            return None
        ack = KillAck(node=agent.node, ts_event=now, ts_init=now, kill_id=msg.id,
                      scope=msg.scope, scope_key=msg.key, reason=msg.reason,
                      state=agent.risk.states.get(msg.scope, msg.key), duplicate=True)
    else:
        agent.kills_applied.add(msg.id)
        agent.kv_kill = True
        report = await agent.router.kill(msg)
        stored = await agent.store.append(KillAck(
            node=agent.node, ts_event=now, ts_init=now, kill_id=msg.id, scope=msg.scope,
            scope_key=msg.key, reason=msg.reason,
            state=agent.risk.states.get(msg.scope, msg.key), canceled=report.canceled,
            flatten_orders=len(report.flatten)))
        assert isinstance(stored, KillAck)
        ack = stored
        log.warning("kill %s applied (%s %s:%s, via %s): %s; %d cancels", msg.id,
                    ack.state.value, msg.scope.value, msg.key, via, msg.reason,
                    len(report.canceled), extra={"kill_id": msg.id})
    if agent.link is not None:
        await agent.link.publish(kill_ack_subject(agent.subjects, agent.node),
                                 msgspec.json.encode(ack))
    return ack


async def apply_file_kill(agent: Agent, cmd: KillCommand) -> None:
    """A kill from the local kill file (works with NATS down)."""
    report = await agent.router.kill(cmd)
    await audit(agent, "kill", NodeRequest(operator=cmd.operator, reason=cmd.reason,
                                           scope=cmd.scope, key=cmd.key),
                True, f"kill file: {len(report.canceled)} cancels", source="kill_file")
    log.warning("kill file applied: %s:%s: %s; %d cancels", cmd.scope.value, cmd.key,
                cmd.reason, len(report.canceled))


# --- ctl verbs -----------------------------------------------------------------------------


async def audit(agent: Agent, verb: str, req: NodeRequest, ok: bool, result: str,
                source: str = "nats") -> None:
    now = agent.clock.now_ns()
    await agent.store.append(CommandAudit(
        node=agent.node, ts_event=now, ts_init=now, verb=verb, operator=req.operator,
        reason=req.reason, scope=req.scope, scope_key=req.key, ok=ok, result=result[:500],
        source=source))


async def handle(agent: Agent, verb: str, data: bytes) -> NodeReply:
    """Run one ctl verb and audit it; never raises for bad input."""
    try:
        req = msgspec.json.decode(data or b"{}", type=NodeRequest)
    except DECODE_ERRORS as exc:
        req, reply = NodeRequest(), _reply(agent, verb, False, f"bad request: {exc}")
    else:
        fn = _VERBS.get(verb)
        if fn is None:
            reply = _reply(agent, verb, False, f"unknown verb {verb!r}; one of "
                           f"{', '.join(sorted(_VERBS))}")
        else:
            try:
                reply = await fn(agent, req)
            except ConfigError as exc:
                reply = _reply(agent, verb, False, exc.message)
    await audit(agent, verb, req, reply.ok, reply.message)
    return reply


def _reply(agent: Agent, verb: str, ok: bool, message: str,
           data: dict[str, Any] | None = None) -> NodeReply:
    return NodeReply(ok=ok, node=agent.node, verb=verb, message=message, data=data or {})


async def _status(agent: Agent, req: NodeRequest) -> NodeReply:
    wm = await agent.store.watermark(Outbox.WATERMARK)
    mono = agent.loop_time()
    data = {
        "states": [{"scope": s.value, "key": k, "state": st.value}
                   for (s, k), st in agent.risk.states.snapshot().items()],
        "global": agent.risk.states.get(Scope.GLOBAL).value,
        "bots": status_of(agent.supervisor.slots),
        "refused": agent.refused,
        "accounts": {**{a: "ok" for a in agent.brokers}, **agent.failed_accounts},
        "last_seq": agent.store.last_seq,
        "watermark": wm,
        "nats": agent.link is not None and agent.link.connected,
        "leader_silence_s": round(agent.failsafe.silence_s(mono), 3),
        "kill_active": agent.kill_active,
        "open_orders": sum(1 for _ in agent.proj.orders.open_orders()),
        "orders": msgspec.structs.asdict(agent.proj.orders.stats()),  # held in memory
        "sessions": agent.schedule.status() if hasattr(agent, "schedule") else {},
    }
    return _reply(agent, "status", True, f"{agent.node}: GLOBAL {data['global']}", data)


async def _halt(agent: Agent, req: NodeRequest) -> NodeReply:
    return await _kill_verb(agent, "halt", req, flatten=False)


async def _flatten(agent: Agent, req: NodeRequest) -> NodeReply:
    return await _kill_verb(agent, "flatten", req, flatten=True)


async def _kill_verb(agent: Agent, verb: str, req: NodeRequest, *, flatten: bool
                     ) -> NodeReply:
    _check_scope(req)
    _check_who(req, verb)
    report = await agent.router.kill(KillCommand(
        scope=req.scope, key=req.key, reason=req.reason or f"operator {verb}",
        flatten=flatten, operator=req.operator, source="ctl"))
    state = agent.risk.states.get(req.scope, req.key)
    return _reply(agent, verb, True,
                  f"{req.scope.value}:{req.key} {state.value}; {len(report.canceled)} cancels"
                  + (f", {len(report.flatten)} flatten orders" if flatten else ""),
                  {"canceled": report.canceled, "state": state.value,
                   "flatten_orders": len(report.flatten)})


async def _held_by(agent: Agent, req: NodeRequest) -> str:
    """Why the fleet's kill set forbids resuming ``req``'s scope ("" when it does not)."""
    link = agent.link
    if link is None or link.nc is None:
        return ""
    try:
        kills = await asyncio.wait_for(read_kills(link.nc), 2.0)
    except Exception as exc:  # NATS away mid-request: do not lift a kill we cannot see
        return f"the kill set cannot be read now ({type(exc).__name__}); try again"
    held = kills.holding(req.scope, req.key)
    return "; ".join(f"kill {k.id} ({k.reason}, {k.operator or k.source}) is still active: "
                     f"release it first (qtd resume --kill-id {k.id})" for k in held)


async def _resume(agent: Agent, req: NodeRequest) -> NodeReply:
    _check_scope(req)
    if why := refuses_resume(agent, req.scope):
        return _reply(agent, "resume", False, why)
    held = await _held_by(agent, req)
    if held:
        state = agent.risk.states.get(req.scope, req.key)
        return _reply(agent, "resume", False,
                      f"{req.scope.value}:{req.key} stays {state.value}: {held}",
                      {"state": state.value, "restarted": False})
    change = await agent.router.resume(req.scope, req.key, operator=req.operator,
                                       reason=req.reason)
    restarted = False
    slot = agent.supervisor.slots.get(req.key) if req.scope is Scope.STRATEGY else None
    if slot is not None and slot.state is BotState.HALTED:
        task = agent.task(f"bot:{slot.name}")
        if task is None or task.done():
            slot.restarts.clear()
            agent.spawn_bot(slot)
            restarted = True
    state = agent.risk.states.get(req.scope, req.key)
    msg = (f"{req.scope.value}:{req.key} {state.value}" + ("" if change else " (unchanged)")
           + ("; bot restarted" if restarted else ""))
    return _reply(agent, "resume", True, msg, {"state": state.value, "restarted": restarted})


async def reload_file(agent: Agent, path: Path) -> str:
    """Re-admit one bot config and apply it to the running bot (hot reload).

    Returns ``"swapped"`` (new params from the next bar boundary), ``"unchanged"``,
    ``"needs_restart"`` (a new strategy class or bot) or ``"refused"`` (admission failed:
    the old params keep running; ``ParamsChanged(accepted=False)`` is stored with the
    reasons and a warning logged — the alert).
    """
    adm = await admit_bot(path, store=agent.store, node=agent.node, clock=agent.clock,
                          smoke=agent.cfg.admit_smoke, load=True)
    slot = agent.supervisor.slots.get(adm.bot)
    if not adm.ok:
        reasons = "; ".join(str(p) for p in adm.problems)[:2000]
        log.warning("bot config %s: change refused, old params keep running: %s", path,
                    reasons, extra={"bot": adm.bot})
        if slot is not None:
            now = agent.clock.now_ns()
            await agent.store.append(ParamsChanged(
                node=agent.node, bot=adm.bot, ts_event=now, ts_init=now,
                old_hash=slot.content_hash, new_hash=adm.content_hash, accepted=False,
                reason=reasons))
        return "refused"
    if slot is None or adm.strategy_cls is not slot.strategy_cls:
        return "needs_restart"
    if adm.content_hash == slot.content_hash:
        return "unchanged"
    slot.params, slot.content_hash = adm.params_obj, adm.content_hash
    if slot.runner is not None:
        slot.runner.swap_params(adm.params_obj, adm.content_hash)
    return "swapped"


async def _reload(agent: Agent, req: NodeRequest) -> NodeReply:
    outcome: dict[str, list[str]] = {"swapped": [], "needs_restart": [], "refused": []}
    for path in bot_files(agent.cfg):
        result = await reload_file(agent, path)
        if result in outcome:
            outcome[result].append(str(path) if result == "refused" else path.stem)
    msg = "; ".join(f"{k.replace('_', ' ')}: {', '.join(v) or '-'}" for k, v in outcome.items())
    return _reply(agent, "reload", not outcome["refused"], msg, dict(outcome))


def _check_who(req: NodeRequest, verb: str) -> None:
    for field, value in (("operator", req.operator), ("reason", req.reason)):
        if not value.strip():
            raise ConfigError(f"{verb} needs a non-empty {field}", source="<request>",
                              field=field, value=value, rule="must not be empty")


def _check_scope(req: NodeRequest) -> None:
    if req.scope is not Scope.GLOBAL and not req.key:
        raise ConfigError(f"scope {req.scope.value} needs a key", source="<request>",
                          field="key", value="", rule="required unless scope is GLOBAL")


_VERBS = {"status": _status, "halt": _halt, "resume": _resume, "flatten": _flatten,
          "reload": _reload}
