"""Backtest on the live code path: the agent's own bot runner, risk engine, order router,
order lifecycle and event store, fed by a historical feed, a paper broker and a simulated
clock. Nothing here decides, checks or fills an order: it only drives time.

Per market-data item, in timestamp order (bars at their close time, trades at their time):

1. for a bar, the :class:`~qtd.clock.SimClock` moves to the bar's **open** and the paper
   broker matches its resting orders against the bar (:meth:`PaperBroker.on_bar`: market
   orders at the open by default, limits and stops through the bar's range); for a trade,
   it sees the trade price (:meth:`PaperBroker.on_price`). Reports go through
   :meth:`OrderRouter.on_venue_event` (stored, projected, fed to the risk engine) and fills
   reach their bot;
2. the clock moves to the item's availability time (bar close, trade time) and the risk
   engine gets the mark (staleness, PnL breakers);
3. each bot trading the symbol processes the item (:meth:`BotRunner.handle`: the fills
   delivered since its last item reach ``on_fill`` first; hooks run in the same quarantined
   runner, with the same budget, as live); its order requests go to
   :meth:`OrderRouter.submit` — risk check, write-ahead intent, paper broker — and the
   resulting reports are pumped before the next item;
4. the run's equity is marked to market (projections at the last prices) for the curve.

So with the default ``fill_at="next_open"`` a decision taken on a bar's close fills at the
next bar's open; see :mod:`qtd.brokers.paper` for every fill rule.

The driver is a plain loop: it awaits only when there is order work (a hook queued a
request, a broker has reports), so a bar with nothing to do costs a few microseconds.
Every event of the run is stored, in order, with its seq — but through
:class:`WriteBehindStore`: events are committed in batches (``sync=False``) and the final
commit is fsynced, instead of one fsynced commit per event. The write-ahead rule (intent
durable before the broker sees it) protects real orders across a crash; a backtest's broker
is simulated and a crashed run is simply rerun, so only the finished file must be durable.
"""

from __future__ import annotations

import asyncio
import collections
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

import msgspec

from qtd.brokers.paper import PaperBroker
from qtd.clock import SimClock
from qtd.events import AnyEvent, Event, Fill, OrderDenied, OrderIntent, Side
from qtd.execution import OrderRouter
from qtd.feeds import Bar, MarketData, Trade
from qtd.orders import ClientOrderIds, OrderRequest
from qtd.projections import Projections
from qtd.risk.config import RiskConfig
from qtd.risk.engine import RiskEngine
from qtd.runner import BotRunner, BotSpec
from qtd.store import BulkAppender, EventStore
from qtd.store.group import AppendMany
from qtd.strategy import CancelAll, Strategy
from qtd.workers.pool import WorkerPool
from qtd.workers.protocol import StrategyRef

_ZERO: Final = Decimal(0)
_BUY: Final = Side.BUY
WRITE_BATCH: Final = 1024
IN_FLIGHT: Final = 16
"""Batches a :class:`WriteBehindStore` lets its writer fall behind by before the run waits
(the writer's start and its WAL checkpoints take tens of ms now and then)."""


class BacktestBot(msgspec.Struct, frozen=True, kw_only=True):
    """One bot to backtest: its admitted strategy, params and identity.

    Attributes:
        strategy: the Strategy subclass (hooks run inline, the default and fastest), or a
            :class:`~qtd.workers.protocol.StrategyRef` (hooks run in a worker process of the
            run's ``workers`` pool, as the live agent runs them: ``qtd backtest
            --isolate``; the same event log, slower).
        params: an instance of ``strategy.Params``; ``None`` with a ``StrategyRef``, which
            carries its params.
        spec: the bot's identity.
        params_hash: content hash of the (source, params) pair, stamped on its events.
    """

    strategy: type[Strategy] | StrategyRef
    params: Any
    spec: BotSpec
    params_hash: str = ""


class BotResult(msgspec.Struct, frozen=True, kw_only=True):
    """Per-bot outcome. Money in the bot's quote currency; PnL marked at the last price."""

    bot: str
    state: str
    requests: int
    intents: int
    denials: int
    fills: int
    realized: Decimal
    unrealized: Decimal
    fees: Decimal
    error: str = ""


class EquityCurve(msgspec.Struct, kw_only=True):
    """Mark-to-market equity of the run, one point per distinct item time.

    Attributes:
        ts_ns: point times (item availability time: bar close, trade time), UTC ns.
        equity: starting cash + Σ positions (realized − fees + unrealized at the last
            prices), quote currency, as float.
        exposed: whether any position was open at that point.
    """

    ts_ns: list[int] = []
    equity: list[float] = []
    exposed: list[bool] = []


