"""Builders for events used across the tests (plain functions, no mocks)."""

from __future__ import annotations

from decimal import Decimal

from qtd.events import (
    Fill,
    OrderAccepted,
    OrderCanceled,
    OrderIntent,
    OrderSubmitted,
    OrderType,
    Side,
)

NODE = "node-a"


def intent(
    cid: str, *, bot: str = "bot1", symbol: str = "AAPL", side: Side = Side.BUY,
    qty: str | Decimal = "10", counter: int = 1, ts: int = 1_000, account: str = "acct1",
    limit: str | None = None,
) -> OrderIntent:
    return OrderIntent(
        node=NODE, bot=bot, ts_event=ts, ts_init=ts, client_order_id=cid, cid_counter=counter,
        account=account, venue="paper", symbol=symbol, side=side, qty=Decimal(qty),
        order_type=OrderType.LIMIT if limit else OrderType.MARKET,
        limit_price=Decimal(limit) if limit else None,
    )


def fill(
    cid: str, trade_id: str, *, qty: str | Decimal, price: str | Decimal, bot: str = "bot1",
    symbol: str = "AAPL", side: Side = Side.BUY, ts: int = 2_000, account: str = "acct1",
    commission: str = "0", commission_currency: str = "USD",
) -> Fill:
    return Fill(
        node=NODE, bot=bot, ts_event=ts, ts_init=ts, client_order_id=cid, trade_id=trade_id,
        account=account, venue="paper", symbol=symbol, side=side, qty=Decimal(qty),
        price=Decimal(price), commission=Decimal(commission),
        commission_currency=commission_currency,
    )


def submitted(cid: str, ts: int = 1_100, bot: str = "bot1") -> OrderSubmitted:
    return OrderSubmitted(node=NODE, bot=bot, ts_event=ts, ts_init=ts, client_order_id=cid)


def accepted(cid: str, ts: int = 1_200, bot: str = "bot1") -> OrderAccepted:
    return OrderAccepted(
        node=NODE, bot=bot, ts_event=ts, ts_init=ts, client_order_id=cid, venue_order_id="v-" + cid
    )


def canceled(cid: str, ts: int = 3_000, bot: str = "bot1") -> OrderCanceled:
    return OrderCanceled(node=NODE, bot=bot, ts_event=ts, ts_init=ts, client_order_id=cid)
