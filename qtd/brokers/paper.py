"""In-process paper broker shared by backtest, paper and shadow modes.

Prices arrive two ways; each symbol follows the rules of the way it was last priced.

**Bars** (:meth:`PaperBroker.on_bar`, backtests). An order is *eligible* from
``submit time + latency_ns``. Resting orders are matched against each later bar, then the
bar's close becomes the last price:

* MARKET, ``fill_at="next_open"`` (default): fills at the open of the first bar that opens
  at or after the order became eligible — a decision taken at a bar's close fills at the
  next bar's open. ``fill_at="close"``: fills at the close of the bar it was decided on
  (at submission; with latency, at the close of the first bar closing after eligibility).
* LIMIT (buy at ``limit_price`` or lower, sell at it or higher): fills on a later bar whose
  range reaches the limit (buy: low ≤ limit; sell: high ≥ limit) at the limit, or at the
  open if the bar opens through it (buy: open ≤ limit; sell: open ≥ limit). Never on the
  bar it was decided on.
* STOP (``stop_price``; buy stops trigger at or above it, sell stops at or below): on a
  later bar whose range reaches the stop it fills at the stop, or at the open if the bar
  gaps through (buy: open ≥ stop; sell: open ≤ stop); then it behaves as a market order.

**Ticks / last prices** (:meth:`PaperBroker.on_price`, live paper and shadow mode, trade
replays): MARKET orders fill at the last price (at submission, or with latency at the first
price at or after eligibility); LIMIT orders fill when the last price reaches the limit, at
the better of limit and last price; STOP orders trigger when the last price reaches the
stop and fill at the last price.

Costs, in the quote currency:

* slippage: MARKET and STOP fills move ``slippage_bps`` against the order
  (``price × (1 ± slippage_bps / 10,000)``: buys pay more, sells get less); LIMIT fills
  never slip past their limit.
* commission per fill: ``qty × price × commission_bps / 10,000 + qty × commission_per_unit``
  (``commission_bps`` is the rate of notional in basis points: 20 bps = 0.2 %).
* ``max_fill_qty`` (instrument units) caps each fill, so an order fills in parts across
  bars or price updates (partial fills); ``None`` fills whole orders.

A MARKET order for a symbol with no price yet is rejected (``NO_PRICE``). The account has
no margin model: cash may go negative. Every call checks its risk-engine token first.
Reports (OrderAccepted, OrderRejected, Fill, OrderCanceled) go to an in-memory queue read
by :meth:`reports` (or :meth:`pending_reports` for synchronous drivers).

What it remembers of past orders (``submitted``, ``cancels``, ``fills`` and the orders
:meth:`PaperBroker.get_order` answers for) is everything by default (a backtest is finite);
a long-running agent bounds it with ``history``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Literal

from qtd.brokers.base import (
    AccountSnapshot,
    OrderStatusReport,
    SubmitToken,
    verify_cancel_token,
    verify_token,
)
from qtd.clock import Clock
from qtd.events import (
    AnyEvent,
    Fill,
    OrderAccepted,
    OrderCanceled,
    OrderIntent,
    OrderRejected,
    OrderType,
    PositionSnapshot,
    Side,
)
from qtd.feeds.bars import Bar
from qtd.orders import OrderBook

_BPS = Decimal(10_000)
_ZERO = Decimal(0)
FillAt = Literal["next_open", "close"]


class _Resting:
    __slots__ = ("eligible_ns", "intent", "leaves", "triggered", "voi")

    def __init__(self, intent: OrderIntent, voi: str, eligible_ns: int) -> None:
        self.intent, self.voi, self.leaves = intent, voi, intent.qty
        self.eligible_ns = eligible_ns
        self.triggered = intent.order_type is not OrderType.STOP


class PaperBroker:
    """A simulated venue account (see the module docstring for the fill rules).

    Args:
        account: account name used in events.
        node: node name used in events.
        clock: event timestamps (UTC ns).
        venue: venue name (default ``"paper"``).
        cash: starting cash, quote currency.
        slippage_bps: adverse price move applied to market and stop fills, bps.
        commission_bps: commission per fill, bps of notional.
        commission_per_unit: commission per instrument unit filled, quote currency.
        max_fill_qty: largest single fill, instrument units (None: fill whole orders).
        fill_at: bar-priced market orders fill at the ``"next_open"`` or this bar's
            ``"close"``.
        latency_ns: delay between submission and the order becoming fillable, ns.
        history: keep the latest this many entries of ``submitted``, ``cancels`` and
            ``fills`` (cut in batches: up to about twice as many are held), and this many
            done orders for :meth:`get_order`, which answers None for older ones, like a
            venue past its order retention; ``None`` (default) keeps everything. Resting
            orders are always kept.

    Raises:
        ValueError: unknown ``fill_at``, negative costs, latency or ``history``.
    """

    def __init__(
        self, *, account: str, node: str, clock: Clock, venue: str = "paper",
        cash: Decimal = Decimal(100_000), slippage_bps: Decimal = _ZERO,
        commission_bps: Decimal = _ZERO, commission_per_unit: Decimal = _ZERO,
        max_fill_qty: Decimal | None = None, fill_at: FillAt = "next_open",
        latency_ns: int = 0, history: int | None = None,
    ) -> None:
        if fill_at not in ("next_open", "close"):
            raise ValueError(f"fill_at must be 'next_open' or 'close', got {fill_at!r}")
        if min(slippage_bps, commission_bps, commission_per_unit) < 0 or latency_ns < 0:
            raise ValueError("slippage, commission and latency must be >= 0")
        if history is not None and history < 0:
            raise ValueError(f"history={history!r}: must be >= 0 entries or None")
        self.account, self.venue, self.node, self.clock = account, venue, node, clock
        self.cash = cash
        self.slippage_bps, self.commission_bps = slippage_bps, commission_bps
        self.commission_per_unit = commission_per_unit
        self.max_fill_qty = max_fill_qty
        self.fill_at: FillAt = fill_at
        self.latency_ns = latency_ns
        self.prices: dict[str, Decimal] = {}
        self.resting: dict[str, _Resting] = {}
        self.holdings: dict[str, Decimal] = {}
        self.submitted: list[OrderIntent] = []
        self.cancels: list[str] = []
        self.fills: list[Fill] = []
        self._bar_priced: set[str] = set()  # symbols whose last price came from on_bar
        self.history = history
        self._book = OrderBook(history)  # orders it saw, for get_order (built on demand)
        self._unbooked: list[AnyEvent | OrderIntent] = []  # not yet applied to _book
        self._reports: deque[AnyEvent] = deque()  # queued for reports() / pending_reports()
        self._ready = asyncio.Event()  # set while _reports is not empty
        self._ids = itertools.count(1)
        self._trades = itertools.count(1)

    # --- Broker Protocol ------------------------------------------------------------------

    async def submit(self, intent: OrderIntent, token: SubmitToken) -> None:
        """Accept (and maybe fill) ``intent``.

        Raises:
            TokenError: forged, reused or mismatched token; nothing happens.
        """
        verify_token(token, intent)
        now = self.clock.now_ns()
        self.submitted.append(intent)
        self._unbooked.append(intent)
        price = self.prices.get(intent.symbol)
        if intent.order_type is OrderType.MARKET and price is None:
            self._put(OrderRejected(
                node=self.node, bot=intent.bot, ts_event=now, ts_init=now,
                client_order_id=intent.client_order_id,
                reason=f"no price for {intent.symbol}", code="NO_PRICE",
            ))
            return
        eligible = now + self.latency_ns
        order = _Resting(intent, f"P{next(self._ids)}", eligible)
        self._put(OrderAccepted(node=self.node, bot=intent.bot, ts_event=now, ts_init=now,
                                client_order_id=intent.client_order_id,
                                venue_order_id=order.voi))
        self.resting[intent.client_order_id] = order
        if price is None or self.latency_ns:
            return
        if intent.symbol not in self._bar_priced:
            self._match(order, price)
        elif intent.order_type is OrderType.MARKET and self.fill_at == "close":
            self._fill(order, self._qty(order), self._slipped(price, intent.side))

    async def cancel(self, client_order_id: str, token: SubmitToken) -> None:
        """Cancel a resting order (no-op if it is already done).

        Raises:
            TokenError: missing or wrong cancel token.
        """
        verify_cancel_token(token, client_order_id)
        self.cancels.append(client_order_id)
        order = self.resting.pop(client_order_id, None)
        if order is not None:
            self._canceled(order)

    async def cancel_all(self, token: SubmitToken) -> list[str]:
        """Cancel every resting order (token minted for ``"*"``)."""
        verify_cancel_token(token, "*")
        cids = list(self.resting)
        for cid in cids:
            order = self.resting.pop(cid)
            self.cancels.append(cid)
            self._canceled(order)
        return cids

    async def open_orders(self) -> list[OrderIntent]:
        return [o.intent for o in self.resting.values()]

    async def positions(self) -> list[PositionSnapshot]:
        now = self.clock.now_ns()
        return [
            PositionSnapshot(node=self.node, ts_event=now, ts_init=now, account=self.account,
                             symbol=sym, qty=qty, avg_price=Decimal(0), source="broker",
                             mark_price=self.prices.get(sym))
            for sym, qty in self.holdings.items() if qty
        ]

    async def account_info(self) -> AccountSnapshot:
        value = sum((q * self.prices.get(s, Decimal(0)) for s, q in self.holdings.items()),
                    Decimal(0))
        return AccountSnapshot(account=self.account, cash=self.cash, equity=self.cash + value)

    async def get_order(self, client_order_id: str) -> OrderStatusReport | None:
        """What this simulated venue knows of one order (None if it never saw it, or it is
        a done order older than ``history``)."""
        self._book_reports()
        rec = self._book.get(client_order_id)
        if rec is None:
            return None
        return OrderStatusReport(
            client_order_id=rec.cid, state=rec.state, venue_status=rec.state.value,
            filled_qty=rec.filled_qty, avg_price=rec.avg_fill_price,
            venue_order_id=rec.venue_order_id, symbol=rec.symbol, side=rec.side, qty=rec.qty,
            ts_ns=rec.ts_last,
        )

    async def fills_since(self, ts_ns: int) -> list[Fill]:
        """Fills at or after ``ts_ns`` (UTC ns), oldest first."""
        return [f for f in self.fills if f.ts_event >= ts_ns]

    async def reports(self) -> AsyncIterator[AnyEvent]:
        reports, ready = self._reports, self._ready
        while True:
            while not reports:
                ready.clear()
                await ready.wait()
            yield reports.popleft()

    # --- simulation -----------------------------------------------------------------------

    def on_price(self, symbol: str, price: Decimal, ts_ns: int) -> None:
        """New last price (quote currency) for ``symbol`` at ``ts_ns`` (UTC ns): fill the
        eligible resting orders it reaches (tick rules, module docstring)."""
        self.prices[symbol] = price
        self._bar_priced.discard(symbol)
        for order in [o for o in self.resting.values() if o.intent.symbol == symbol]:
            if not self.latency_ns or order.eligible_ns <= ts_ns:
                self._match(order, price)

    def on_bar(self, bar: Bar) -> None:
        """A finished bar of ``bar.symbol``: fill resting orders by the bar rules (module
        docstring), then take its close as the last price. Call it with the clock at the
        bar's open (fills are stamped with the clock)."""
        sym = bar.symbol
        if self.resting:
            for order in [o for o in self.resting.values() if o.intent.symbol == sym]:
                self._match_bar(order, bar)
        self.prices[sym] = bar.close
        self._bar_priced.add(sym)

    def has_reports(self) -> bool:
        """Whether reports are queued (a cheap check before :meth:`pending_reports`)."""
        return bool(self._reports)

    def pending_reports(self) -> list[AnyEvent]:
        """Take every queued report now (for synchronous drivers such as backtests)."""
        out = list(self._reports)
        self._reports.clear()
        return out

    def _match(self, order: _Resting, last: Decimal) -> None:
        it = order.intent
        buy = it.side is Side.BUY
        if it.order_type is OrderType.LIMIT:
            lp = it.limit_price
            assert lp is not None
            if (buy and last > lp) or (not buy and last < lp):
                return
            price = min(lp, last) if buy else max(lp, last)
        else:
            if not order.triggered:
                sp = it.stop_price
                assert sp is not None
                if (buy and last < sp) or (not buy and last > sp):
                    return
                order.triggered = True
            price = self._slipped(last, it.side)
        self._fill(order, self._qty(order), price)

    def _match_bar(self, order: _Resting, bar: Bar) -> None:
        it = order.intent
        kind = it.order_type
        if kind is OrderType.MARKET:
            if self.fill_at == "close":
                if bar.ts_ns + bar.interval_ns >= order.eligible_ns:
                    self._fill(order, self._qty(order), self._slipped(bar.close, it.side))
            elif bar.ts_ns >= order.eligible_ns:
                self._fill(order, self._qty(order), self._slipped(bar.open, it.side))
            return
        if bar.ts_ns < order.eligible_ns:
            return
        price = _limit_price(it, bar) if kind is OrderType.LIMIT else self._stop_price(order, bar)
        if price is not None:
            self._fill(order, self._qty(order), price)

    def _stop_price(self, order: _Resting, bar: Bar) -> Decimal | None:
        it = order.intent
        if order.triggered:  # triggered on an earlier bar, partly filled: market at the open
            return self._slipped(bar.open, it.side)
        sp = it.stop_price
        assert sp is not None
        buy = it.side is Side.BUY
        if (bar.open >= sp) if buy else (bar.open <= sp):
            price = bar.open  # gapped through the stop
        elif (bar.high >= sp) if buy else (bar.low <= sp):
            price = sp
        else:
            return None
        order.triggered = True
        return self._slipped(price, it.side)

    def _slipped(self, price: Decimal, side: Side) -> Decimal:
        if not self.slippage_bps:
            return price
        slip = price * self.slippage_bps / _BPS
        return price + slip if side is Side.BUY else price - slip

    def _qty(self, order: _Resting) -> Decimal:
        cap = self.max_fill_qty
        return order.leaves if cap is None else min(order.leaves, cap)

    def _fill(self, order: _Resting, qty: Decimal, price: Decimal) -> None:
        it = order.intent
        sign = 1 if it.side is Side.BUY else -1
        fee = qty * price * self.commission_bps / _BPS + qty * self.commission_per_unit
        order.leaves -= qty
        if not order.leaves:
            del self.resting[it.client_order_id]
        self.holdings[it.symbol] = self.holdings.get(it.symbol, Decimal(0)) + sign * qty
        self.cash -= sign * qty * price + fee
        now = self.clock.now_ns()
        self._put(Fill(
            node=self.node, bot=it.bot, ts_event=now, ts_init=now,
            client_order_id=it.client_order_id,
            trade_id=f"T{next(self._trades)}", account=self.account, venue=self.venue,
            symbol=it.symbol, side=it.side, qty=qty, price=price, commission=fee,
            venue_order_id=order.voi,
        ))

    def _canceled(self, order: _Resting) -> None:
        now = self.clock.now_ns()
        self._put(OrderCanceled(node=self.node, bot=order.intent.bot, ts_event=now,
                                ts_init=now, client_order_id=order.intent.client_order_id,
                                venue_order_id=order.voi))

    def _book_reports(self) -> None:
        for event in self._unbooked:
            self._book.apply(event)
        self._unbooked.clear()

    def _forget(self) -> None:
        """With ``history``: book what is unbooked (its order book retires old done
        orders) and cut the lists down to their latest ``history`` entries. Called when
        the unbooked reports exceed ``history``, so the work is a few steps per report."""
        keep = self.history
        assert keep is not None
        self._book_reports()
        for past in (self.submitted, self.cancels, self.fills):
            if len(past) > keep:
                del past[:len(past) - keep]

    def _put(self, event: AnyEvent) -> None:
        if self.history is not None and len(self._unbooked) > self.history:
            self._forget()
        self._unbooked.append(event)
        if isinstance(event, Fill):
            self.fills.append(event)
        self._reports.append(event)
        self._ready.set()


def _limit_price(intent: OrderIntent, bar: Bar) -> Decimal | None:
    """Bar fill price of a limit order: the open if the bar opens through the limit, the
    limit if the bar's range reaches it, else None."""
    lp = intent.limit_price
    assert lp is not None
    if intent.side is Side.BUY:
        return bar.open if bar.open <= lp else (lp if bar.low <= lp else None)
    return bar.open if bar.open >= lp else (lp if bar.high >= lp else None)