class BacktestResult(msgspec.Struct, frozen=True, kw_only=True):
    """Outcome of :func:`run_backtest`: items replayed, each bot's result, the equity curve
    and every fill (quote currency; ``start_equity`` is the paper accounts' starting cash,
    ``final_equity`` the exact mark-to-market equity at the end)."""

    items: int
    bots: dict[str, BotResult]
    last_seq: int
    start_equity: Decimal = Decimal(0)
    final_equity: Decimal = Decimal(0)
    curve: EquityCurve = msgspec.field(default_factory=EquityCurve)
    fills: list[Fill] = []


class WriteBehindStore:
    """An :class:`~qtd.store.EventStore` front for a backtest: ``append`` assigns the seq
    at once (so every event, its order and seq are exactly what a direct append would give)
    and keeps the event; every ``batch`` events go to the store in one ``sync=False``
    transaction, and :meth:`flush` (called at the end of the run) commits the rest with an
    fsync, which makes every earlier batch durable too (one WAL, see :mod:`qtd.store`).

    A full batch is written in the background by the store's
    :class:`~qtd.store.BulkAppender` (a writer process, started with the first full batch:
    the run never yields to the event loop, so an aiosqlite round trip would only start
    when the run next waits, and a writer thread would take the interpreter from the run)
    while the run goes on; at most :data:`IN_FLIGHT` batches are in flight, and batches are
    committed strictly in order. A run that never fills a batch has its events committed by the
    store itself at the flush. A failed background write is raised when the next batch is
    handed over, or by :meth:`flush` (the run always ends with one).

    It is also the order router's committer (:meth:`add`, :meth:`durable`): an intent gets
    its seq when it is approved, and its batch is this front's.

    Reads (``last_cid_counter``) flush first, so they see every event appended before.
    :meth:`close` (after the last flush) stops the background writer.

    Args:
        store: the run's store (nothing else may write to it during the run).
        batch: events per background transaction (>= 1); None keeps every event until the
            flush, which commits them in-process (no writer process: for a run in a
            sandbox that may not start processes, admission's smoke run).

    Raises:
        ValueError: ``batch`` < 1.
        StoreError: a batch could not be written (see :class:`~qtd.store.BulkAppender`).
    """

    def __init__(self, store: EventStore, batch: int | None = WRITE_BATCH) -> None:
        if batch is not None and batch < 1:
            raise ValueError(f"write_batch={batch!r}: must be >= 1 event or None")
        self.inner = store
        self.batch = sys.maxsize if batch is None else batch
        self.node, self.incarnation, self.path = store.node, store.incarnation, store.path
        self.last_seq = store.last_seq
        self._pending: list[Event] = []
        self._bulk: BulkAppender | None = None
        self._inflight: collections.deque[asyncio.Future[None]] = collections.deque()

    def add(self, event: Event) -> AnyEvent:
        """Keep ``event`` with the next seq and return it (the order router's committer:
        the ticket is the stored event itself; :meth:`durable` hands a full batch over)."""
        self.last_seq += 1
        stored: AnyEvent = msgspec.structs.replace(event, seq=self.last_seq)  # type: ignore[assignment]
        self._pending.append(stored)
        return stored

    async def durable(self, queued: AnyEvent, *, gather: bool) -> AnyEvent:
        """The event :meth:`add` kept (``gather`` is moot: batches are this front's own),
        after handing a full batch to the background writer."""
        if len(self._pending) > self.batch:
            await self._hand_over_full()
        return queued

    async def append(self, event: Event) -> AnyEvent:
        stored = self.add(event)
        if len(self._pending) > self.batch:
            await self._hand_over_full()
        return stored

    async def _hand_over_full(self) -> None:
        # the newest event stays behind, so the final flush always has an event to
        # commit with an fsync after the unsynced background batches
        pending = self._pending
        self._pending = [pending.pop()]
        await self._hand_over(pending, sync=False)

    async def append_many(self, events: Sequence[Event], *, sync: bool = True
                          ) -> list[AnyEvent]:
        return [await self.append(e) for e in events]

    async def _hand_over(self, batch: list[Event], *, sync: bool) -> None:
        """Give ``batch`` to the background writer, after the batches in flight (first
        waiting until fewer than :data:`IN_FLIGHT` are; a failed one raises here)."""
        inflight = self._inflight
        while inflight and (inflight[0].done() or len(inflight) >= IN_FLIGHT):
            await inflight.popleft()
        if self._bulk is None:
            self._bulk = self.inner.bulk_appender()
        inflight.append(self._bulk.hand_over(batch, sync=sync))

    async def _settle(self) -> None:
        """Wait for the batches in flight; raise the first error, if any."""
        inflight = self._inflight
        while inflight:
            await inflight.popleft()

    async def flush(self) -> None:
        """Commit the kept events with an fsync (which makes every earlier batch durable)
        after the batches in flight, and wait for all of them."""
        if self._pending:
            batch, self._pending = self._pending, []
            if self._bulk is None:  # no batch filled up: no writer process for so few
                await self.inner.append_many(batch)
                return
            await self._hand_over(batch, sync=True)
        await self._settle()

    async def close(self) -> None:
        """Flush and stop the background writer; the store stays open."""
        try:
            await self.flush()
        finally:
            bulk, self._bulk = self._bulk, None
            if bulk is not None:
                await bulk.close()

    async def last_cid_counter(self, bot: str) -> int:
        await self.flush()
        return await self.inner.last_cid_counter(bot)


