"""A toy venue kept in the test tree: proof that a venue is added without editing ``qtd/``.

An agent config loads it by name (``venue_modules = ["tests.venues.toy"]``) and its accounts
say ``broker = "toy"``. The toy broker fills every market order at once at the last price
the agent handed it (:class:`qtd.brokers.base.PriceFed`), charging ``fee_bps`` of its
settings struct (``[accounts.<n>.options]``), and refuses other order types.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from decimal import Decimal

import msgspec

from qtd.brokers.base import (
    AccountSnapshot,
    Broker,
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
    OrderIntent,
    OrderRejected,
    OrderState,
    OrderType,
    PositionSnapshot,
    Side,
)
from qtd.venues import AccountContext, Venue, instrument_table, started


class ToyOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[accounts.<n>.options]`` of a toy account: ``fee_bps`` of notional per fill."""

    fee_bps: float = 0.0


class ToyBroker:
    """Market orders fill whole at the last price; anything else is rejected."""

    def __init__(self, *, account: str, venue: str, node: str, clock: Clock,
                 fee_bps: float) -> None:
        self.account, self.venue, self.node, self.clock = account, venue, node, clock
        self.fee = Decimal(str(fee_bps)) / Decimal(10_000)
        self.started = False
        self.prices: dict[str, Decimal] = {}
        self.holdings: dict[str, Decimal] = {}
        self.fills: list[Fill] = []
        self.orders: dict[str, OrderStatusReport] = {}
        self._queue: asyncio.Queue[AnyEvent] = asyncio.Queue()
        self._ids = itertools.count(1)

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.started = False

    def on_price(self, symbol: str, price: Decimal, ts_ns: int) -> None:
        self.prices[symbol] = price

    async def submit(self, intent: OrderIntent, token: SubmitToken) -> None:
        verify_token(token, intent)
        now, cid = self.clock.now_ns(), intent.client_order_id
        price = self.prices.get(intent.symbol)
        if intent.order_type is not OrderType.MARKET or price is None:
            self._queue.put_nowait(OrderRejected(
                node=self.node, bot=intent.bot, ts_event=now, ts_init=now,
                client_order_id=cid, reason="toy venue: market orders with a price only",
                code="TOY"))
            return
        voi = f"T{next(self._ids)}"
        fill = Fill(node=self.node, bot=intent.bot, ts_event=now, ts_init=now,
                    client_order_id=cid, trade_id=f"{voi}-1", account=self.account,
                    venue=self.venue, symbol=intent.symbol, side=intent.side,
                    qty=intent.qty, price=price, commission=intent.qty * price * self.fee,
                    venue_order_id=voi)
        sign = 1 if intent.side is Side.BUY else -1
        self.holdings[intent.symbol] = self.holdings.get(intent.symbol, Decimal(0)) + \
            sign * intent.qty
        self.fills.append(fill)
        self.orders[cid] = OrderStatusReport(
            client_order_id=cid, state=OrderState.FILLED, venue_status="filled",
            filled_qty=intent.qty, avg_price=price, venue_order_id=voi, symbol=intent.symbol,
            side=intent.side, qty=intent.qty, ts_ns=now)
        self._queue.put_nowait(OrderAccepted(node=self.node, bot=intent.bot, ts_event=now,
                                             ts_init=now, client_order_id=cid,
                                             venue_order_id=voi))
        self._queue.put_nowait(fill)

    async def cancel(self, client_order_id: str, token: SubmitToken) -> None:
        verify_cancel_token(token, client_order_id)  # nothing rests: nothing to cancel

    async def cancel_all(self, token: SubmitToken) -> list[str]:
        verify_cancel_token(token, "*")
        return []

    async def open_orders(self) -> list[OrderIntent]:
        return []

    async def positions(self) -> list[PositionSnapshot]:
        now = self.clock.now_ns()
        return [PositionSnapshot(node=self.node, ts_event=now, ts_init=now,
                                 account=self.account, symbol=sym, qty=qty,
                                 avg_price=self.prices.get(sym, Decimal(0)), source="broker")
                for sym, qty in self.holdings.items() if qty]

    async def account_info(self) -> AccountSnapshot:
        return AccountSnapshot(account=self.account, cash=Decimal(0), equity=Decimal(0))

    async def get_order(self, client_order_id: str) -> OrderStatusReport | None:
        return self.orders.get(client_order_id)

    async def fills_since(self, ts_ns: int) -> list[Fill]:
        return [f for f in self.fills if f.ts_event >= ts_ns]

    async def reports(self) -> AsyncIterator[AnyEvent]:
        while True:
            yield await self._queue.get()

    def has_reports(self) -> bool:
        return not self._queue.empty()


async def _connect(ctx: AccountContext) -> Broker:
    options: ToyOptions = ctx.options
    return await started(ToyBroker(account=ctx.name, venue=ctx.settings.venue_name,
                                   node=ctx.node, clock=ctx.clock, fee_bps=options.fee_bps))


VENUE = Venue(name="toy", instruments=instrument_table("toy", ("GOOG", "equity", "USD", "XNYS")),
              connect=_connect, options=ToyOptions, keys_for_orders=False)
