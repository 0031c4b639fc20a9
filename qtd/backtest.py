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
3. each bot trading the symbol processes the item (hooks run in the same quarantined runner
   as live); its order requests go to :meth:`OrderRouter.submit` — risk check, write-ahead
   intent, paper broker — and the resulting reports are pumped before the next item;
4. the run's equity is marked to market (projections at the last prices) for the curve.

So with the default ``fill_at="next_open"`` a decision taken on a bar's close fills at the
next bar's open; see :mod:`qtd.brokers.paper` for every fill rule.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

import msgspec

from qtd.brokers.paper import PaperBroker
from qtd.clock import SimClock
from qtd.events import Fill, OrderDenied, OrderIntent
from qtd.execution import OrderRouter
from qtd.feeds import Bar, MarketData, Trade, available_ns
from qtd.orders import ClientOrderIds, OrderRequest
from qtd.projections import Projections
from qtd.risk.config import RiskConfig
from qtd.risk.engine import RiskEngine
from qtd.runner import BotRunner, BotSpec, BotState
from qtd.store import EventStore
from qtd.strategy import CancelAll, Strategy

_END: Final = object()


class BacktestBot(msgspec.Struct, frozen=True, kw_only=True):
    """One bot to backtest: its admitted strategy class, params and identity."""

    strategy: type[Strategy]
    params: Any  # an instance of strategy.Params
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


class _Driven:
    """A runner fed one item at a time through a queue (so the driver knows when the bot
    has finished with an item: the feed is asked for the next one)."""

    def __init__(self, runner: BotRunner) -> None:
        self.runner = runner
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.task: asyncio.Task[BotState] | None = None

    async def feed(self) -> Any:
        while True:
            item = await self.queue.get()
            if item is _END:
                self.queue.task_done()
                return
            yield item
            self.queue.task_done()

    async def offer(self, item: MarketData) -> None:
        """Give the bot ``item`` and wait until it is done with it (or stopped running)."""
        assert self.task is not None
        if self.task.done():
            return
        self.queue.put_nowait(item)
        joined = asyncio.ensure_future(self.queue.join())
        await asyncio.wait([joined, self.task], return_when=asyncio.FIRST_COMPLETED)
        joined.cancel()


class Backtest:
    """Wires the live order path for a backtest (see the module docstring).

    Args:
        store: event store receiving every event of the run (use a fresh file per run).
        risk: risk config (the same file live uses).
        clock: the simulated clock.
        brokers: paper broker per account name (they must share ``clock``).
        hook_budget_s: wall-time budget of one strategy hook, seconds.
    """

    def __init__(
        self, *, store: EventStore, risk: RiskConfig, clock: SimClock,
        brokers: Mapping[str, PaperBroker], hook_budget_s: float = 0.5,
    ) -> None:
        self.store, self.clock, self.brokers = store, clock, dict(brokers)
        self.hook_budget_s = hook_budget_s
        self.proj = Projections()
        self.risk = RiskEngine(risk, self.proj, clock, store.node)
        self.router = OrderRouter(
            store=store, clock=clock, risk=self.risk, cids=ClientOrderIds(store),
            brokers=self.brokers, projections=self.proj,
        )
        self.bots: dict[str, _Driven] = {}
        self._by_symbol: dict[str, list[_Driven]] = {}
        self._results: dict[str, list[OrderIntent | OrderDenied]] = {}
        self.start_equity = sum((b.cash for b in self.brokers.values()), Decimal(0))
        self.marks: dict[str, Decimal] = {}
        self.curve = EquityCurve()
        self.fills: list[Fill] = []

    def add(self, bot: BacktestBot) -> BotRunner:
        """Add a bot; returns its runner."""
        name = bot.spec.name
        self._results[name] = []
        runner = BotRunner(
            bot.strategy, bot.params, bot.spec, clock=self.clock,
            submit=self._submit, cancel=self._cancel, emit=self.store.append,
            node=self.store.node, hook_budget_s=self.hook_budget_s, params_hash=bot.params_hash,
        )
        driven = _Driven(runner)
        self.bots[name] = driven
        for sym in bot.spec.symbols:
            self._by_symbol.setdefault(sym, []).append(driven)
        return runner

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
            for report in broker.pending_reports():
                stored = await self.router.on_venue_event(report)
                if isinstance(stored, Fill):
                    self.fills.append(stored)
                    if stored.bot in self.bots:
                        self.bots[stored.bot].runner.deliver_fill(stored)

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
        for d in self.bots.values():
            d.task = asyncio.ensure_future(d.runner.run(d.feed()))
        n = 0
        try:
            for item in items:
                n += 1
                await self._step(item)
                if progress is not None and n % progress_every == 0:
                    progress(n)
        finally:
            for d in self.bots.values():
                d.queue.put_nowait(_END)
            await asyncio.gather(*(d.task for d in self.bots.values() if d.task is not None))
            await self.pump()
        if progress is not None:
            progress(n)
        return BacktestResult(
            items=n, bots=self._bot_results(), last_seq=self.store.last_seq,
            start_equity=self.start_equity, final_equity=self.equity(), curve=self.curve,
            fills=list(self.fills))

    async def _step(self, item: MarketData) -> None:
        ts = available_ns(item)
        if type(item) is Bar:
            if item.ts_ns > self.clock.now_ns():
                self.clock.set(item.ts_ns)  # fills at the open are stamped at the open
            for broker in self.brokers.values():
                broker.on_bar(item)
            price = item.close
        else:
            assert isinstance(item, Trade)
            if ts > self.clock.now_ns():
                self.clock.set(ts)
            price = item.price
            for broker in self.brokers.values():
                broker.on_price(item.symbol, price, ts)
        await self.pump()
        if ts > self.clock.now_ns():
            self.clock.set(ts)
        self.marks[item.symbol] = price
        await self.router.on_market_data(item.symbol, price, ts)
        for d in self._by_symbol.get(item.symbol, ()):
            await d.offer(item)
            await self.pump()
        self._mark(ts)

    def equity(self) -> Decimal:
        """Starting cash + Σ positions' realized − fees + unrealized at the last prices."""
        total = self.start_equity
        marks = self.marks
        for p in self.proj.positions.values():
            total += p.realized - p.fees + p.unrealized(marks.get(p.symbol))
        return total

    def _mark(self, ts: int) -> None:
        curve = self.curve
        eq = float(self.equity())
        exposed = any(p.qty for p in self.proj.positions.values())
        if curve.ts_ns and curve.ts_ns[-1] == ts:
            curve.equity[-1], curve.exposed[-1] = eq, exposed
        else:
            curve.ts_ns.append(ts)
            curve.equity.append(eq)
            curve.exposed.append(exposed)

    def _bot_results(self) -> dict[str, BotResult]:
        out = {}
        for name, d in self.bots.items():
            results = self._results[name]
            positions = [p for p in self.proj.positions.values() if p.bot == name]
            r = d.runner
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
    progress: Callable[[int], None] | None = None,
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
    """
    clock = clock or SimClock()
    settings = dict(accounts or {})
    brokers = {
        acct: PaperBroker(account=acct, node=store.node, clock=clock, **settings.get(acct, {}))
        for acct in {b.spec.account for b in bots}
    }
    bt = Backtest(store=store, risk=risk, clock=clock, brokers=brokers,
                  hook_budget_s=hook_budget_s)
    for b in bots:
        bt.add(b)
    return await bt.run(items, progress=progress)
