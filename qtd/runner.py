"""The bot runner: one strategy instance for one bot, quarantined and on a time budget.

A bot is driven one input at a time — the live agent through :meth:`BotRunner.run` (one
asyncio task per bot, fed by a market data subscription), a backtest by pushing items with
:meth:`BotRunner.start` / :meth:`BotRunner.handle` / :meth:`BotRunner.finish` (``run`` is
built from the same three). Every call into user code — construction, ``on_start``,
``on_bar``, ``on_trade``, ``on_fill``, ``on_stop``, params swaps — goes through one wrapper,
:meth:`BotRunner._invoke`, which:

* runs the hook **inline** on the calling (event loop) thread, watched by a
  :class:`HookGuard`: no thread hand-off, so a hook costs a function call (~0.1 µs of
  runner overhead) instead of a thread round trip (~20-170 µs);
* halts the bot if the hook runs longer than ``hook_budget_s`` of wall time (default
  0.5 s): the process-wide watchdog thread (:class:`Watchdog`) sees a guard busy with the
  same call for the whole budget and injects :class:`HookAborted` into the thread running
  it (CPython's ``PyThreadState_SetAsyncExc``). A hook looping in Python bytecode
  (``while True: ...``, even inside ``except Exception``) receives it at its next bytecode
  boundary; the halt is reported with ``error_type="HookTimeout"`` at least ``budget`` and at
  most two watchdog polls (≤ half a budget, ≤ 0.2 s) more after the hook started;
* turns any exception into a :class:`~qtd.events.StrategyError` event (with the traceback)
  plus a ``TradingStateChanged`` to HALTED for that bot alone, and stops the bot.

**Two ways to run a hook, one runner.** Backtests (and admission smoke runs) call hooks
inline as described here. The live agent (and ``qtd backtest --isolate``) gives the runner a
:class:`~qtd.workers.protocol.StrategyRef` and a :class:`~qtd.workers.pool.WorkerPool`
instead of a class: the strategy is imported and its hooks run in a worker process
(:mod:`qtd.workers`), and the runner awaits each reply for at most the budget. A hook stuck in
one C call holding the GIL, or allocating without bound, costs its worker — killed, its bot
HALTED with a ``StrategyError`` — never the agent's event loop, the other bots, the risk
engine or the kill switch. The runner's context stays the truth (positions, in-flight
quantities, the canary share); the worker's is a replica sent with a call whenever it
changed. Everything else — the order path, the failure capture, the events recorded — is
the same code in both modes.

Inline mode: while a hook runs, the event loop waits for it (at most the budget, for
bytecode): other bots, the risk engine and telemetry resume as soon as it returns or is
aborted. A hook blocked inside one C call that releases the GIL (``time.sleep(3600)``,
blocking socket I/O) receives the abort only when the call returns; in a backtest that only
delays the run. Strategies must not block: hooks are pure computation
on the bar and the bot's state (the DSL gives them no I/O).

**Orders.** Hooks queue requests in the context outbox; after the hook returns the runner
submits each :class:`~qtd.orders.OrderRequest` through the injected async ``submit`` (in
production the OrderRouter: risk engine, write-ahead intent, broker). A result that is an
``OrderDenied``/``OrderRejected`` releases the in-flight quantity. Fills come back through
:meth:`BotRunner.deliver_fill` and reach ``on_fill`` before the next market data item.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import logging
import os
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from enum import StrEnum
from typing import Any, Final

import msgspec

from qtd.clock import Clock
from qtd.events import (
    Event,
    Fill,
    OrderDenied,
    OrderRejected,
    ParamsChanged,
    Scope,
    StrategyError,
    TradingState,
    TradingStateChanged,
)
from qtd.feeds.bars import Bar, MarketData, Trade
from qtd.orders import OrderRequest
from qtd.strategy import CancelAll, Strategy, StrategyContext
from qtd.workers.link import HookOverrun, WorkerGone
from qtd.workers.pool import LoadFailed, RemoteBot, WorkerPool
from qtd.workers.protocol import StrategyRef

log = logging.getLogger(__name__)

DEFAULT_HOOK_BUDGET_S: Final = 0.5
Submit = Callable[[OrderRequest], Awaitable[Any]]
Cancel = Callable[[CancelAll], Awaitable[Any]]
Emit = Callable[[Event], Awaitable[Any]]

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc


class HookAborted(BaseException):
    """Injected into a thread whose hook overran its budget (not an ``Exception``, so user
    ``except Exception`` blocks cannot swallow it)."""


class HookTimeout(Exception):
    """A hook did not return within its budget."""


def _inject(ident: int) -> None:
    _set_async_exc(ctypes.c_ulong(ident), ctypes.py_object(HookAborted))


def _clear_injected(ident: int) -> None:
    _set_async_exc(ctypes.c_ulong(ident), ctypes.c_void_p(0))


class HookGuard:
    """Watches one bot's hook calls for overruns (see :class:`Watchdog`).

    The calling thread marks each call with :meth:`enter` / :meth:`exit` (two attribute
    stores and one uncontended lock: ~0.2 µs); the watchdog thread calls :meth:`check`
    every poll. An abort is injected only under the guard's lock while the same call is
    still busy, and :meth:`exit` clears an injection that raced with the hook's return, so
    :class:`HookAborted` can only surface between :meth:`enter` and the end of :meth:`exit`.

    Args:
        budget_s: wall-time budget of one call, seconds (> 0).
    """

    __slots__ = ("budget_s", "busy", "fired", "ident", "lock", "seen_at", "seen_seq", "seq")

    def __init__(self, budget_s: float) -> None:
        if not budget_s > 0:
            raise ValueError(f"hook_budget_s={budget_s!r}: must be > 0 seconds")
        self.budget_s = budget_s
        self.lock = threading.Lock()
        self.ident = threading.get_ident()
        self.seq = 0
        self.busy = False
        self.fired = False
        self.seen_seq = -1
        self.seen_at = 0.0

    def bind(self) -> None:
        """Watch calls made on the current thread from now on."""
        self.ident = threading.get_ident()

    def enter(self) -> None:
        """A call starts (on the bound thread)."""
        self.seq += 1
        self.busy = True

    def exit(self) -> bool:
        """The call ended; returns whether the watchdog aborted it (any injection still
        pending is cleared before this returns)."""
        with self.lock:
            self.busy = False
            fired = self.fired
        if fired:
            self.fired = False  # the watchdog writes it only while busy
            _clear_injected(self.ident)
        return fired

    def check(self, now: float) -> bool:
        """Watchdog side: abort the current call if it has been busy for the whole budget
        (``now``: ``time.monotonic()``). Returns whether it aborted."""
        with self.lock:
            if not self.busy or self.fired:
                self.seen_seq = -1
                return False
            if self.seq != self.seen_seq:
                self.seen_seq, self.seen_at = self.seq, now
                return False
            if now - self.seen_at < self.budget_s:
                return False
            self.fired = True
            _inject(self.ident)
            return True


class Watchdog:
    """One daemon thread per process polling every registered :class:`HookGuard`.

    It sleeps while no guard is registered; otherwise it wakes every ``min(budget) / 4``
    seconds (at most 0.1 s, at least 2 ms), so a call is first seen busy within a quarter
    budget of its start and aborted at most half a budget after its budget ran out.
    """

    def __init__(self) -> None:
        self._guards: set[HookGuard] = set()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, guard: HookGuard) -> None:
        with self._cond:
            self._guards.add(guard)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="qtd-hook-watchdog",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def remove(self, guard: HookGuard) -> None:
        with self._cond:
            self._guards.discard(guard)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._guards:
                    self._cond.wait()
                guards = list(self._guards)
            time.sleep(min(0.1, max(0.002, min(g.budget_s for g in guards) / 4)))
            now = time.monotonic()
            for g in guards:
                if g.check(now):
                    log.warning("hook overran its %.3f s budget: aborting it", g.budget_s)

    def after_fork(self) -> None:
        self._guards, self._cond, self._thread = set(), threading.Condition(), None


WATCHDOG: Final = Watchdog()
os.register_at_fork(after_in_child=WATCHDOG.after_fork)


class HookThread:
    """One daemon thread running calls one at a time, with a timeout (importing strategy
    files in the admission child, under a budget).

    Args:
        name: thread name (shown in tracebacks and ``py-spy``).
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                fn, args, fut = job
                if not fut.set_running_or_notify_cancel():
                    continue
                try:
                    fut.set_result(fn(*args))
                except BaseException as exc:  # user code: everything goes back to the caller
                    fut.set_exception(exc)
        except HookAborted:  # delivered late, outside a call: just end the thread
            return

    async def call(self, fn: Callable[..., Any], *args: Any, timeout_s: float) -> Any:
        """Run ``fn(*args)`` in the thread; return its result or raise its exception.

        Raises:
            HookTimeout: not done within ``timeout_s`` seconds (the thread is then aborted).
        """
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((fn, args, fut))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), timeout_s)
        except TimeoutError:
            self.abort()
            raise HookTimeout(f"did not return within {timeout_s} s") from None

    def abort(self) -> None:
        """Inject :class:`HookAborted` into the thread and stop it after the current job."""
        ident = self._thread.ident
        if ident is not None and self._thread.is_alive():
            _inject(ident)
        self.close()

    def close(self) -> None:
        self._jobs.put(None)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class BotSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Identity of a bot as the runner needs it.

    Attributes:
        name: bot name (unique per node).
        account: trading account its orders go to.
        venue: venue name.
        symbols: its instruments; the first is the strategy's default symbol.
        currency: quote currency of its positions.
    """

    name: str
    account: str
    venue: str
    symbols: tuple[str, ...]
    currency: str = "USD"


class BotState(StrEnum):
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    HALTED = "HALTED"
    STOPPED = "STOPPED"


_END: Final = object()
_STOP: Final = object()
_RUNNING: Final = BotState.RUNNING
_BASE_ON_FILL: Final = Strategy.on_fill  # not overridden: nothing to call


async def _as_async(items: Iterable[MarketData] | AsyncIterable[MarketData]
                    ) -> AsyncIterator[MarketData]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for n, item in enumerate(items):
            if n % 1024 == 0:
                await asyncio.sleep(0)
            yield item


class BotRunner:
    """Runs one strategy instance for one bot (see the module docstring).

    Args:
        strategy: the admitted :class:`~qtd.strategy.Strategy` subclass (hooks run inline),
            or a :class:`~qtd.workers.protocol.StrategyRef` (hooks run in a worker of
            ``workers``; the strategy is never imported into this process).
        params: validated params (an instance of ``strategy.Params``); ``None`` with a
            ``StrategyRef``, which carries them.
        spec: the bot's identity.
        clock: injected clock (a ``SimClock`` moved by the historical feed in backtests).
        submit: async callable taking each ``OrderRequest`` (the OrderRouter in production).
        cancel: async callable taking ``CancelAll`` requests; ``None`` logs and drops them.
        emit: async callable storing events (``EventStore.append``); ``None`` keeps them in
            :attr:`events`.
        node: node name stamped on events.
        hook_budget_s: wall-time budget of one hook call, seconds (> 0).
        params_hash: content hash of the admitted (source, params) pair.
        workers: the worker pool running a ``StrategyRef``'s hooks (required with one).
        keep_requests: keep only the latest this many order requests in :attr:`requests`
            (cut in batches: up to twice as many are held); ``None`` (default) keeps every
            one (a backtest or smoke run reads them all; a live agent has the store).

    Raises:
        ValueError: ``hook_budget_s`` is not > 0, ``keep_requests`` < 0, or a
            ``StrategyRef`` without ``workers``.
    """

    def __init__(
        self, strategy: type[Strategy] | StrategyRef, params: Strategy.Params | None,
        spec: BotSpec, *, clock: Clock, submit: Submit, cancel: Cancel | None = None,
        emit: Emit | None = None, node: str = "local",
        hook_budget_s: float = DEFAULT_HOOK_BUDGET_S, params_hash: str = "",
        workers: WorkerPool | None = None, keep_requests: int | None = None,
    ) -> None:
        if keep_requests is not None and keep_requests < 0:
            raise ValueError(f"keep_requests={keep_requests!r}: must be >= 0 or None")
        self._ref = strategy if isinstance(strategy, StrategyRef) else None
        if self._ref is not None and workers is None:
            raise ValueError(f"bot {spec.name!r}: a StrategyRef runs in workers: none given")
        self.spec, self.clock, self.node = spec, clock, node
        self._cls: Any = None if self._ref is not None else strategy
        self._params: Any = params if self._ref is None else self._ref.params
        self._submit, self._cancel, self._emit = submit, cancel, emit
        self.hook_budget_s = hook_budget_s
        self.guard = HookGuard(hook_budget_s)
        self.params_hash = params_hash
        self.state = BotState.CREATED
        self.events: list[Event] = []
        self.error: StrategyError | None = None
        self.requests: list[OrderRequest] = []
        self.keep_requests = keep_requests
        self.ctx = StrategyContext(
            bot=spec.name, account=spec.account, venue=spec.venue, symbols=spec.symbols,
            clock=clock, currency=spec.currency,
            strategy=strategy.strategy if isinstance(strategy, StrategyRef)
            else strategy.__name__)
        self.strategy: Strategy | None = None
        self._inbox: deque[Any] = deque()  # fills and the stop marker, in arrival order
        self._fill_sink: Callable[[Fill], None] | None = None  # see divert_fills
        self._wake = asyncio.Event()
        self._stopping = False
        self._failure: tuple[str, str, str, str] | None = None
        self._pending_params: tuple[Any, str] | None = None
        self._workers = workers
        self._remote: RemoteBot | None = None
        self.handled = 0
        """Market data items of the bot's symbols whose hook ran and whose orders were
        submitted (a canary split waits on it: :mod:`qtd.agent.canary_ramps`)."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def params(self) -> Any:
        """The params in force: a ``Params`` instance inline, their builtins (a dict) for a
        strategy in a worker."""
        return self._params

    @property
    def isolated(self) -> bool:
        """Whether the strategy runs in a worker process."""
        return self._ref is not None

    # --- inputs from outside --------------------------------------------------------------

    def deliver_fill(self, fill: Fill) -> None:
        """Hand one of this bot's fills to the runner (non-blocking; others are ignored).
        It reaches ``on_fill`` before the next market data item."""
        if fill.bot == self.spec.name:
            if self._fill_sink is not None:
                self._fill_sink(fill)
                return
            self._inbox.append(fill)
            self._wake.set()

    def divert_fills(self, sink: Callable[[Fill], None]) -> None:
        """Hand this bot's fills delivered from now on to ``sink`` instead of ``on_fill``:
        for a runner being replaced (a strategy swap keeps them for the new runner)."""
        self._fill_sink = sink

    def request_stop(self) -> None:
        """Stop after the current item: ``on_stop`` runs, state becomes STOPPED."""
        self._inbox.append(_STOP)
        self._wake.set()

    def swap_params(self, params: Strategy.Params | dict[str, Any], content_hash: str) -> None:
        """Use admitted ``params`` from the next bar boundary on (see :meth:`_swap`): a
        ``Params`` instance inline, its builtins (``StrategyRef.params``) in a worker."""
        self._pending_params = (params, content_hash)

    # --- driving: live (run) and pushed (start / handle / finish) -------------------------

    async def run(self, feed: Iterable[MarketData] | AsyncIterable[MarketData]) -> BotState:
        """Run the bot over ``feed`` until it ends, :meth:`request_stop`, or a halt.

        Returns the final state: STOPPED (normal end) or HALTED (strategy error/overrun,
        or an order submission failure). Never raises for strategy errors.
        """
        try:
            if await self.start():
                await self._loop(aiter(_as_async(feed)))
            return await self.finish()
        finally:
            await self._release()

    async def start(self) -> bool:
        """Construct the strategy and run ``on_start``; returns whether the bot is running."""
        self.state = BotState.RUNNING
        if self._ref is not None:
            return await self._start_remote()
        self.guard.bind()
        WATCHDOG.add(self.guard)
        self.strategy = await self._call("__init__", self._cls, self.ctx, self._params)
        if self.strategy is None:
            return False
        return await self._ok("on_start", self.strategy.on_start)

    async def handle(self, item: MarketData) -> None:
        """Process the fills delivered so far (``on_fill``), then one market data item:
        mark it and run ``on_bar``/``on_trade`` if it is one of the bot's symbols, then
        submit what the hooks queued. Does nothing once the bot is not running."""
        if self._inbox:
            await self._drain()
        if self.state is not _RUNNING or self._stopping:
            return
        ctx = self.ctx
        sym = item.symbol
        if sym not in ctx.positions:
            return
        if self._pending_params is not None and not await self._swap():
            return
        strategy: Any = self.strategy
        if type(item) is Bar:
            ctx.marks[sym] = item.close
            if self._remote is None:
                self._invoke("on_bar", strategy.on_bar, item)
            else:
                await self._remote_hook("on_bar", item)
        elif type(item) is Trade:
            ctx.marks[sym] = item.price
            if self._remote is None:
                self._invoke("on_trade", strategy.on_trade, item)
            else:
                await self._remote_hook("on_trade", item)
        if self._failure is not None or ctx.outbox:
            await self._settle()
        self.handled += 1

    async def finish(self) -> BotState:
        """End of input: process the delivered fills, run ``on_stop``; returns the final
        state (STOPPED, or HALTED)."""
        try:
            if self._inbox and self.state is _RUNNING:
                await self._drain()
            if self.state is _RUNNING:
                await self._call("on_stop", None if self.strategy is None
                                 else self.strategy.on_stop)
                if self.state is _RUNNING:
                    self.state = BotState.STOPPED
        finally:
            await self._release()
        return self.state

    async def _release(self) -> None:
        WATCHDOG.remove(self.guard)
        remote, self._remote = self._remote, None
        if remote is not None and self._workers is not None:
            await self._workers.detach(remote)

    async def _start_remote(self) -> bool:
        """Load the strategy in its worker, then ``__init__`` and ``on_start`` there."""
        assert self._ref is not None and self._workers is not None
        spec = self.spec
        try:
            self._remote = await self._workers.attach(
                bot=spec.name, account=spec.account, venue=spec.venue, symbols=spec.symbols,
                currency=spec.currency, ref=self._ref, budget_s=self.hook_budget_s)
        except LoadFailed as exc:
            f = exc.failure
            self._failure = ("import", f.error_type, f.message, f.traceback)
        except (HookOverrun, WorkerGone, OSError) as exc:
            self._failure = ("import", type(exc).__name__, str(exc), "")
        if self._remote is None:
            await self._settle()
            return False
        return await self._ok("__init__", None) and await self._ok("on_start", None)

    async def _loop(self, it: AsyncIterator[MarketData]) -> None:
        """Live input: wait for the next item or a fill/stop, whichever comes first."""
        nxt: asyncio.Future[Any] = asyncio.ensure_future(anext(it, _END))
        try:
            while self.state is _RUNNING:
                self._wake.clear()
                if self._inbox:
                    await self._drain()
                if self._stopping or self.state is not _RUNNING:
                    return
                if not nxt.done():
                    wake = asyncio.ensure_future(self._wake.wait())
                    await asyncio.wait({nxt, wake}, return_when=asyncio.FIRST_COMPLETED)
                    wake.cancel()
                    continue
                got = nxt.result()
                if got is _END:
                    return
                await self.handle(got)
                await asyncio.sleep(0)  # let fills scheduled by the submit path arrive first
                nxt = asyncio.ensure_future(anext(it, _END))
        finally:
            if not nxt.done():
                nxt.cancel()

    async def _drain(self) -> None:
        inbox = self._inbox
        while inbox and self.state is _RUNNING:
            item = inbox.popleft()
            if item is _STOP:
                self._stopping = True
                return
            self.ctx.apply_fill(item)
            if self._remote is not None:
                if self._remote.has_on_fill:
                    await self._call("on_fill", None, item)
            elif self.strategy is not None:
                hook = self.strategy.on_fill
                if getattr(hook, "__func__", None) is not _BASE_ON_FILL:  # base: a no-op
                    await self._call("on_fill", hook, item)

    async def _swap(self) -> bool:
        """Swap in pending params at a bar boundary, then re-run ``on_start`` so indicators
        are rebuilt for the new params (they warm up again)."""
        assert self._pending_params is not None
        params, new_hash = self._pending_params
        self._pending_params = None
        old_hash, self.params_hash = self.params_hash, new_hash
        if self._remote is not None:
            assert isinstance(params, dict)
            if not await self._remote_swap(params):
                return False
        else:
            assert self.strategy is not None and not isinstance(params, dict)
            self.strategy.params = params
        self._params = params
        await self._record(ParamsChanged(
            node=self.node, bot=self.name, ts_event=self.clock.now_ns(),
            ts_init=self.clock.now_ns(), old_hash=old_hash, new_hash=new_hash, accepted=True,
            reason="swapped at bar boundary"))
        return await self._ok("on_start", None if self.strategy is None
                              else self.strategy.on_start)

    async def _remote_swap(self, params: dict[str, Any]) -> bool:
        assert self._remote is not None
        try:
            failure = await self._remote.swap(params)
        except (HookOverrun, WorkerGone) as exc:
            self._failure = ("params", type(exc).__name__, str(exc), "")
        else:
            if failure is not None:
                self._failure = ("params", failure.error_type, failure.message, "")
        if self._failure is not None:
            await self._settle()
            return False
        return True

    # --- the one wrapper around user code --------------------------------------------------

    def _invoke(self, hook: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run user code ``fn(*args)`` inline under the guard. An exception or an overrun
        is kept in ``_failure`` (recorded by :meth:`_settle`); returns ``None`` then."""
        guard = self.guard  # HookGuard.enter / exit inlined (hot path: once per bar)
        guard.seq += 1
        guard.busy = True
        try:
            try:
                return fn(*args)
            finally:
                with guard.lock:
                    guard.busy = False
                    fired = guard.fired
                if fired:
                    guard.fired = False  # the watchdog writes it only while busy
                    _clear_injected(guard.ident)
                    raise HookAborted
        except HookAborted:
            self._timed_out(hook)
        except Exception as exc:
            self._raised(hook, exc)
        return None

    def _timed_out(self, hook: str) -> None:
        self._failure = (hook, "HookTimeout",
                         f"{hook} did not return within {self.hook_budget_s} s (budget)", "")

    def _raised(self, hook: str, exc: Exception) -> None:
        self._failure = (hook, type(exc).__name__, str(exc),
                         "".join(traceback.format_exception(exc)))

    async def _remote_hook(self, hook: str, arg: Any = None) -> None:
        """:meth:`_invoke` for a strategy in a worker: the same failure capture; an overrun
        gets the worker killed (:class:`~qtd.workers.pool.WorkerPool`)."""
        remote = self._remote
        assert remote is not None
        t = type(arg)
        try:
            failure = await remote.call(
                hook, self.ctx, self.clock.now_ns(), bar=arg if t is Bar else None,
                trade=arg if t is Trade else None, fill=arg if t is Fill else None)
        except HookOverrun as exc:
            self._failure = (hook, "HookTimeout", f"{hook}: {exc}", "")
        except WorkerGone as exc:
            self._failure = (hook, "WorkerGone", str(exc), "")
        else:
            if failure is not None:
                self._failure = (failure.hook, failure.error_type, failure.message,
                                 failure.traceback)

    async def _settle(self) -> None:
        """After a hook: record its failure (halting the bot), else submit its requests."""
        failure, self._failure = self._failure, None
        if failure is not None:
            await self._halt(*failure)
        else:
            await self._flush()

    async def _ok(self, hook: str, fn: Callable[..., Any] | None, *args: Any) -> bool:
        await self._call(hook, fn, *args)
        return self.state is _RUNNING

    async def _call(self, hook: str, fn: Callable[..., Any] | None, *args: Any) -> Any:
        """Run a hook (see :meth:`_invoke`; ``fn`` is None for a strategy in a worker,
        :meth:`_remote_hook`) while the bot runs, then settle it."""
        if self.state is not _RUNNING:
            return None
        if fn is not None:
            result = self._invoke(hook, fn, *args)
        else:
            await self._remote_hook(hook, *args)
            result = None
        await self._settle()
        return result

    async def _flush(self) -> None:
        for req in self.ctx.take_outbox():
            if self.state is not BotState.RUNNING:
                return
            try:
                if isinstance(req, CancelAll):
                    await self._do_cancel(req)
                else:
                    self._remember(req)
                    result = await self._submit(req)
                    if isinstance(result, OrderDenied | OrderRejected):
                        self.ctx.release(req.symbol, req.side.sign * req.qty)
            except Exception as exc:
                log.exception("bot %s: order submission failed; halting the bot", self.name)
                await self.halt(f"order submission failed: {type(exc).__name__}: {exc}")
                return

    def _remember(self, req: OrderRequest) -> None:
        reqs, keep = self.requests, self.keep_requests
        reqs.append(req)
        if keep is not None and len(reqs) > 2 * keep:
            del reqs[:len(reqs) - keep]

    async def _do_cancel(self, req: CancelAll) -> None:
        if self._cancel is None:
            log.warning("bot %s: cancel_all dropped: no cancel path wired", self.name)
            return
        await self._cancel(req)

    async def _halt(self, hook: str, error_type: str, message: str, tb: str) -> None:
        now = self.clock.now_ns()
        err = StrategyError(node=self.node, bot=self.name, ts_event=now, ts_init=now,
                            hook=hook, error_type=error_type, message=message, traceback=tb)
        self.error = err
        log.error("bot %s halted: %s in %s: %s", self.name, error_type, hook, message,
                  extra={"bot": self.name, "hook": hook})
        await self._record(err)
        await self.halt(f"strategy error in {hook}: {error_type}: {message}")

    async def halt(self, reason: str) -> None:
        """Halt this bot (no new orders; whatever its hook queued is dropped) and record a
        ``TradingStateChanged`` to HALTED with ``reason``; a no-op when already halted."""
        if self.state is BotState.HALTED:
            return
        self.state = BotState.HALTED
        now = self.clock.now_ns()
        await self._record(TradingStateChanged(
            node=self.node, bot=self.name, ts_event=now, ts_init=now, scope=Scope.STRATEGY,
            scope_key=self.name, old=TradingState.ACTIVE, new=TradingState.HALTED,
            reason=reason))
        self.ctx.take_outbox()  # whatever the failed hook queued is never submitted

    async def _record(self, event: Event) -> None:
        if self._emit is None:
            self.events.append(event)
            return
        try:
            await self._emit(event)
        except Exception:
            log.exception("bot %s: could not record %s", self.name, type(event).__name__)
            self.events.append(event)


async def run_bots(
    jobs: Sequence[tuple[BotRunner, Iterable[MarketData] | AsyncIterable[MarketData]]],
) -> dict[str, BotState]:
    """Run several bots concurrently, one named task each; one bot halting (or crashing)
    never stops the others. Returns each bot's final state by name."""
    async with asyncio.TaskGroup() as tg:
        tasks = {r.name: tg.create_task(_guarded(r, feed), name=f"bot:{r.name}")
                 for r, feed in jobs}
    return {name: t.result() for name, t in tasks.items()}


async def _guarded(
    runner: BotRunner, feed: Iterable[MarketData] | AsyncIterable[MarketData]
) -> BotState:
    try:
        return await runner.run(feed)
    except Exception as exc:  # a runner bug must not take the other bots down
        log.exception("bot %s: runner failed", runner.name)
        await runner.halt(f"runner failed: {type(exc).__name__}: {exc}")
        return runner.state
