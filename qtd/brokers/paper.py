"""In-process paper broker: fills against prices fed with :meth:`PaperBroker.on_price`.

* MARKET orders fill at once at the last price, moved against the order by
  ``slippage_bps`` (buys pay more, sells get less); rejected when no price is known yet.
* LIMIT orders fill when the last price reaches the limit (buy: price ≤ limit, sell:
  price ≥ limit) at the better of limit and last price; otherwise they rest until a later
  :meth:`on_price` crosses them.
* ``max_fill_qty`` (instrument units) caps each fill, so an order fills in parts across
  price updates (partial fills); ``None`` fills whole orders.
* Commission is ``commission_bps`` of the fill notional, in the quote currency.

Every call checks its risk-engine token first. Reports (OrderAccepted, OrderRejected, Fill,
OrderCanceled) go to an in-memory queue read by :meth:`reports`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

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
from qtd.orders import OrderBook

_BPS = Decimal(10_000)


class _Resting:
    __slots__ = ("intent", "leaves", "voi")

    def __init__(self, intent: OrderIntent, voi: str) -> None:
        self.intent, self.voi, self.leaves = intent, voi, intent.qty


class PaperBroker:
    """A simulated venue account (see the module docstring for the fill rules).

    Args:
        account: account name used in events.
        node: node name used in events.
        clock: event timestamps (UTC ns).
        venue: venue name (default ``"paper"``).
        cash: starting cash, quote currency.
        slippage_bps: adverse price move applied to market fills, bps.
        commission_bps: commission per fill, bps of notional.
        max_fill_qty: largest single fill, instrument units (None: fill whole orders).
    """

    def __init__(
        self, *, account: str, node: str, clock: Clock, venue: str = "paper",
        cash: Decimal = Decimal(100_000), slippage_bps: Decimal = Decimal(0),
        commission_bps: Decimal = Decimal(0), max_fill_qty: Decimal | None = None,
    ) -> None:
        self.account, self.venue, self.node, self.clock = account, venue, node, clock
        self.cash = cash
        self.slippage_bps, self.commission_bps = slippage_bps, commission_bps
        self.max_fill_qty = max_fill_qty
        self.prices: dict[str, Decimal] = {}
        self.resting: dict[str, _Resting] = {}
        self.holdings: dict[str, Decimal] = {}
        self.submitted: list[OrderIntent] = []
        self.cancels: list[str] = []
        self.fills: list[Fill] = []
        self._book = OrderBook()  # every order it saw, for get_order
        self._queue: asyncio.Queue[AnyEvent] = asyncio.Queue()
        self._ids = itertools.count(1)
        self._trades = itertools.count(1)

    # --- Broker Protocol ------------------------------------------------------------------

    async def submit(self, intent: OrderIntent, token: SubmitToken) -> None:
        """Accept (and maybe fill) ``intent``.

        Raises:
            TokenError: forged, reused or mismatched token; nothing happens.
        """
        verify_token(token, intent)
        self.submitted.append(intent)
        self._book.apply(intent)
        price = self.prices.get(intent.symbol)
        if intent.order_type is OrderType.MARKET and price is None:
            self._put(OrderRejected(
                **self._base(intent.bot), client_order_id=intent.client_order_id,
                reason=f"no price for {intent.symbol}", code="NO_PRICE",
            ))
            return
        order = _Resting(intent, f"P{next(self._ids)}")
        self._put(OrderAccepted(**self._base(intent.bot), client_order_id=intent.client_order_id,
                                venue_order_id=order.voi))
        self.resting[intent.client_order_id] = order
        if price is not None:
            self._match(order, price)

    async def cancel(self, client_order_id: str, token: SubmitToken) -> None:
        """Cancel a resting order (no-op if it is already done).

        Raises:
            TokenError: missing or wrong cancel token.
        """
        verify_cancel_token(token, client_order_id)
        self.cancels.append(client_order_id)
        order = self.resting.pop(client_order_id, None)
        if order is not None:
            self._put(OrderCanceled(**self._base(order.intent.bot),
                                    client_order_id=client_order_id, venue_order_id=order.voi))

    async def cancel_all(self, token: SubmitToken) -> list[str]:
        """Cancel every resting order (token minted for ``"*"``)."""
        verify_cancel_token(token, "*")
        cids = list(self.resting)
        for cid in cids:
            order = self.resting.pop(cid)
            self.cancels.append(cid)
            self._put(OrderCanceled(**self._base(order.intent.bot), client_order_id=cid,
                                    venue_order_id=order.voi))
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
        """What this simulated venue knows of one order (None if it never saw it)."""
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
        while True:
            yield await self._queue.get()

    # --- simulation -----------------------------------------------------------------------

    def on_price(self, symbol: str, price: Decimal, ts_ns: int) -> None:
        """New last price (quote currency) for ``symbol``: fill resting orders it crosses."""
        self.prices[symbol] = price
        for order in [o for o in self.resting.values() if o.intent.symbol == symbol]:
            self._match(order, price)

    def pending_reports(self) -> list[AnyEvent]:
        """Take every queued report now (for synchronous drivers such as backtests)."""
        out = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    def _match(self, order: _Resting, last: Decimal) -> None:
        it = order.intent
        buy = it.side is Side.BUY
        if it.order_type is OrderType.MARKET:
            slip = last * self.slippage_bps / _BPS
            price = last + slip if buy else last - slip
        else:
            lp = it.limit_price
            assert lp is not None
            if (buy and last > lp) or (not buy and last < lp):
                return
            price = min(lp, last) if buy else max(lp, last)
        qty = order.leaves if self.max_fill_qty is None else min(order.leaves, self.max_fill_qty)
        self._fill(order, qty, price)

    def _fill(self, order: _Resting, qty: Decimal, price: Decimal) -> None:
        it = order.intent
        sign = 1 if it.side is Side.BUY else -1
        fee = qty * price * self.commission_bps / _BPS
        order.leaves -= qty
        if not order.leaves:
            del self.resting[it.client_order_id]
        self.holdings[it.symbol] = self.holdings.get(it.symbol, Decimal(0)) + sign * qty
        self.cash -= sign * qty * price + fee
        self._put(Fill(
            **self._base(it.bot), client_order_id=it.client_order_id,
            trade_id=f"T{next(self._trades)}", account=self.account, venue=self.venue,
            symbol=it.symbol, side=it.side, qty=qty, price=price, commission=fee,
            venue_order_id=order.voi,
        ))

    def _base(self, bot: str) -> dict[str, Any]:
        now = self.clock.now_ns()
        return {"node": self.node, "bot": bot, "ts_event": now, "ts_init": now}

    def _put(self, event: AnyEvent) -> None:
        self._book.apply(event)
        if isinstance(event, Fill):
            self.fills.append(event)
        self._queue.put_nowait(event)
