"""Strategy worker processes, as the agent sees them (see :mod:`qtd.workers`).

:class:`WorkerPool` forks workers from one template process (:mod:`qtd.workers.template`,
preloaded with :mod:`qtd.workers.host` and the configured modules),
groups bots into workers (one per bot, or one per account: :class:`WorkerLimits.group`), and
hands each runner a :class:`RemoteBot`. Every request has a deadline: a reply later than the
hook budget gets the worker SIGTERM, then SIGKILL after ``kill_grace_s``, and the call raises
:class:`HookOverrun`; a worker that dies (memory limit, crash, killed) makes every call of
its bots raise :class:`WorkerGone` with the reason. The agent's event loop never waits on
strategy code for longer than one budget, and never runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from qtd.events import Fill
from qtd.feeds.bars import Bar, Trade
from qtd.strategy import StrategyContext
from qtd.workers.forker import Template
from qtd.workers.link import HookOverrun, Worker, WorkerGone, memory_of
from qtd.workers.protocol import (
    Call,
    CtxState,
    Drop,
    Failure,
    Load,
    PositionState,
    Spawn,
    StrategyRef,
    Swap,
    WorkerLimits,
)

log = logging.getLogger("qtd.agent.workers")
DROP_TIMEOUT_S: Final = 1.0


class LoadFailed(Exception):
    """The worker could not import the admitted strategy (:attr:`failure` says why)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.error_type}: {failure.message}")
        self.failure = failure


class WorkerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One worker for status and benchmarks.

    Attributes:
        key: its group key (bot name, or account name).
        pid: its process id.
        bots: the bots it hosts.
        unique_bytes: memory only this process uses (USS: private clean + private dirty
            pages of ``/proc/PID/smaps_rollup``), bytes; 0 when unreadable.
        rss_bytes: resident set size, bytes (shared template pages included).
        sandbox: the limits it achieved (nice, memory cap, network isolation).
    """

    key: str
    pid: int
    bots: tuple[str, ...]
    unique_bytes: int
    rss_bytes: int
    sandbox: str = ""


def _position_state(ctx: StrategyContext) -> tuple[PositionState, ...]:
    return tuple(PositionState(p.symbol, p.currency, p.qty, p.cost, p.realized, p.fees,
                               p.other_fees, p.last_price, p.fills)
                 for p in ctx.positions.values())


class RemoteBot:
    """One bot's strategy in a worker, as its runner calls it.

    Args:
        worker: the worker hosting it.
        bot: the bot (runner) name.
        handle: its attachment id in the worker (``bot#n``: a restarted bot's new runner
            never shares state with the old one, even in the same worker).
        budget_s: wall-time budget of one hook call, seconds.
        has_on_fill: whether the strategy overrides ``on_fill``.
    """

    def __init__(self, worker: Worker, bot: str, handle: str, budget_s: float,
                 has_on_fill: bool) -> None:
        self.worker, self.bot, self.handle, self.budget_s = worker, bot, handle, budget_s
        self.has_on_fill = has_on_fill
        self._sent: tuple[Any, ...] | None = None
        self._marks_sent = False

    async def call(self, hook: str, ctx: StrategyContext, now_ns: int, *,
                   bar: Bar | None = None, trade: Trade | None = None,
                   fill: Fill | None = None) -> Failure | None:
        """Run ``hook`` in the worker with the context state, then apply what the hook did
        to ``ctx`` (queued requests, in-flight quantities, targets).

        Returns:
            the hook's failure, or None.

        Raises:
            HookOverrun: the hook overran its budget (the worker is being killed).
            WorkerGone: the worker died.
        """
        positions = _position_state(ctx)
        key = (positions, tuple(ctx.inflight.items()), ctx.share, ctx.lot)
        state = None
        if key != self._sent or not self._marks_sent:
            state = CtxState(positions, dict(ctx.inflight), ctx.share, ctx.lot, dict(ctx.marks))
            self._marks_sent = True
        reply = await self.worker.request(
            Call(self.handle, hook, now_ns, state, bar, trade, fill), self.budget_s,
            f"{self.bot}: {hook}")
        for out in reply.outbox:
            ctx.outbox.append(out.order if out.order is not None else out.cancel)  # type: ignore[arg-type]
        if reply.inflight != ctx.inflight:
            ctx.inflight.clear()
            ctx.inflight.update(reply.inflight)
        if reply.targets:
            ctx.targets.update(reply.targets)
        self._sent = (positions, tuple(ctx.inflight.items()), ctx.share, ctx.lot)
        return reply.failure

    async def swap(self, params: dict[str, Any]) -> Failure | None:
        """New params for the strategy (hot reload); its failure to convert them, or None."""
        reply = await self.worker.request(Swap(self.handle, params), self.budget_s,
                                          f"{self.bot}: params swap")
        return reply.failure


class WorkerPool:
    """The agent's strategy workers (module docstring).

    Args:
        limits: grouping, memory cap, kill grace, import budget, preloaded modules.
        protected: paths no strategy may open (the agent's store, kill file, credentials).
    """

    def __init__(self, limits: WorkerLimits | None = None, protected: Sequence[str] = ()
                 ) -> None:
        self.limits = limits or WorkerLimits()
        self._how = Spawn(memory_mb=self.limits.memory_mb, nice=self.limits.nice,
                          protected=tuple(protected))
        self._workers: dict[str, Worker] = {}
        self._spawning: dict[str, asyncio.Lock] = {}
        self._attached = 0
        self.template = Template(self.limits.preload)

    def key_for(self, bot: str, account: str) -> str:
        return bot if self.limits.group == "bot" else f"account:{account}"

    async def attach(self, *, bot: str, account: str, venue: str, symbols: Sequence[str],
                     currency: str, ref: StrategyRef, budget_s: float) -> RemoteBot:
        """Load ``ref`` for ``bot`` in its group's worker (started if needed).

        Raises:
            LoadFailed: the worker could not import the admitted strategy.
            HookOverrun: the import overran ``import_budget_s``.
            WorkerGone: the worker died while importing.
            OSError: the worker process could not be started.
        """
        key = self.key_for(bot, account)
        async with self._spawning.setdefault(key, asyncio.Lock()):
            worker = self._workers.get(key)
            if worker is None or worker.dead:
                worker = self._workers[key] = await self._spawn(key)
        self._attached += 1
        handle = f"{bot}#{self._attached}"
        reply = await worker.request(
            Load(handle, bot, account, venue, tuple(symbols), currency, ref),
            self.limits.import_budget_s, f"{bot}: import of {ref.file}")
        if reply.failure is not None:
            raise LoadFailed(reply.failure)
        worker.bots[handle] = bot
        if not worker.sandbox:
            worker.sandbox = reply.sandbox
            level = logging.WARNING if "NO memory cap" in reply.sandbox else logging.INFO
            log.log(level, "strategy worker %s (pid %d): %s", key, worker.pid, reply.sandbox,
                    extra={"worker": key, "pid": worker.pid})
        return RemoteBot(worker, bot, handle, budget_s, reply.has_on_fill)

    async def detach(self, remote: RemoteBot) -> None:
        """The bot's runner ended: drop it from its worker; stop a worker left empty."""
        worker = remote.worker
        worker.bots.pop(remote.handle, None)
        if not worker.dead and worker.bots:
            with contextlib.suppress(HookOverrun, WorkerGone):
                await worker.request(Drop(remote.handle), DROP_TIMEOUT_S,
                                     f"{remote.bot}: drop")
            return
        await worker.stop()
        if self._workers.get(worker.key) is worker:
            del self._workers[worker.key]

    async def _spawn(self, key: str) -> Worker:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = await self.template.spawn(theirs, self._how)
        except BaseException:
            ours.close()
            raise
        worker = await Worker.connect(key, pid, self.template, ours, self.limits)
        log.info("strategy worker for %s started: pid %d", key, pid,
                 extra={"worker": key, "pid": pid})
        return worker

    def workers(self) -> list[WorkerInfo]:
        """The live workers, with their memory (reads ``/proc``)."""
        out = []
        for w in self._workers.values():
            if not w.dead:
                uss, rss = memory_of(w.pid)
                out.append(WorkerInfo(key=w.key, pid=w.pid, bots=tuple(sorted(w.bots.values())),
                                      unique_bytes=uss, rss_bytes=rss, sandbox=w.sandbox))
        return out

    async def close(self) -> None:
        """Stop every worker (agent shutdown)."""
        workers, self._workers = list(self._workers.values()), {}
        await asyncio.gather(*(w.stop() for w in workers))
        await self.template.close()


__all__ = ["LoadFailed", "RemoteBot", "WorkerInfo", "WorkerPool"]
