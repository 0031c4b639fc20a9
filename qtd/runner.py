"""The bot runner: one strategy instance for one bot, quarantined and on a time budget.

Each bot runs as one asyncio task (:meth:`BotRunner.run`) and owns one daemon worker thread
(:class:`HookThread`). Every call into user code — construction, ``on_start``, ``on_bar``,
``on_trade``, ``on_fill``, ``on_stop``, params swaps — goes through one wrapper,
:meth:`BotRunner._call`, which:

* runs the hook in the bot's worker thread, so a slow or looping hook never blocks the
  event loop (other bots, the risk engine, telemetry keep running);
* waits at most ``hook_budget_s`` (default 0.5 s) of wall time for it;
* turns any exception into a :class:`~qtd.events.StrategyError` event (with the traceback)
  plus a ``TradingStateChanged`` to HALTED for that bot alone, and stops the bot.

**Overrunning hooks (infinite loops).** When the budget runs out the bot is halted and
reported (``error_type="HookTimeout"``), and the runner injects :class:`HookAborted` into the
worker thread with CPython's ``PyThreadState_SetAsyncExc``. A hook looping in Python
bytecode (``while True: ...``) receives it at its next bytecode boundary and ends, freeing
the thread. A hook stuck inside one C call (e.g. ``time.sleep(3600)``) only receives it when
the call returns; until then the daemon thread is abandoned — the bot is already halted and
no order it queues afterwards is ever submitted, and daemon threads never block process
exit. No ``sys.settrace`` or signals are involved, so it works in any thread and costs
nothing on the happy path beyond one thread hand-off per hook (~20-50 µs).

**Orders.** Hooks queue requests in the context outbox; after the hook returns the runner
submits each :class:`~qtd.orders.OrderRequest` through the injected async ``submit`` (in
production the OrderRouter: risk engine, write-ahead intent, broker). A result that is an
``OrderDenied``/``OrderRejected`` releases the in-flight quantity. Fills come back through
:meth:`BotRunner.deliver_fill` and reach ``on_fill`` between market data items.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import logging
import queue
import threading
import traceback
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

log = logging.getLogger(__name__)

DEFAULT_HOOK_BUDGET_S: Final = 0.5
Submit = Callable[[OrderRequest], Awaitable[Any]]
Cancel = Callable[[CancelAll], Awaitable[Any]]
Emit = Callable[[Event], Awaitable[Any]]


class HookAborted(BaseException):
    """Injected into a worker thread whose hook overran its budget (not an ``Exception``,
    so user ``except Exception`` blocks cannot swallow it)."""


class HookTimeout(Exception):
    """A hook did not return within its budget."""


class HookThread:
    """One daemon thread running a bot's hooks one at a time, with a watchdog.

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
        except HookAborted:  # delivered late, outside a hook: just end the thread
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
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(ident), ctypes.py_object(HookAborted))
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
        strategy_cls: the admitted :class:`~qtd.strategy.Strategy` subclass.
        params: validated params (an instance of ``strategy_cls.Params``).
        spec: the bot's identity.
        clock: injected clock (a ``SimClock`` moved by the historical feed in backtests).
        submit: async callable taking each ``OrderRequest`` (the OrderRouter in production).
        cancel: async callable taking ``CancelAll`` requests; ``None`` logs and drops them.
        emit: async callable storing events (``EventStore.append``); ``None`` keeps them in
            :attr:`events`.
        node: node name stamped on events.
        hook_budget_s: wall-time budget of one hook call, seconds.
        params_hash: content hash of the admitted (source, params) pair.
    """

    def __init__(
        self, strategy_cls: type[Strategy], params: Strategy.Params, spec: BotSpec, *,
        clock: Clock, submit: Submit, cancel: Cancel | None = None, emit: Emit | None = None,
        node: str = "local", hook_budget_s: float = DEFAULT_HOOK_BUDGET_S,
        params_hash: str = "",
    ) -> None:
        self.spec, self.clock, self.node = spec, clock, node
        self._cls, self._params = strategy_cls, params
        self._submit, self._cancel, self._emit = submit, cancel, emit
        self.hook_budget_s = hook_budget_s
        self.params_hash = params_hash
        self.state = BotState.CREATED
        self.events: list[Event] = []
        self.error: StrategyError | None = None
        self.requests: list[OrderRequest] = []
        self.ctx = StrategyContext(
            bot=spec.name, account=spec.account, venue=spec.venue, symbols=spec.symbols,
            clock=clock, strategy=strategy_cls.__name__, currency=spec.currency)
        self.strategy: Strategy | None = None
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._pending_params: tuple[Strategy.Params, str] | None = None
        self._thread: HookThread | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def strategy_cls(self) -> type[Strategy]:
        return self._cls

    # --- inputs from outside --------------------------------------------------------------

    def deliver_fill(self, fill: Fill) -> None:
        """Hand one of this bot's fills to the runner (non-blocking; others are ignored)."""
        if fill.bot == self.spec.name:
            self._inbox.put_nowait(fill)

    def request_stop(self) -> None:
        """Stop after the current item: ``on_stop`` runs, state becomes STOPPED."""
        self._inbox.put_nowait(_STOP)

    def swap_params(self, params: Strategy.Params, content_hash: str) -> None:
        """Use admitted ``params`` from the next bar boundary on (see :meth:`_swap`)."""
        self._pending_params = (params, content_hash)

    # --- main loop --------------------------------------------------------------------------

    async def run(self, feed: Iterable[MarketData] | AsyncIterable[MarketData]) -> BotState:
        """Run the bot over ``feed`` until it ends, :meth:`request_stop`, or a halt.

        Returns the final state: STOPPED (normal end) or HALTED (strategy error/overrun,
        or an order submission failure). Never raises for strategy errors.
        """
        self._thread = HookThread(f"qtd-bot-{self.spec.name}")
        self.state = BotState.RUNNING
        try:
            if await self._start():
                await self._loop(aiter(_as_async(feed)))
            if self.state is BotState.RUNNING:
                assert self.strategy is not None
                await self._call("on_stop", self.strategy.on_stop)
                if self.state is BotState.RUNNING:
                    self.state = BotState.STOPPED
        finally:
            self._thread.close()
        return self.state

    async def _start(self) -> bool:
        self.strategy = await self._call("__init__", self._cls, self.ctx, self._params)
        return self.strategy is not None and await self._ok("on_start", self.strategy.on_start)

    async def _loop(self, it: AsyncIterator[MarketData]) -> None:
        nxt: asyncio.Future[Any] = asyncio.ensure_future(anext(it, _END))
        try:
            while self.state is BotState.RUNNING:
                got = await self._next(nxt)
                if got is _END or got is _STOP:
                    return
                await self._on_market(got)
                await asyncio.sleep(0)  # let fills scheduled by the submit path arrive first
                nxt = asyncio.ensure_future(anext(it, _END))
        finally:
            if not nxt.done():
                nxt.cancel()

    async def _next(self, nxt: asyncio.Future[Any]) -> Any:
        """Process fills until the next market data item is there; return it."""
        while self.state is BotState.RUNNING:
            while not self._inbox.empty():
                if await self._on_inbox(self._inbox.get_nowait()):
                    return _STOP
            if nxt.done():
                return nxt.result()
            get = asyncio.ensure_future(self._inbox.get())
            done, _ = await asyncio.wait({nxt, get}, return_when=asyncio.FIRST_COMPLETED)
            if get in done:
                if await self._on_inbox(get.result()):
                    return _STOP
            else:
                get.cancel()
        return _STOP

    async def _on_inbox(self, item: Any) -> bool:
        if item is _STOP:
            return True
        await self._on_fill(item)
        return False

    async def _on_fill(self, fill: Fill) -> None:
        self.ctx.apply_fill(fill)
        if self.strategy is not None:
            await self._call("on_fill", self.strategy.on_fill, fill)

    async def _on_market(self, item: MarketData) -> None:
        if item.symbol not in self.ctx.positions:
            return
        if self._pending_params is not None and not await self._swap():
            return
        assert self.strategy is not None
        if type(item) is Bar:
            self.ctx.mark(item.symbol, item.close)
            await self._call("on_bar", self.strategy.on_bar, item)
        elif type(item) is Trade:
            self.ctx.mark(item.symbol, item.price)
            await self._call("on_trade", self.strategy.on_trade, item)

    async def _swap(self) -> bool:
        """Swap in pending params at a bar boundary, then re-run ``on_start`` so indicators
        are rebuilt for the new params (they warm up again)."""
        assert self._pending_params is not None and self.strategy is not None
        params, new_hash = self._pending_params
        self._pending_params = None
        old_hash, self.params_hash = self.params_hash, new_hash
        self.strategy._params = params
        self._params = params
        await self._record(ParamsChanged(
            node=self.node, bot=self.name, ts_event=self.clock.now_ns(),
            ts_init=self.clock.now_ns(), old_hash=old_hash, new_hash=new_hash, accepted=True,
            reason="swapped at bar boundary"))
        return await self._ok("on_start", self.strategy.on_start)

    # --- the one wrapper around user code --------------------------------------------------

    async def _ok(self, hook: str, fn: Callable[..., Any], *args: Any) -> bool:
        await self._call(hook, fn, *args)
        return self.state is BotState.RUNNING

    async def _call(self, hook: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run user code ``fn(*args)`` in the worker thread under the budget; on any error
        halt this bot and record a ``StrategyError``. Then submit what the hook queued."""
        if self.state is not BotState.RUNNING or self._thread is None:
            return None
        try:
            result = await self._thread.call(fn, *args, timeout_s=self.hook_budget_s)
        except HookTimeout as exc:
            await self._halt(hook, "HookTimeout", f"{hook} {exc} (budget)", "")
            return None
        except Exception as exc:
            tb = "".join(traceback.format_exception(exc))
            await self._halt(hook, type(exc).__name__, str(exc), tb)
            return None
        await self._flush()
        return result

    async def _flush(self) -> None:
        for req in self.ctx.take_outbox():
            if self.state is not BotState.RUNNING:
                return
            try:
                if isinstance(req, CancelAll):
                    await self._do_cancel(req)
                else:
                    self.requests.append(req)
                    result = await self._submit(req)
                    if isinstance(result, OrderDenied | OrderRejected):
                        self.ctx.release(req.symbol, req.side.sign * req.qty)
            except Exception as exc:
                log.exception("bot %s: order submission failed; halting the bot", self.name)
                await self._set_halted(f"order submission failed: {type(exc).__name__}: {exc}")
                return

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
        await self._set_halted(f"strategy error in {hook}: {error_type}: {message}")

    async def _set_halted(self, reason: str) -> None:
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
        await runner._set_halted(f"runner failed: {type(exc).__name__}: {exc}")
        return runner.state
