"""Smoke backtest for admission: run the bot on bundled real data and require no exception.

The bot runs in the real :class:`~qtd.runner.BotRunner` (same hook wrapper and time budget
as live) on the first ``smoke.max_bars`` bars (or trades) of the bot's ``smoke.dataset``,
restamped with the bot's first symbol. Orders go to :class:`SmokeBroker`, an in-memory fill
sink: market orders fill at once at the decision price; limit orders fill at the limit when
marketable, else rest until a later bar trades through the limit. Every order request is
also checked against the bot's order caps (quantity and notional at its limit or decision
price), so a strategy that would size past its risk limits fails admission.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from itertools import count, islice
from typing import Any

import msgspec

from qtd.admit.limits import OrderCaps
from qtd.admit.problems import Problem
from qtd.clock import SimClock
from qtd.data import dataset_info, load_dataset
from qtd.errors import ConfigError
from qtd.events import Fill, OrderType, Side
from qtd.feeds import Bar, MarketData, available_ns, ns_to_iso
from qtd.orders import OrderRequest
from qtd.runner import BotRunner, BotSpec
from qtd.strategy import CancelAll, Strategy


class SmokeResult(msgspec.Struct, frozen=True, kw_only=True):
    """Outcome of a smoke run: items replayed, orders, fills, final bot state."""

    items: int = 0
    orders: int = 0
    fills: int = 0
    state: str = ""


class SmokeBroker:
    """In-memory fills for smoke runs (see the module docstring)."""

    def __init__(self, clock: SimClock, caps: OrderCaps | None) -> None:
        self.clock, self.caps = clock, caps
        self.runner: BotRunner | None = None
        self.resting: list[OrderRequest] = []
        self.fills = 0
        self.violations: dict[str, tuple[int, Any]] = {}  # rule -> (count, first value)
        self._ids = count(1)

    async def submit(self, req: OrderRequest) -> None:
        self._check(req)
        last = req.decision_price
        if req.order_type is OrderType.MARKET or last is None:
            self._fill(req, last or req.limit_price or Decimal(1))
        elif _marketable(req, last, last):
            self._fill(req, req.limit_price or last)
        else:
            self.resting.append(req)

    async def cancel(self, req: CancelAll) -> None:
        self.resting = [r for r in self.resting if req.symbol not in (None, r.symbol)]

    def on_bar(self, bar: Bar) -> None:
        """Fill resting limit orders the bar traded through."""
        keep = []
        for req in self.resting:
            if req.symbol == bar.symbol and _marketable(req, bar.low, bar.high):
                self._fill(req, req.limit_price or bar.close)
            else:
                keep.append(req)
        self.resting = keep

    def _fill(self, req: OrderRequest, price: Decimal) -> None:
        n = next(self._ids)
        now = self.clock.now_ns()
        fill = Fill(node="smoke", bot=req.bot, ts_event=now, ts_init=now,
                    client_order_id=f"smoke-{n}", trade_id=f"smoke-{n}", account=req.account,
                    venue=req.venue, symbol=req.symbol, side=req.side, qty=req.qty, price=price)
        self.fills += 1
        if self.runner is not None:
            self.runner.deliver_fill(fill)

    def _check(self, req: OrderRequest) -> None:
        caps = self.caps
        if caps is None:
            return
        price = req.limit_price or req.decision_price
        if caps.qty is not None and req.qty > Decimal(str(caps.qty)):
            self._violate(f"order qty exceeds max_order_qty {caps.qty} ({caps.source})", req.qty)
        if caps.notional is not None and price is not None:
            notional = req.qty * price
            if notional > Decimal(str(caps.notional)):
                self._violate(f"order notional exceeds max_order_notional {caps.notional} "
                              f"({caps.source})", float(notional))

    def _violate(self, rule: str, value: Any) -> None:
        n, first = self.violations.get(rule, (0, value))
        self.violations[rule] = (n + 1, first)


def _marketable(req: OrderRequest, low: Decimal, high: Decimal) -> bool:
    limit = req.limit_price
    assert limit is not None
    return low <= limit if req.side is Side.BUY else high >= limit


def _feed(items: list[MarketData], symbol: str, broker: SmokeBroker) -> Iterator[MarketData]:
    """Replay in order, moving the clock to each item's availability time (a bar at its
    close) and matching resting limits just before the strategy sees the bar."""
    for item in items:
        item = msgspec.structs.replace(item, symbol=symbol)
        broker.clock.set(available_ns(item))
        if type(item) is Bar:
            broker.on_bar(item)
        yield item


def smoke_items(dataset: str, max_items: int, file: str) -> tuple[list[Any], list[Problem]]:
    """The first ``max_items`` bars or trades of a bundled data set (problem if unknown)."""
    try:
        info = dataset_info(dataset)
    except ConfigError as exc:
        return [], [Problem(file=file, field="smoke.dataset", value=dataset, rule=str(exc.rule))]
    return list(islice(load_dataset(info.name), max_items)), []


async def smoke_run(
    cls: type[Strategy], params: Strategy.Params, spec: BotSpec, *, items: list[Any],
    hook_budget_s: float, caps: OrderCaps | None, file: str,
) -> tuple[SmokeResult, list[Problem]]:
    """Run the smoke backtest over ``items``; return its result and problems (hook error or
    overrun with the traceback's last lines, order-cap violations)."""
    clock = SimClock()
    broker = SmokeBroker(clock, caps)
    runner = BotRunner(cls, params, spec, clock=clock, submit=broker.submit,
                       cancel=broker.cancel, node="smoke", hook_budget_s=hook_budget_s)
    broker.runner = runner
    state = await runner.run(_feed(items, spec.symbols[0], broker))
    problems = []
    if runner.error is not None:
        err = runner.error
        where = err.traceback.strip().splitlines()[-3:] if err.traceback else []
        problems.append(Problem(
            file=file, field=f"smoke.{err.hook}", value=ns_to_iso(clock.now_ns()),
            rule=f"smoke backtest: {err.error_type}: {err.message}"
                 + (f" [{' | '.join(s.strip() for s in where)}]" if where else "")))
    for rule, (n, first) in broker.violations.items():
        problems.append(Problem(file=file, field="params", value=first,
                                rule=f"smoke backtest: {rule}; {n} order(s)"))
    result = SmokeResult(items=len(items), orders=len(runner.requests), fills=broker.fills,
                         state=str(state))
    return result, problems
