"""The agent's periodic tasks and NATS subscriptions.

* ``heartbeat`` — :class:`~qtd.events.Heartbeat` JSON on ``<prefix>.hb.<node>`` every
  ``heartbeat_s``;
* ``pnl`` — one :class:`~qtd.events.PnLSnapshot` JSON per bot on
  ``<prefix>.pnl.<node>.<bot>`` every ``pnl_s``, with the bot's stage, state and risk
  limits in use (core NATS: not stored);
* ``failsafe`` — the leader-heartbeat policy (:class:`~qtd.agent.telemetry.FailSafe`); only
  what :func:`leader_heartbeat` accepts on ``<prefix>.hb.leader`` counts as the leader alive;
* ``kill-kv`` — reads the kill set (key ``kill`` of ``qtd_control``) every second and
  applies every kill in it not applied yet. A poll rather than a KV watcher: an ephemeral
  watch consumer does not survive a nats-server restart, a ``get`` does; the core
  ``<prefix>.ctl.kill`` message is the fast path;
* ``kill-file`` — :class:`~qtd.risk.kill.KillFileWatcher` on the local kill file;
* ``watchdog`` — ``WATCHDOG=1`` to systemd at half ``WatchdogSec`` while the loop runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import nats.errors
import nats.js.errors

from qtd import sdnotify
from qtd.agent import commands
from qtd.agent.control import read_kills
from qtd.agent.telemetry import pnl_snapshots
from qtd.agent.wiring import bot_files
from qtd.bus.rejects import reject_server_reply
from qtd.control import decode_kill
from qtd.events import DECODE_ERRORS, Heartbeat, Scope, to_json
from qtd.risk.kill import KillFileWatcher

if TYPE_CHECKING:
    from qtd.agent.daemon import Agent
    from qtd.agent.link import BusLink

log = logging.getLogger("qtd.agent")

KV_POLL_S = 1.0
_NATS_ERRORS = (nats.errors.Error, nats.js.errors.Error, OSError, asyncio.TimeoutError)
_HEARTBEAT = msgspec.json.Decoder(Heartbeat)


def leader_heartbeat(data: bytes, headers: Mapping[str, str] | None, reply: str
                     ) -> Heartbeat | None:
    """The leader's :class:`~qtd.events.Heartbeat` in a message on ``<prefix>.hb.leader``,
    or None when the message is not one (it must then not count as the leader alive).

    Only the ``leader`` user may publish on that subject (etc/nats-server.conf), and the
    leader sends a plain core publish: no headers, no reply subject, a ``Heartbeat`` with
    ``role="leader"``. Anything else that reaches the subject did not come from the leader:
    a NATS status message (``100 Idle Heartbeat``, flow control: headers, and a reply for
    flow control), a JetStream delivery, direct get or republish (headers or a ``$JS.ACK``
    reply), and a JetStream API or service response that another user directed here as its
    request's reply subject (nats-server does not check reply subjects against
    permissions; such bodies are not a ``Heartbeat``).

    Args:
        data: the message body.
        headers: its headers (nats-py ``Msg.headers``), None when it has none.
        reply: its reply subject, ``""`` when none.
    """
    if headers or reply:
        return None
    try:
        hb = _HEARTBEAT.decode(data)
    except DECODE_ERRORS:
        return None
    return hb if hb.role == "leader" else None


async def on_bus_ready(agent: Agent, link: BusLink) -> None:
    """Subscribe to commands, kills and the leader's heartbeat; apply a kill set in KV."""
    nc = link.nc
    assert nc is not None
    s = agent.subjects

    async def on_ctl(m: Any) -> None:
        if reject_server_reply("command", m.subject, m.data, m.headers, log):
            return  # e.g. a stream republish or an API answer aimed here
        verb = m.subject.rsplit(".", 1)[-1]
        reply = await commands.handle(agent, verb, m.data)
        if m.reply:
            await m.respond(msgspec.json.encode(reply))

    async def on_kill(m: Any) -> None:
        if reject_server_reply("kill", m.subject, m.data, m.headers, log):
            return  # another client made the server answer here: not a kill
        await commands.apply_kill(agent, decode_kill(m.data), via="core")

    async def on_leader(m: Any) -> None:
        if leader_heartbeat(m.data, m.headers, m.reply) is None:
            log.debug("ignored a message on %s that is not the leader's heartbeat", m.subject)
            return
        agent.failsafe.on_leader_heartbeat(agent.loop_time())

    await nc.subscribe(s.ctl_node(agent.node), cb=on_ctl)
    await nc.subscribe(s.ctl_kill, cb=on_kill)
    await nc.subscribe(s.hb_leader, cb=on_leader)
    await _poll_kv_once(agent)


