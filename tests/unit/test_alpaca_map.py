"""Pure Alpaca mapping: every order status and trade_updates event, decoding faults."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import pytest

from qtd.brokers.retry import VenueMessageError
from qtd.events import Fill, OrderAccepted, OrderCanceled, OrderExpired, OrderRejected, OrderState
from qtd.venues.alpaca import mapping as am
from tests.factories import intent

CTX = am.Context(node="n", account="a")
ALL_STATUSES = ["new", "partially_filled", "filled", "done_for_day", "canceled", "expired",
                "replaced", "pending_cancel", "pending_replace", "pending_review", "accepted",
                "pending_new", "accepted_for_bidding", "stopped", "rejected", "suspended",
                "calculated", "held"]


def order(status: str = "new", filled: str = "0", qty: str = "10") -> dict[str, Any]:
    return {"id": "v1", "client_order_id": "c1", "status": status, "symbol": "AAPL",
            "side": "buy", "qty": qty, "filled_qty": filled, "filled_avg_price": None,
            "updated_at": "2024-01-02T15:00:00.123456Z"}


def update(event: str, **kw: Any) -> bytes:
    data = {"event": event, "execution_id": str(uuid.uuid4()), "order": order(),
            "timestamp": "2024-01-02T15:00:00.5Z", **kw}
    return json.dumps({"stream": "trade_updates", "data": data}).encode()


def test_every_alpaca_order_status_is_mapped() -> None:
    from alpaca.trading.enums import OrderStatus

    assert {s.value for s in OrderStatus} == set(ALL_STATUSES) == set(am.STATUS_STATE)
    assert am.order_state("new", Decimal(0), Decimal(10)) is OrderState.ACCEPTED
    assert am.order_state("new", Decimal(3), Decimal(10)) is OrderState.PARTIALLY_FILLED
    assert am.order_state("done_for_day", Decimal(3), Decimal(10)) is OrderState.PARTIALLY_FILLED
    assert am.order_state("filled", Decimal(10), Decimal(10)) is OrderState.FILLED
    assert am.order_state("replaced", Decimal(0), None) is None  # flagged, never "dead"
    assert am.order_state("brand_new_status", Decimal(0), None) is None


@pytest.mark.parametrize(("event", "kind"), [
    ("new", OrderAccepted), ("accepted", OrderAccepted), ("pending_new", OrderAccepted),
    ("canceled", OrderCanceled), ("expired", OrderExpired), ("rejected", OrderRejected),
])
def test_status_events(event: str, kind: type) -> None:
    tu = am.decode_trade_update(update(event))
    assert tu is not None
    (ev,) = am.trade_update_events(tu, CTX, "bot1", 7)
    assert type(ev) is kind and ev.client_order_id == "c1" and ev.bot == "bot1"
    assert ev.ts_event == 1704207600500000000 and ev.ts_init == 7


def test_fill_uses_execution_id_and_this_executions_qty_and_price() -> None:
    eid = str(uuid.uuid4())
    tu = am.decode_trade_update(update("partial_fill", execution_id=eid, price="187.123456",
                                       qty=3, position_qty="3"))
    assert tu is not None
    (f,) = am.trade_update_events(tu, CTX, "bot1", 0)
    assert isinstance(f, Fill)
    assert (f.trade_id, f.qty, f.price, f.venue_order_id) == (eid, 3, Decimal("187.123456"), "v1")


@pytest.mark.parametrize("event", ["pending_cancel", "done_for_day", "order_cancel_rejected",
                                   "calculated", "restated"])
def test_informational_events_change_nothing(event: str) -> None:
    tu = am.decode_trade_update(update(event))
    assert tu is not None and am.trade_update_events(tu, CTX, "", 0) == []


def test_unknown_event_replace_and_malformed_frames_raise() -> None:
    for event in ("replaced", "teleported"):
        tu = am.decode_trade_update(update(event))
        assert tu is not None
        with pytest.raises(VenueMessageError, match=event):
            am.trade_update_events(tu, CTX, "", 0)
    with pytest.raises(VenueMessageError):
        am.decode_trade_update(b"{not json")
    with pytest.raises(VenueMessageError):
        am.decode_trade_update(json.dumps({"stream": "trade_updates", "data": {}}))
    tu = am.decode_trade_update(update("fill", price=None))
    assert tu is not None
    with pytest.raises(VenueMessageError, match="lacks"):
        am.trade_update_events(tu, CTX, "", 0)
    assert am.decode_trade_update(b'{"stream":"listening","data":{}}') is None


def test_order_report_activity_fill_and_order_body() -> None:
    r = am.order_report({**order("partially_filled", "4"), "filled_avg_price": "10.5"})
    assert (r.state, r.filled_qty, r.avg_price, r.venue_order_id) == (
        OrderState.PARTIALLY_FILLED, 4, Decimal("10.5"), "v1")
    act = {"id": "20240102150000123::abc-uuid", "transaction_time": "2024-01-02T15:00:00Z",
           "price": "10.5", "qty": "4", "side": "sell", "symbol": "AAPL", "order_id": "v1"}
    f = am.activity_fill(act, "c1", CTX, "bot1", 0)
    assert (f.trade_id, f.side.value, f.qty) == ("abc-uuid", "SELL", 4)
    body = am.order_body(intent("c9", qty="1.5", limit="101.25"))
    assert body == {"symbol": "AAPL", "qty": "1.5", "side": "buy", "type": "limit",
                    "time_in_force": "day", "client_order_id": "c9", "limit_price": "101.25"}
