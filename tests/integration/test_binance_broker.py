"""BinanceBroker with the real python-binance AsyncClient (and a WebSocket API user stream)
against the local Binance stub, through the full order path: ack, partial fills, fill,
cancel, symbol filters, out-of-order and duplicate reports, a dropped stream mid-fill, 429
with Retry-After, 418, the ORDERS window, a submit that times out although the order reached
the venue, a 5xx with the order not at the venue, and fills made while the agent was down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from qtd.brokers.retry import RetryPolicy, VenueBanned
from qtd.clock import LiveClock
from qtd.events import BrokerError, OrderDenied, OrderState, Scope, Severity, Side
from qtd.orders import OrderRequest
from qtd.store import EventStore
from qtd.venues.binance.broker import BinanceBroker
from tests.stubs import Fault, StubServer
from tests.stubs.alpaca_stub import wait_for
from tests.stubs.binance_stub import BinanceStub
from tests.stubs.rig import Rig

FAST = RetryPolicy(attempts=3, initial_s=0.02, max_backoff_s=0.1, resolve_attempts=2,
                   resolve_interval_s=0.05)
Stub = tuple[BinanceStub, StubServer]


def make_broker(server: StubServer, **kw: object) -> BinanceBroker:
    opts: dict[str, object] = {"timeout_s": 2.0, "policy": FAST, "reconnect_min_s": 0.05,
                               "recv_window_ms": 300}
    opts.update(kw)
    return BinanceBroker(account="bn1", node="node-a", clock=LiveClock(), api_key="key",
                         api_secret="secret", symbols=["BTCUSDT"],
                         api_url=f"{server.http_url}/api",
                         ws_api_url=f"{server.ws_url}/ws-api/v3", **opts)  # type: ignore[arg-type]


@pytest.fixture
async def stub() -> AsyncIterator[Stub]:
    venue = BinanceStub(orders_per_10s=50)
    server = await StubServer(venue.app).start()
    yield venue, server
    await server.stop()


async def _rig(store: EventStore, broker: BinanceBroker) -> Rig:
    await broker.start()
    return await Rig(store, broker, ["BTCUSDT"]).start({"BTCUSDT": "50000"})


@pytest.fixture
async def rig(stub: Stub, store: EventStore) -> AsyncIterator[Rig]:
    broker = make_broker(stub[1])
    r = await _rig(store, broker)
    yield r
    await r.stop()
    await broker.close()


def trade_ids(venue: BinanceStub, cid: str) -> set[str]:
    return {str(t["id"]) for t in venue.trades if t["orderId"] == venue.orders[cid]["orderId"]}


async def test_ack_partial_fills_and_fill(stub: Stub, rig: Rig) -> None:
    venue = stub[0]
    venue.fill_chunks = [Decimal("0.004"), Decimal("0.006")]
    intent = await rig.submit("BTCUSDT", "0.01")
    rec = await rig.until(intent.client_order_id, OrderState.FILLED)
    assert rec.trade_ids == trade_ids(venue, intent.client_order_id) and len(rec.trade_ids) == 2
    assert venue.log.entries[0][1]["newClientOrderId"] == intent.client_order_id
    assert rec.avg_fill_price == Decimal(50000)


async def test_cancel_uses_the_original_client_order_id(stub: Stub, rig: Rig) -> None:
    intent = await rig.submit("BTCUSDT", "0.01", limit="49000.00")
    await rig.until(intent.client_order_id, OrderState.ACCEPTED)
    assert await rig.router.cancel(intent.client_order_id, "test")
    await rig.until(intent.client_order_id, OrderState.CANCELED)  # report has c=cancel id, C=ours


@pytest.mark.parametrize(("qty", "limit", "code", "words"), [
    ("0.01", "49000.005", "FILTER_PRICE_FILTER", "multiple of tickSize 0.01"),
    ("0.000015", "49000.00", "FILTER_LOT_SIZE", "multiple of stepSize 0.00001"),
    ("0.00001", "49000.00", "FILTER_NOTIONAL", "notional >= minNotional 5.00"),
])
async def test_symbol_filters_reject_before_any_request(
    stub: Stub, rig: Rig, qty: str, limit: str, code: str, words: str
) -> None:
    intent = await rig.submit("BTCUSDT", qty, limit=limit)
    rec = await rig.until(intent.client_order_id, OrderState.REJECTED)
    rejected = await rig.store.query(kind="OrderRejected")
    assert [r.code for r in rejected] == [code]  # type: ignore[union-attr]
    assert (words in rec.reject_reason and qty in rec.reject_reason) or code.endswith("NOTIONAL")
    assert "POST /api/v3/order" not in stub[0].log.routes()


async def test_out_of_order_and_duplicate_reports(stub: Stub, rig: Rig) -> None:
    venue = stub[0]
    venue.fill_chunks = [Decimal("0.002"), Decimal("0.003"), Decimal("0.005")]
    venue.hold()
    intent = await rig.submit("BTCUSDT", "0.01")
    await venue.release(reverse=True)
    await venue.resend(4)
    rec = await rig.until(intent.client_order_id, OrderState.FILLED)
    await wait_for(lambda: len(venue.sent) == 8)
    assert rec.filled_qty == Decimal("0.01") and len(rec.trade_ids) == 3
    assert (await rig.kinds(intent.client_order_id)).count("Fill") == 3


async def test_dropped_stream_mid_fill_loses_no_fill(stub: Stub, rig: Rig) -> None:
    venue = stub[0]
    intent = await rig.submit("BTCUSDT", "0.01", limit="49000.00")
    cid = intent.client_order_id
    await rig.until(cid, OrderState.ACCEPTED)
    venue.drop_after = 1
    await venue.fill(cid, "0.004", "49000")
    await venue.fill(cid, "0.006", "49000")  # lost with the connection
    venue.drop_after = None
    rec = await rig.until(cid, OrderState.FILLED)  # resubscribe → get_order + myTrades
    assert rec.trade_ids == trade_ids(venue, cid) and venue.subscribes >= 2


async def test_close_ends_a_resync_in_progress(stub: Stub, store: EventStore) -> None:
    """The resync started by a reconnect is owned by the adapter: close() cancels it, no
    task is left running against a closed client."""
    venue, server = stub
    broker = make_broker(server)
    rig = await _rig(store, broker)
    intent = await rig.submit("BTCUSDT", "0.01", limit="49000.00")
    await rig.until(intent.client_order_id, OrderState.ACCEPTED)
    venue.faults.add("GET /api/v3/order", *[Fault(200, {}, delay_s=1.0)] * 20)
    venue.drop_after = 0
    await venue.fill(intent.client_order_id, "0.004", "49000")  # drops the stream
    venue.drop_after = None
    await wait_for(lambda: "GET /api/v3/order" in venue.log.routes(), timeout=10)
    await rig.stop()
    await broker.close()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "binance-resync"]


async def test_429_honours_retry_after(stub: Stub, rig: Rig) -> None:
    venue = stub[0]
    venue.faults.add("POST /api/v3/order", Fault(429, {"code": -1003, "msg": "Too many"},
                                                 headers={"Retry-After": "0.3"}))
    t0 = time.monotonic()
    intent = await rig.submit("BTCUSDT", "0.01")
    assert time.monotonic() - t0 >= 0.3
    await rig.until(intent.client_order_id, OrderState.FILLED)
    assert venue.post_counts == {intent.client_order_id: 1}


async def test_418_stops_all_calls_and_raises_an_operational_error(
    stub: Stub, rig: Rig
) -> None:
    venue = stub[0]
    venue.faults.add("POST /api/v3/order", Fault(418, {"code": -1003, "msg": "IP banned"},
                                                 headers={"Retry-After": "120"}))
    intent = await rig.submit("BTCUSDT", "0.01")
    errors = await rig.store.query(kind="BrokerError")
    assert [e.error_type for e in errors] == ["VenueBanned"]  # type: ignore[union-attr]
    assert not rig.order(intent.client_order_id).state.is_terminal
    n = len(venue.log.entries)
    with pytest.raises(VenueBanned):  # nothing goes out while banned
        await rig.broker.account_info()
    assert len(venue.log.entries) == n
    # the account is HALTED (P2, a human must act) and the next order never leaves qtd
    breach = [b for b in await rig.store.query(kind="RiskBreach")
              if b.check == "broker_operational_error"]  # type: ignore[union-attr]
    assert [(b.scope, b.severity) for b in breach] == [(Scope.ACCOUNT, Severity.P2)]  # type: ignore[union-attr]
    denied = await rig.router.submit(OrderRequest(
        bot="bot1", account=rig.broker.account, venue=rig.broker.venue, symbol="BTCUSDT",
        side=Side.BUY, qty=Decimal("0.01")))
    assert isinstance(denied, OrderDenied) and denied.check == "trading_state"
    assert len(venue.log.entries) == n


async def test_orders_window_from_exchange_info_is_honoured(store: EventStore) -> None:
    venue = BinanceStub(orders_per_10s=2)
    server = await StubServer(venue.app).start()
    broker = make_broker(server, policy=RetryPolicy(max_retry_after_s=0.5))
    rig = await _rig(store, broker)
    try:
        cids = [(await rig.submit("BTCUSDT", "0.01")).client_order_id for _ in range(3)]
        await rig.until(cids[1], OrderState.FILLED)
        rec = await rig.until(cids[2], OrderState.REJECTED)
        assert "client-side rate limit" in rec.reject_reason
        assert sorted(venue.post_counts) == sorted(cids[:2])
    finally:
        await rig.stop()
        await broker.close()
        await server.stop()


async def test_submit_timeout_whose_order_reached_the_venue_is_not_resent(
    stub: Stub, store: EventStore
) -> None:
    venue, server = stub
    broker = make_broker(server, timeout_s=0.3)
    rig = await _rig(store, broker)
    try:
        venue.faults.add("POST /api/v3/order", Fault(delay_s=0.8, apply=True))
        intent = await rig.submit("BTCUSDT", "0.01")
        await rig.until(intent.client_order_id, OrderState.FILLED)
        assert venue.post_counts == {intent.client_order_id: 1}
        assert "GET /api/v3/order" in venue.log.routes()
        assert "BrokerError" not in await rig.kinds()
    finally:
        await rig.stop()
        await broker.close()


async def test_5xx_not_at_the_venue_is_settled_only_after_recv_window(
    stub: Stub, rig: Rig
) -> None:
    venue = stub[0]
    venue.faults.add("POST /api/v3/order", Fault(503, {"code": -1001, "msg": "internal"}))
    t0 = time.monotonic()
    intent = await rig.submit("BTCUSDT", "0.01")
    rec = await rig.until(intent.client_order_id, OrderState.REJECTED)
    assert time.monotonic() - t0 >= 0.3  # recvWindow 300 ms passed before "not at venue"
    rejected = await rig.store.query(kind="OrderRejected")
    assert [r.code for r in rejected] == ["NOT_AT_VENUE"]  # type: ignore[union-attr]
    assert "recvWindow" in rec.reject_reason and venue.post_counts == {}


async def test_restart_finds_fills_made_while_down(stub: Stub, rig: Rig) -> None:
    venue, server = stub
    intent = await rig.submit("BTCUSDT", "0.01", limit="49000.00")
    cid = intent.client_order_id
    await rig.until(cid, OrderState.ACCEPTED)
    await rig.broker.close()  # type: ignore[attr-defined]
    await venue.fill(cid, "0.01", "48999.99")
    fresh = make_broker(server)
    fresh.track(intent)
    await fresh.start()
    try:
        found = await fresh.fills_since(intent.ts_event)
        assert [(f.client_order_id, f.qty, f.price) for f in found] == [
            (cid, Decimal("0.01"), Decimal("48999.99"))]
        for f in found:
            await rig.router.on_venue_event(f)
        assert rig.order(cid).state is OrderState.FILLED
    finally:
        await fresh.close()


async def test_malformed_and_unknown_reports_are_flagged(stub: Stub, rig: Rig) -> None:
    venue = stub[0]
    intent = await rig.submit("BTCUSDT", "0.01", limit="49000.00")
    cid = intent.client_order_id
    await rig.until(cid, OrderState.ACCEPTED)
    await venue.send_raw("{oops")
    await venue.venue_status(cid, "TELEPORTED", "NEW")
    await venue.fill(cid, "0.01", "49000")
    await rig.until(cid, OrderState.FILLED)
    await wait_for(lambda: True)
    errors = [e for e in await rig.store.query(kind="BrokerError")
              if isinstance(e, BrokerError)]
    assert [e.operation for e in errors] == ["stream", "stream"]
    assert errors[1].client_order_id == cid
