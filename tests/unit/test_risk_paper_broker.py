"""PaperBroker fill rules: market fills with slippage and commission, limit orders that fill
when the price crosses, partial fills, cancels, and its account views."""

from __future__ import annotations

from decimal import Decimal

from qtd.brokers.paper import PaperBroker
from qtd.clock import SimClock
from qtd.events import (
    Fill,
    OrderAccepted,
    OrderCanceled,
    OrderIntent,
    OrderRejected,
    OrderState,
    OrderType,
    Side,
)
from qtd.risk.tokens import mint_cancel, mint_submit

NODE = "node-a"


def _intent(cid: str, side: Side = Side.BUY, qty: str = "10", limit: str | None = None
            ) -> OrderIntent:
    return OrderIntent(
        node=NODE, bot="bot1", ts_event=1, ts_init=1, client_order_id=cid, cid_counter=1,
        account="acct1", venue="paper", symbol="AAPL", side=side, qty=Decimal(qty),
        order_type=OrderType.LIMIT if limit else OrderType.MARKET,
        limit_price=Decimal(limit) if limit else None,
    )


def _broker(**kw: object) -> PaperBroker:
    return PaperBroker(account="acct1", node=NODE, clock=SimClock(5), **kw)  # type: ignore[arg-type]


async def _send(b: PaperBroker, intent: OrderIntent) -> None:
    # tokens are minted by the risk engine in production; here the broker is the unit
    await b.submit(intent, mint_submit(intent))


async def test_market_order_fills_at_last_price_with_slippage_and_commission() -> None:
    b = _broker(slippage_bps=Decimal(10), commission_bps=Decimal(5))
    b.on_price("AAPL", Decimal(100), 1)
    await _send(b, _intent("m1", Side.BUY))
    await _send(b, _intent("m2", Side.SELL, "4"))
    acc, fill, _, sell = b.pending_reports()
    assert isinstance(acc, OrderAccepted) and isinstance(fill, Fill) and isinstance(sell, Fill)
    assert (fill.price, fill.qty, fill.commission) == (Decimal("100.1"), 10, Decimal("0.5005"))
    assert sell.price == Decimal("99.9")
    assert [p.qty for p in await b.positions()] == [6]
    info = await b.account_info()
    assert info.cash == Decimal(100_000) - Decimal("1001") - Decimal("0.5005") + Decimal(
        "399.6") - Decimal("0.1998")


async def test_market_order_without_price_is_rejected() -> None:
    b = _broker()
    await _send(b, _intent("m1"))
    (rej,) = b.pending_reports()
    assert isinstance(rej, OrderRejected) and rej.code == "NO_PRICE"


async def test_limit_order_rests_until_price_crosses_then_fills_in_parts() -> None:
    b = _broker(max_fill_qty=Decimal(4))
    b.on_price("AAPL", Decimal(101), 1)
    await _send(b, _intent("l1", Side.BUY, "10", limit="100"))
    assert [type(e).__name__ for e in b.pending_reports()] == ["OrderAccepted"]
    assert [o.client_order_id for o in await b.open_orders()] == ["l1"]
    b.on_price("AAPL", Decimal("99.5"), 2)
    b.on_price("AAPL", Decimal("99.8"), 3)
    b.on_price("AAPL", Decimal("100.5"), 4)  # above the limit: no fill
    b.on_price("AAPL", Decimal("100"), 5)
    fills = b.pending_reports()
    assert [(f.qty, f.price) for f in fills] == [  # type: ignore[union-attr]
        (4, Decimal("99.5")), (4, Decimal("99.8")), (2, Decimal("100"))]
    assert await b.open_orders() == []


async def test_sell_limit_crossing_and_cancel() -> None:
    b = _broker()
    b.on_price("AAPL", Decimal(100), 1)
    await _send(b, _intent("s1", Side.SELL, "5", limit="102"))
    await _send(b, _intent("s2", Side.SELL, "5", limit="99"))  # marketable: fills at 100
    reports = b.pending_reports()
    assert [(type(e).__name__, getattr(e, "price", None)) for e in reports] == [
        ("OrderAccepted", None), ("OrderAccepted", None), ("Fill", Decimal(100))]
    await b.cancel("s1", mint_cancel("s1"))
    await b.cancel("s2", mint_cancel("s2"))  # already filled: nothing to cancel
    (canceled,) = b.pending_reports()
    assert isinstance(canceled, OrderCanceled) and canceled.client_order_id == "s1"


async def test_cancel_all() -> None:
    b = _broker()
    b.on_price("AAPL", Decimal(100), 1)
    await _send(b, _intent("a", limit="90"))
    await _send(b, _intent("b", limit="91"))
    assert sorted(await b.cancel_all(mint_cancel("*"))) == ["a", "b"]
    assert await b.open_orders() == []


async def test_get_order_reports_what_the_venue_knows() -> None:
    b = _broker()
    b.on_price("AAPL", Decimal(100), 1)
    await _send(b, _intent("m1"))  # fills at once
    await _send(b, _intent("l1", limit="90"))  # rests
    assert b.has_reports() and len(b.pending_reports()) == 3  # 2 acks, 1 fill
    assert not b.has_reports()
    filled, resting = await b.get_order("m1"), await b.get_order("l1")
    assert filled is not None and filled.state is OrderState.FILLED
    assert (filled.filled_qty, filled.avg_price) == (Decimal(10), Decimal(100))
    assert resting is not None and resting.state is OrderState.ACCEPTED
    assert resting.filled_qty == 0 and resting.venue_order_id == "P2"
    b.on_price("AAPL", Decimal(89), 2)  # the limit fills after the first look
    later = await b.get_order("l1")
    assert later is not None and later.state is OrderState.FILLED
    assert await b.get_order("nope") is None


async def test_history_bounds_what_the_paper_broker_remembers() -> None:
    """With ``history`` the lists and the get_order book keep the latest orders only (an
    agent runs for months); a resting order is kept whatever its age."""
    b = _broker(history=4)
    b.on_price("AAPL", Decimal(100), 1)
    await _send(b, _intent("rest", limit="50"))  # rests: never fills at 100
    for i in range(50):
        await _send(b, _intent(f"m{i}"))
    b.pending_reports()
    assert 4 <= len(b.submitted) <= 9 and 4 <= len(b.fills) <= 9
    assert b.submitted[-1].client_order_id == "m49" and b.fills[-1].client_order_id == "m49"
    last, old, rest = [await b.get_order(c) for c in ("m49", "m0", "rest")]
    assert last is not None and last.state is OrderState.FILLED
    assert old is None  # older than history, like a venue past its retention
    assert rest is not None and rest.state is OrderState.ACCEPTED
    assert [i.client_order_id for i in await b.open_orders()] == ["rest"]