async def _poll_kv_once(agent: Agent) -> None:
    link = agent.link
    if link is None or link.nc is None or not link.connected:
        return
    try:
        kills = await asyncio.wait_for(read_kills(link.nc), 2.0)
    except _NATS_ERRORS as exc:
        log.debug("kill key read failed: %r", exc)
        return
    agent.kv_kill = bool(kills.kills)
    for msg in kills.kills:
        await commands.apply_kill(agent, msg, via="kv")


async def start_kill_file(agent: Agent) -> None:
    """Check the kill file now (before bots start), then keep polling it."""
    watcher = KillFileWatcher(lambda cmd: commands.apply_file_kill(agent, cmd),
                              agent.cfg.kill_file, poll_s=agent.cfg.kill_poll_s)
    cmd = watcher.poll()
    if cmd is not None:
        await commands.apply_file_kill(agent, cmd)
    agent.spawn("kill-file", watcher.run())


def telemetry_tasks(agent: Agent) -> dict[str, Coroutine[Any, Any, None]]:
    """The periodic tasks to start once bots run."""
    tasks: dict[str, Coroutine[Any, Any, None]] = {"failsafe": _failsafe(agent),
                                                   "params-watch": _params_watch(agent)}
    if agent.link is not None:
        tasks.update(heartbeat=_heartbeat(agent), pnl=_pnl(agent), **{"kill-kv": _kill_kv(agent)})
    interval = sdnotify.watchdog_interval_s()
    if interval is not None:
        tasks["watchdog"] = _watchdog(interval)
    return tasks


async def _every(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def _heartbeat(agent: Agent) -> None:
    link = agent.link
    assert link is not None
    subject = agent.subjects.hb(agent.node)
    while True:
        now = agent.clock.now_ns()
        running = sum(1 for s in agent.supervisor.slots.values() if s.state.value == "RUNNING")
        hb = Heartbeat(node=agent.node, ts_event=now, ts_init=now, role="agent",
                       state=agent.risk.states.get(Scope.GLOBAL), bots_running=running,
                       last_seq=agent.store.last_seq)
        await link.publish(subject, to_json(hb))
        await _every(agent.cfg.heartbeat_s)


async def _pnl(agent: Agent) -> None:
    link = agent.link
    assert link is not None
    while True:
        await _every(agent.cfg.pnl_s)
        bots = {n: s.spec.account for n, s in agent.supervisor.slots.items()}
        for snap in pnl_snapshots(agent.proj, agent.risk, agent.node, agent.clock.now_ns(),
                                  bots, agent.supervisor.slots):
            await link.publish(agent.subjects.pnl(agent.node, snap.bot), to_json(snap))


async def _failsafe(agent: Agent) -> None:
    step = min(0.25, agent.cfg.leader_timeout_s / 4)
    was_absent = False
    while True:
        fs = agent.failsafe
        change = fs.evaluate(agent.loop_time(), agent.clock.now_ns(), agent.kill_active)
        if fs.absent != was_absent:
            log.warning("leader %s (policy %s)", "absent" if fs.absent else "back",
                        agent.cfg.failsafe)
            was_absent = fs.absent
        if change is not None:
            await agent.store.append(change)
        await _every(step)


async def _kill_kv(agent: Agent) -> None:
    while True:
        await _every(KV_POLL_S)
        await _poll_kv_once(agent)


def _mtimes(agent: Agent) -> dict[Path, int]:
    out = {}
    for path in bot_files(agent.cfg):
        with contextlib.suppress(OSError):
            out[path] = path.stat().st_mtime_ns
    return out


async def _params_watch(agent: Agent) -> None:
    """Hot reload: re-admit a bot config whose file changed (polled every
    ``params_poll_s``); see :func:`qtd.agent.commands.reload_file`."""
    seen = _mtimes(agent)
    while True:
        await _every(agent.cfg.params_poll_s)
        now = _mtimes(agent)
        for path, mtime in now.items():
            if seen.get(path) not in (None, mtime):
                result = await commands.reload_file(agent, path)
                log.info("bot config %s changed: %s", path, result)
        seen = now


async def _watchdog(interval: float) -> None:
    while True:
        sdnotify.watchdog()
        await _every(interval)
