"""Pure Binance mapping: filters, exchangeInfo limits, statuses, executionReports."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from qtd.brokers.retry import VenueMessageError
from qtd.events import Fill, OrderAccepted, OrderCanceled, OrderExpired, OrderRejected, OrderState
from qtd.venues.binance import mapping as bm
from tests.factories import intent
from tests.stubs.binance_stub import exchange_info

NAMES = bm.Names(node="n", account="a")
RULES, LIMITS = bm.parse_exchange_info(exchange_info(50))
R = RULES["BTCUSDT"]


def test_exchange_info_filters_and_limits() -> None:
    assert (R.tick_size, R.step_size, R.min_qty, R.min_notional, R.quote) == (
        Decimal("0.01"), Decimal("0.00001"), Decimal("0.00001"), Decimal("5.00"), "USDT")
    assert ("REQUEST_WEIGHT", 60, 6000) in [(x.kind, x.window_s, x.limit) for x in LIMITS]
    assert ("ORDERS", 10, 50) in [(x.kind, x.window_s, x.limit) for x in LIMITS]
    with pytest.raises(VenueMessageError):
        bm.parse_exchange_info({"rateLimits": [{"rateLimitType": "X"}]})


@pytest.mark.parametrize(("qty", "limit", "ref", "flt", "field"), [
    ("0.01", "49000.001", None, "PRICE_FILTER", "price"),
    ("0.01", "0.001", None, "PRICE_FILTER", "price"),
    ("0.000001", "49000", None, "LOT_SIZE", "quantity"),
    ("0.000015", "49000", None, "LOT_SIZE", "quantity"),
    ("9001", "1", None, "LOT_SIZE", "quantity"),
    ("0.0001", "49000", None, "NOTIONAL", "price*quantity"),
    ("0.0001", None, "49000", "NOTIONAL", "price*quantity"),
])
def test_filter_violations_name_filter_field_value_rule(
    qty: str, limit: str | None, ref: str | None, flt: str, field: str
) -> None:
    v = bm.check_filters(R, intent("c", symbol="BTCUSDT", qty=qty, limit=limit),
                         Decimal(ref) if ref else None)
    assert v is not None and (v.filter, v.field) == (flt, field)
    assert v.filter in v.message and str(v.value) in v.message


def test_valid_orders_pass() -> None:
    assert bm.check_filters(R, intent("c", symbol="BTCUSDT", qty="0.01", limit="49000.01"),
                            None) is None
    assert bm.check_filters(R, intent("c", symbol="BTCUSDT", qty="0.0001"), None) is None


def test_every_binance_status_is_mapped() -> None:
    for status in ("NEW", "PENDING_NEW", "PARTIALLY_FILLED", "FILLED", "CANCELED",
                   "PENDING_CANCEL", "REJECTED", "EXPIRED", "EXPIRED_IN_MATCH"):
        assert bm.order_state(status, Decimal(0)) is not None
    assert bm.order_state("NEW", Decimal(1)) is OrderState.PARTIALLY_FILLED
    assert bm.order_state("EXPIRED_IN_MATCH", Decimal(0)) is OrderState.EXPIRED
    assert bm.order_state("MYSTERY", Decimal(0)) is None


def er(x: str, status: str = "NEW", **kw: Any) -> dict[str, Any]:
    return {"e": "executionReport", "E": 1_700_000_000_000, "s": "BTCUSDT", "c": "c1",
            "S": "BUY", "x": x, "X": status, "i": 42, "l": "0", "L": "0", "z": "0",
            "T": 1_700_000_000_001, "t": -1, "r": "NONE", "C": "", **kw}


@pytest.mark.parametrize(("x", "kind"), [
    ("NEW", OrderAccepted), ("CANCELED", OrderCanceled), ("REJECTED", OrderRejected),
    ("EXPIRED", OrderExpired), ("TRADE_PREVENTION", OrderExpired),
])
def test_execution_types(x: str, kind: type) -> None:
    (ev,) = bm.execution_report_events(er(x), NAMES, "bot1", "USDT", 5)
    assert type(ev) is kind and ev.client_order_id == "c1" and ev.ts_event == 1_700_000_000 * 10**9


def test_trade_and_cancel_ids() -> None:
    (f,) = bm.execution_report_events(er("TRADE", "PARTIALLY_FILLED", l="0.004", L="50000.1",
                                         t=77, n="0.01", N="BNB", m=True), NAMES, "b", "USDT", 0)
    assert isinstance(f, Fill)
    assert (f.trade_id, f.qty, f.price, f.commission_currency, f.liquidity, f.currency) == (
        "77", Decimal("0.004"), Decimal("50000.1"), "BNB", "maker", "USDT")
    (c,) = bm.execution_report_events(er("CANCELED", c="cxl-1", C="c1"), NAMES, "", "USDT", 0)
    assert c.client_order_id == "c1"  # the original id, not the cancel request's
    assert bm.execution_report_events(er("REPLACED"), NAMES, "", "USDT", 0) == []
    with pytest.raises(VenueMessageError, match="AMENDMENT"):
        bm.execution_report_events(er("AMENDMENT"), NAMES, "", "USDT", 0)
    with pytest.raises(VenueMessageError):
        bm.execution_report_events({"x": "TRADE"}, NAMES, "", "USDT", 0)


def test_order_report_and_params() -> None:
    r = bm.order_report({"symbol": "BTCUSDT", "orderId": 9, "clientOrderId": "c1",
                         "status": "PARTIALLY_FILLED", "executedQty": "0.5",
                         "cummulativeQuoteQty": "25000", "origQty": "1", "side": "SELL",
                         "updateTime": 1_700_000_000_000})
    assert (r.state, r.avg_price, r.venue_order_id, r.qty) == (
        OrderState.PARTIALLY_FILLED, Decimal(50000), "9", Decimal(1))
    p = bm.order_params(intent("c1", symbol="BTCUSDT", qty="0.01", limit="49000.5"), 5000)
    assert (p["newClientOrderId"], p["price"], p["timeInForce"], p["recvWindow"]) == (
        "c1", "49000.5", "GTC", 5000)