class Backtest:
    """Wires the live order path for a backtest (see the module docstring).

    Args:
        store: event store receiving every event of the run (use a fresh file per run;
            written through a :class:`WriteBehindStore`).
        risk: risk config (the same file live uses).
        clock: the simulated clock.
        brokers: paper broker per account name (they must share ``clock``).
        hook_budget_s: wall-time budget of one strategy hook, seconds.
        write_batch: events per store transaction, or None (see :class:`WriteBehindStore`).
        workers: the worker pool running the hooks of bots given as a
            :class:`~qtd.workers.protocol.StrategyRef` (required for those; the caller
            closes it); ``None`` when every bot runs inline.
    """

    def __init__(
        self, *, store: EventStore, risk: RiskConfig, clock: SimClock,
        brokers: Mapping[str, PaperBroker], hook_budget_s: float = 0.5,
        write_batch: int | None = WRITE_BATCH, workers: WorkerPool | None = None,
    ) -> None:
        self.store = WriteBehindStore(store, write_batch)
        self.clock, self.brokers = clock, dict(brokers)
        self.hook_budget_s = hook_budget_s
        self.workers = workers
        self.proj = Projections()
        self.risk = RiskEngine(risk, self.proj, clock, store.node)
        run_store: Any = self.store  # duck-types EventStore: append, append_many, reads
        self.router = OrderRouter(
            store=run_store, clock=clock, risk=self.risk, cids=ClientOrderIds(run_store),
            brokers=self.brokers, projections=self.proj,
            committer=self._committer,  # write-behind: no per-commit fsync to share
        )
        self.bots: dict[str, BotRunner] = {}
        self._by_symbol: dict[str, list[BotRunner]] = {}
        self._results: dict[str, list[OrderIntent | OrderDenied]] = {}
        self.start_equity = sum((b.cash for b in self.brokers.values()), Decimal(0))
        self.marks: dict[str, Decimal] = {}
        self.curve = EquityCurve()
        self.fills: list[Fill] = []
        # the equity curve's sums (see _mark), brought up to date after fills: the fills
        # counted so far (and whether any came since), the cash (start − Σ signed
        # notional − quote-currency fees, exact) and each symbol's net quantity (exact),
        # over every bot and account
        self._seen, self._fresh = 0, False
        self._cash = self.start_equity
        self._qty: dict[str, Decimal] = {}
        # symbol held -> [net qty as a float, its market value at the last mark]
        self._held: dict[str, list[float]] = {}
        self._equity = float(self.start_equity)  # _cash + Σ market value of _held
        # the open positions (bot, account, symbol): "exposed" is any of them, whether or
        # not the symbol's net quantity over bots and accounts is zero
        self._open: set[tuple[str, str, str]] = set()
        self._exposed = False  # bool(_open)
        self._broker_list = list(self.brokers.values())

    def add(self, bot: BacktestBot) -> BotRunner:
        """Add a bot; returns its runner.

        Raises:
            ValueError: ``bot.strategy`` is a ``StrategyRef`` and this run has no
                ``workers``.
        """
        name = bot.spec.name
        self._results[name] = []
        runner = BotRunner(
            bot.strategy, bot.params, bot.spec, clock=self.clock,
            submit=self._submit, cancel=self._cancel, emit=self.store.append,
            node=self.store.node, hook_budget_s=self.hook_budget_s, params_hash=bot.params_hash,
            workers=self.workers,
        )
        self.bots[name] = runner
        for sym in bot.spec.symbols:
            self._by_symbol.setdefault(sym, []).append(runner)
        return runner

    def _committer(self, append_many: AppendMany, path: str) -> WriteBehindStore:
        """The order router's committer: the run's write-behind store (its batches are the
        group commit; ``append_many`` would write past it)."""
        return self.store

    async def _submit(self, request: OrderRequest) -> OrderIntent | OrderDenied:
        result = await self.router.submit(request)
        self._results[request.bot].append(result)
        await self.pump()
        return result

    async def _cancel(self, req: CancelAll) -> None:
        await self.router.cancel_open(bot=req.bot, account=req.account, symbol=req.symbol,
                                      reason=req.reason)
        await self.pump()

    async def pump(self) -> None:
        """Apply every pending paper-broker report and hand fills to their bots."""
        for broker in self.brokers.values():
            if not broker.has_reports():
                continue
            for report in broker.pending_reports():
                stored = await self.router.on_venue_event(report)
                if type(stored) is Fill:
                    self.fills.append(stored)
                    self._fresh = True
                    runner = self.bots.get(stored.bot)
                    if runner is not None:
                        runner.deliver_fill(stored)

    async def run(
        self, items: Iterable[MarketData], *, progress: Callable[[int], None] | None = None,
        progress_every: int = 1000,
    ) -> BacktestResult:
        """Replay ``items`` (in timestamp order) through every bot; return the results.

        Args:
            items: bars/trades in timestamp order.
            progress: called with the number of items done every ``progress_every`` items
                and once at the end.
            progress_every: items between progress calls.
        """
        n = 0
        try:
            for runner in self.bots.values():
                await runner.start()
            step = self._step
            if progress is None:
                for n, item in enumerate(items, 1):  # noqa: B007 - n is the count after
                    await step(item)
            else:
                for n, item in enumerate(items, 1):
                    await step(item)
                    if n % progress_every == 0:
                        progress(n)
        finally:
            for runner in self.bots.values():
                await runner.finish()
            await self.pump()
            await self.store.close()
        if progress is not None:
            progress(n)
        return BacktestResult(
            items=n, bots=self._bot_results(), last_seq=self.store.last_seq,
            start_equity=self.start_equity, final_equity=self.equity(), curve=self.curve,
            fills=list(self.fills))

    async def _step(self, item: MarketData) -> None:
        clock = self.clock
        brokers = self._broker_list
        if type(item) is Bar:
            ts = item.ts_ns + item.interval_ns
            if item.ts_ns > clock.now_ns():
                clock.set(item.ts_ns)  # fills at the open are stamped at the open
            for broker in brokers:
                broker.on_bar(item)
            price = item.close
        else:
            assert isinstance(item, Trade)
            ts = item.ts_ns
            if ts > clock.now_ns():
                clock.set(ts)
            price = item.price
            for broker in brokers:
                broker.on_price(item.symbol, price, ts)
        for broker in brokers:
            if broker.has_reports():
                await self.pump()
                break
        if ts > clock.now_ns():
            clock.set(ts)
        sym = item.symbol
        self.marks[sym] = price
        await self.router.on_market_data(sym, price, ts)
        for runner in self._by_symbol.get(sym, ()):
            await runner.handle(item)  # its submits and cancels pump their own reports
        self._mark(ts, sym, price)

    def equity(self) -> Decimal:
        """Starting cash + Σ positions' realized − fees + unrealized at the last prices."""
        total = self.start_equity
        marks = self.marks
        for p in self.proj.positions.values():
            total += p.realized - p.fees + p.unrealized(marks.get(p.symbol))
        return total

    def _mark(self, ts: int, sym: str, price: Decimal) -> None:
        """Append the equity after an item of ``sym`` at ``price``: O(1) per item, and O(1)
        per fill. Equity is cash + Σ net quantity × mark over the symbols held: the same sum
        as :meth:`equity` (realized − fees + unrealized, by cost-basis accounting). Cash and
        quantities are kept exact (Decimal) and counted after fills; the market values are
        floats (the curve is float; the exact final equity is :meth:`equity`)."""
        if self._fresh:
            self._count_fills()
        held = self._held
        if held:
            mine = held.get(sym)
            if mine is not None:
                now = mine[0] * float(price)
                self._equity += now - mine[1]
                mine[1] = now
        value, exposed = self._equity, self._exposed
        curve = self.curve
        times = curve.ts_ns
        if times and times[-1] == ts:
            curve.equity[-1], curve.exposed[-1] = value, exposed
        else:
            times.append(ts)
            curve.equity.append(value)
            curve.exposed.append(exposed)

    def _count_fills(self) -> None:
        """Count the fills since the last mark into the cash and the symbols' quantities,
        re-value the symbols they moved at their marks (a symbol without a mark yet: at its
        fill price), and note which of their positions are open."""
        fills, qtys, held, marks = self.fills, self._qty, self._held, self.marks
        positions, open_ = self.proj.positions, self._open
        cash = self._cash
        moved: dict[str, Decimal] = {}
        for i in range(self._seen, len(fills)):
            f = fills[i]
            dq = f.qty if f.side == _BUY else -f.qty  # == as in Position.apply
            cash -= dq * f.price
            if f.commission and f.commission_currency == f.currency:
                cash -= f.commission
            qtys[f.symbol] = qtys.get(f.symbol, _ZERO) + dq
            moved[f.symbol] = f.price
            key = (f.bot, f.account, f.symbol)
            if positions[key].qty:
                open_.add(key)
            else:
                open_.discard(key)
        self._seen, self._cash, self._fresh = len(fills), cash, False
        self._exposed = bool(open_)
        for symbol, last in moved.items():
            q = qtys[symbol]
            if q:
                qf = float(q)
                held[symbol] = [qf, qf * float(marks.get(symbol, last))]
            else:
                held.pop(symbol, None)
        self._equity = float(cash) + sum(v[1] for v in held.values())

    def _bot_results(self) -> dict[str, BotResult]:
        out = {}
        for name, r in self.bots.items():
            results = self._results[name]
            positions = [p for p in self.proj.positions.values() if p.bot == name]
            out[name] = BotResult(
                bot=name, state=str(r.state), requests=len(r.requests),
                intents=sum(isinstance(x, OrderIntent) for x in results),
                denials=sum(isinstance(x, OrderDenied) for x in results),
                fills=sum(p.fills for p in positions),
                realized=sum((p.realized for p in positions), Decimal(0)),
                unrealized=sum((p.unrealized() for p in positions), Decimal(0)),
                fees=sum((p.fees for p in positions), Decimal(0)),
                error=f"{r.error.error_type}: {r.error.message}" if r.error else "",
            )
        return out


