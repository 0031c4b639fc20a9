"""The agent's periodic tasks and NATS subscriptions.

* ``heartbeat`` — :class:`~qtd.events.Heartbeat` JSON (with this qtd's version) on
  ``<prefix>.hb.<node>`` every ``heartbeat_s``;
* ``pnl`` — one :class:`~qtd.events.PnLSnapshot` JSON per bot on
  ``<prefix>.pnl.<node>.<bot>`` every ``pnl_s``, with the bot's stage, state and risk
  limits in use (core NATS: not stored);
* ``failsafe`` — the leader-heartbeat policy (:class:`~qtd.agent.telemetry.FailSafe`); only
  what :func:`leader_heartbeat` accepts on ``<prefix>.hb.leader`` counts as the leader alive;
* ``kill-kv`` — reads the kill set (key ``kill`` of ``qtd_control``) every second and
  applies every kill in it not applied yet. A poll rather than a KV watcher: an ephemeral
  watch consumer does not survive a nats-server restart, a ``get`` does; the core
  ``<prefix>.ctl.kill`` message is the fast path;
* ``kill-file`` — :class:`~qtd.risk.kill_file.KillFileWatcher` on the local kill file;
* ``watchdog`` — ``WATCHDOG=1`` to systemd at half ``WatchdogSec`` while the loop runs;
* ``store-upkeep`` — the store's work the order path's commits leave out: adds the bot,
  symbol and client_order_id of the events stored since to the store's lookup table
  (:meth:`~qtd.store.EventStore.index_keys`), in a transaction of its own, then copies the
  WAL into the main file (:meth:`~qtd.store.EventStore.checkpoint`, which SQLite would
  otherwise run inside a commit every 1,000 pages). It waits for a quarter second without a
  write (a burst of orders is over), or does it anyway after ``INDEX_EVERY_S``, and adds at
  most ``INDEX_ROUND`` events a round (a round holds the store's write lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from qtd import __version__, sdnotify
from qtd.agent.telemetry import pnl_snapshots
from qtd.agent.wiring import bot_files
from qtd.errors import StoreError
from qtd.events import DECODE_ERRORS, Heartbeat, Scope, to_json
from qtd.risk.kill_file import KillFileWatcher

if TYPE_CHECKING:
    from qtd.agent.control_verbs import Control
    from qtd.agent.kernel import Kernel
    from qtd.agent.link import BusLink
    from qtd.agent.ports import BotHost, Spawner
    from qtd.agent.telemetry import FailSafe

log = logging.getLogger("qtd.agent")

KV_POLL_S = 1.0
INDEX_QUIET_S = 0.25  # the store took no write for this long: add its new keys
INDEX_EVERY_S = 5.0  # ... or after this long, quiet or not
# events at most per transaction: it holds the store's write lock, so an order's commit
# may wait for one round (~3-5 ms per 400 events of 100 bots on a large store); a long
# tail takes several rounds, one per quiet tick
INDEX_ROUND = 1_000
_HEARTBEAT = msgspec.json.Decoder(Heartbeat)


def leader_heartbeat(data: bytes, headers: Mapping[str, str] | None, reply: str
                     ) -> Heartbeat | None:
    """The leader's :class:`~qtd.events.Heartbeat` in a message on ``<prefix>.hb.leader``,
    or None when the message is not one (it must then not count as the leader alive).

    Only the ``leader`` login may publish on that subject (qtd/bus/logins.py), and the
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


