"""Backtest on the live code path: the agent's own bot runner, risk engine, order router,
order lifecycle and event store, fed by a historical feed, a paper broker and a simulated
clock. Nothing here decides, checks or fills an order: it only drives time.

Per market-data item (bars at their close time, trades at their time), in timestamp order:

1. the :class:`~qtd.clock.SimClock` moves to the item's availability time;
2. the paper broker sees the price (bar close or trade price) and fills resting orders it
   crosses; its reports go through :meth:`OrderRouter.on_venue_event` (stored, projected,
   fed to the risk engine) and fills reach their bot;
3. the risk engine gets the mark (staleness, PnL breakers);
4. each bot trading the symbol processes the item (hooks run in the same quarantined runner
   as live); its order requests go to :meth:`OrderRouter.submit` — risk check, write-ahead
   intent, paper broker — and the resulting reports are pumped before the next item.

Market orders therefore fill at the price of the bar that triggered them (the close), moved
by the paper broker's slippage; see :mod:`qtd.brokers.paper` for the fill rules.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

import msgspec

from qtd.brokers.paper import PaperBroker
from qtd.clock import SimClock
from qtd.events import Fill, OrderDenied, OrderIntent
from qtd.execution import OrderRouter
from qtd.feeds import Bar, MarketData, available_ns
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


class BacktestResult(msgspec.Struct, frozen=True, kw_only=True):
    """Outcome of :func:`run_backtest`: items replayed and each bot's result."""

    items: int
    bots: dict[str, BotResult]
    last_seq: int


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
        cids = [r.cid for r in self.proj.orders.open_orders(bot=req.bot, symbol=req.symbol)]
        await self.router.cancel_many(cids, f"strategy cancel_all ({req.bot})")
        await self.pump()

    async def pump(self) -> None:
        """Apply every pending paper-broker report and hand fills to their bots."""
        for broker in self.brokers.values():
            for report in broker.pending_reports():
                stored = await self.router.on_venue_event(report)
                if isinstance(stored, Fill) and stored.bot in self.bots:
                    self.bots[stored.bot].runner.deliver_fill(stored)

    async def run(self, items: Iterable[MarketData]) -> BacktestResult:
        """Replay ``items`` (in timestamp order) through every bot; return the results."""
        for d in self.bots.values():
            d.task = asyncio.ensure_future(d.runner.run(d.feed()))
        n = 0
        try:
            for item in items:
                n += 1
                await self._step(item)
        finally:
            for d in self.bots.values():
                d.queue.put_nowait(_END)
            await asyncio.gather(*(d.task for d in self.bots.values() if d.task is not None))
            await self.pump()
        return BacktestResult(items=n, bots=self._bot_results(), last_seq=self.store.last_seq)

    async def _step(self, item: MarketData) -> None:
        ts = available_ns(item)
        if ts > self.clock.now_ns():
            self.clock.set(ts)
        price = item.close if isinstance(item, Bar) else item.price
        for broker in self.brokers.values():
            broker.on_price(item.symbol, price, ts)
        await self.pump()
        await self.router.on_market_data(item.symbol, price, ts)
        for d in self._by_symbol.get(item.symbol, ()):
            await d.offer(item)
            await self.pump()

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
) -> BacktestResult:
    """Backtest ``bots`` over ``items`` on the live order path.

    Args:
        bots: the bots (each trades its ``spec.symbols``; items of other symbols skip it).
        items: bars/trades in timestamp order (e.g. a :class:`~qtd.feeds.HistoricalFeed`).
        store: a fresh event store for the run (every event lands there).
        risk: risk config.
        accounts: paper broker settings per account (``cash``, ``slippage_bps``,
            ``commission_bps``, ``max_fill_qty``); every bot's account gets a paper broker.
        clock: simulated clock (default: starts at 0 and follows the items).
        hook_budget_s: wall-time budget of one strategy hook, seconds.
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
    return await bt.run(items)