async def run_backtest(
    bots: Sequence[BacktestBot], items: Iterable[MarketData], *, store: EventStore,
    risk: RiskConfig, accounts: Mapping[str, Mapping[str, Any]] | None = None,
    clock: SimClock | None = None, hook_budget_s: float = 0.5,
    progress: Callable[[int], None] | None = None, write_batch: int | None = WRITE_BATCH,
    workers: WorkerPool | None = None,
) -> BacktestResult:
    """Backtest ``bots`` over ``items`` on the live order path.

    Args:
        bots: the bots (each trades its ``spec.symbols``; items of other symbols skip it).
        items: bars/trades in timestamp order (e.g. a :class:`~qtd.feeds.HistoricalFeed`).
        store: a fresh event store for the run (every event lands there).
        risk: risk config.
        accounts: paper broker settings per account (keyword arguments of
            :class:`~qtd.brokers.paper.PaperBroker`: ``cash``, ``slippage_bps``,
            ``commission_bps``, ``commission_per_unit``, ``max_fill_qty``, ``fill_at``,
            ``latency_ns``); every bot's account gets a paper broker.
        clock: simulated clock (default: starts at 0 and follows the items).
        hook_budget_s: wall-time budget of one strategy hook, seconds.
        progress: called with the number of items done, every 1,000 items and at the end.
        write_batch: events per store transaction (the last one is fsynced); None: all
            of them in one, at the end, in-process (see :class:`WriteBehindStore`).
        workers: worker pool for the bots given as a ``StrategyRef`` (see
            :class:`BacktestBot`); the caller closes it.

    Raises:
        ValueError: a bot given as a ``StrategyRef`` and no ``workers``.
    """
    clock = clock or SimClock()
    settings = dict(accounts or {})
    brokers = {
        acct: PaperBroker(account=acct, node=store.node, clock=clock, **settings.get(acct, {}))
        for acct in {b.spec.account for b in bots}
    }
    bt = Backtest(store=store, risk=risk, clock=clock, brokers=brokers,
                  hook_budget_s=hook_budget_s, write_batch=write_batch, workers=workers)
    for b in bots:
        bt.add(b)
    return await bt.run(items, progress=progress)