class Telemetry:
    """Heartbeat, PnL ticks, the leader fail-safe, the kill-set poll, hot reload of bot
    configs and the systemd watchdog (module docstring).

    Args:
        kernel: the agent's kernel (engine, projections, store, clock, config, subjects).
        bots: the bots reported on.
        link: the bus link (None: no NATS configured; only the NATS-free loops run).
        failsafe: the leader-heartbeat policy.
        control: kill state and the kill-set poll (:class:`~qtd.agent.control_verbs.Control`).
        reload: re-admits one bot config (hot reload).
    """

    def __init__(self, kernel: Kernel, bots: BotHost, link: BusLink | None,
                 failsafe: FailSafe, control: Control,
                 reload: Callable[[Path], Awaitable[str]]) -> None:
        self.k, self.bots, self.link, self.failsafe = kernel, bots, link, failsafe
        self.control, self.reload = control, reload

    async def subscribe(self, nc: Client) -> None:
        """Count the leader's heartbeats on ``<prefix>.hb.leader`` (fail-safe)."""
        async def on_leader(m: Msg) -> None:
            if leader_heartbeat(m.data, m.headers, m.reply) is None:
                log.debug("ignored a message on %s that is not the leader's heartbeat",
                          m.subject)
                return
            self.failsafe.on_leader_heartbeat(self.k.loop_time())

        await nc.subscribe(self.k.subjects.hb_leader, cb=on_leader)

    def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        """The periodic tasks to start once bots run."""
        tasks: dict[str, Coroutine[Any, Any, None]] = {"failsafe": self._failsafe(),
                                                       "params-watch": self._params_watch(),
                                                       "store-upkeep": self._store_upkeep()}
        if self.link is not None:
            tasks.update(heartbeat=self._heartbeat(self.link), pnl=self._pnl(self.link),
                         **{"kill-kv": self._kill_kv()})
        interval = sdnotify.watchdog_interval_s()
        if interval is not None:
            tasks["watchdog"] = _watchdog(interval)
        return tasks

    async def _heartbeat(self, link: BusLink) -> None:
        k = self.k
        subject = k.subjects.hb(k.node)
        while True:
            now = k.clock.now_ns()
            running = sum(1 for s in self.bots.slots.values() if s.state.value == "RUNNING")
            hb = Heartbeat(node=k.node, ts_event=now, ts_init=now, role="agent",
                           state=k.risk.states.get(Scope.GLOBAL), bots_running=running,
                           last_seq=k.store.last_seq, version=__version__)
            await link.publish(subject, to_json(hb))
            await _every(k.cfg.heartbeat_s)

    async def _pnl(self, link: BusLink) -> None:
        k = self.k
        while True:
            await _every(k.cfg.pnl_s)
            slots = self.bots.slots
            bots = {n: s.spec.account for n, s in slots.items()}
            for snap in pnl_snapshots(k.proj, k.risk, k.node, k.clock.now_ns(), bots, slots):
                await link.publish(k.subjects.pnl(k.node, snap.bot), to_json(snap))

    async def _failsafe(self) -> None:
        k, fs = self.k, self.failsafe
        step = min(0.25, k.cfg.leader_timeout_s / 4)
        was_absent = False
        while True:
            change = fs.evaluate(k.loop_time(), k.clock.now_ns(), self.control.kill_active)
            if fs.absent != was_absent:
                log.warning("leader %s (policy %s)", "absent" if fs.absent else "back",
                            k.cfg.failsafe)
                was_absent = fs.absent
            if change is not None:
                await k.store.append(change)
            await _every(step)

    async def _store_upkeep(self) -> None:
        store = self.k.store
        seen, indexed, waited = store.last_seq, -1, 0.0  # -1: a tail left by a crash too
        while True:
            await _every(INDEX_QUIET_S)
            waited += INDEX_QUIET_S
            quiet, seen = store.last_seq == seen, store.last_seq
            if seen == indexed or store.faulted or not (quiet or waited >= INDEX_EVERY_S):
                continue  # nothing new; a write fault (the agent is halted); or busy
            waited = 0.0
            try:
                if await store.index_keys(max_events=INDEX_ROUND) < INDEX_ROUND:
                    indexed = seen  # up to date (as of this tick at least)
            except StoreError as exc:  # lookups still read the events above the watermark
                log.warning("store lookup index not updated: %s", exc)
            try:
                await store.checkpoint()
            except StoreError as exc:  # the WAL keeps the pages; SQLite's backstop remains
                log.warning("store WAL not checkpointed: %s", exc)

    async def _kill_kv(self) -> None:
        while True:
            await _every(KV_POLL_S)
            await self.control.poll_kv_once()

    def _mtimes(self) -> dict[Path, int]:
        out = {}
        for path in bot_files(self.k.cfg):
            with contextlib.suppress(OSError):
                out[path] = path.stat().st_mtime_ns
        return out

    async def _params_watch(self) -> None:
        """Hot reload: re-admit a bot config whose file changed (polled every
        ``params_poll_s``); see :meth:`qtd.agent.control_verbs.Control.reload_file`."""
        seen = self._mtimes()
        while True:
            await _every(self.k.cfg.params_poll_s)
            now = self._mtimes()
            for path, mtime in now.items():
                if seen.get(path) not in (None, mtime):
                    result = await self.reload(path)
                    log.info("bot config %s changed: %s", path, result)
            seen = now


class KillFileWatch:
    """Task ``kill-file``: the local kill file (works with NATS down).

    Args:
        kernel: the agent's kernel (``kill_file``, ``kill_poll_s``).
        control: applies the kill.
        tasks: the agent's task group.
    """

    def __init__(self, kernel: Kernel, control: Control, tasks: Spawner) -> None:
        self.watcher = KillFileWatcher(control.apply_file_kill, kernel.cfg.kill_file,
                                       poll_s=kernel.cfg.kill_poll_s)
        self.control, self.tasks = control, tasks

    async def start(self) -> None:
        """Check the kill file now (before bots start), then keep polling it."""
        cmd = self.watcher.poll()
        if cmd is not None:
            await self.control.apply_file_kill(cmd)
        self.tasks.spawn("kill-file", self.watcher.run())


async def _every(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def _watchdog(interval: float) -> None:
    while True:
        sdnotify.watchdog()
        await _every(interval)
