"""AlpacaBroker with the real alpaca-py clients against the local Alpaca stub, through the full
order path (OrderRouter + RiskEngine + SQLite store): ack, partial fills, fill, cancel,
reject, out-of-order and duplicate updates, a dropped stream mid-fill, 429 with Retry-After,
a submit that times out although the order reached the venue, 5xx with the order not at the
venue, fills made while the agent was down, malformed and unknown messages."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from qtd.brokers.retry import RetryPolicy
from qtd.clock import LiveClock
from qtd.events import BrokerError, Fill, OrderState, Side
from qtd.store import EventStore
from qtd.venues.alpaca.broker import AlpacaBroker
from tests.stubs import Fault, StubServer
from tests.stubs.alpaca_stub import AlpacaStub, wait_for
from tests.stubs.rig import Rig

FAST = RetryPolicy(attempts=3, initial_s=0.02, max_backoff_s=0.1, resolve_attempts=3,
                   resolve_interval_s=0.05)


def make_broker(server: StubServer, **kw: object) -> AlpacaBroker:
    opts: dict[str, object] = {"timeout_s": 2.0, "policy": FAST, "reconnect_min_s": 0.05}
    opts.update(kw)
    return AlpacaBroker(account="alp1", node="node-a", clock=LiveClock(), api_key="key",
                        secret_key="secret", base_url=server.http_url,
                        stream_url=f"{server.ws_url}/stream", **opts)  # type: ignore[arg-type]


@pytest.fixture
async def stub() -> AsyncIterator[tuple[AlpacaStub, StubServer]]:
    venue = AlpacaStub()
    server = await StubServer(venue.app).start()
    yield venue, server
    await server.stop()


@pytest.fixture
async def rig(stub: tuple[AlpacaStub, StubServer], store: EventStore) -> AsyncIterator[Rig]:
    broker = make_broker(stub[1])
    await broker.start()
    r = await Rig(store, broker, ["AAPL"]).start({"AAPL": "100"})
    yield r
    await r.stop()
    await broker.close()


def fills(venue: AlpacaStub, cid: str) -> set[str]:
    return {m["data"]["execution_id"] for m in venue.sent + venue.lost
            if m["data"]["event"] in ("fill", "partial_fill")
            and m["data"]["order"]["client_order_id"] == cid}


async def test_ack_partial_fills_and_fill(stub: tuple[AlpacaStub, StubServer], rig: Rig) -> None:
    venue = stub[0]
    venue.fill_chunks = [Decimal(3), Decimal(7)]
    intent = await rig.submit("AAPL", "10")
    rec = await rig.until(intent.client_order_id, OrderState.FILLED)
    assert rec.trade_ids == fills(venue, intent.client_order_id) and len(rec.trade_ids) == 2
    assert rec.filled_qty == 10 and rec.venue_order_id == venue.order(intent.client_order_id)["id"]
    assert venue.log.entries[0][1]["client_order_id"] == intent.client_order_id
    kinds = await rig.kinds(intent.client_order_id)
    assert kinds[0] == "OrderIntent" and kinds.count("Fill") == 2
    pos = rig.proj.position("bot1", "alp1", "AAPL")
    assert pos is not None and pos.qty == 10


async def test_cancel_of_a_resting_limit_order(
    stub: tuple[AlpacaStub, StubServer], rig: Rig
) -> None:
    intent = await rig.submit("AAPL", "5", limit="99")
    await rig.until(intent.client_order_id, OrderState.ACCEPTED)
    assert await rig.router.cancel(intent.client_order_id, "test")
    await rig.until(intent.client_order_id, OrderState.CANCELED)
    assert stub[0].order(intent.client_order_id)["status"] == "canceled"


async def test_reject_is_the_venues_word_and_not_retried(
    stub: tuple[AlpacaStub, StubServer], rig: Rig
) -> None:
    intent = await rig.submit("AAPL", "5000")  # > 4x cash at the stub: 403
    rec = await rig.until(intent.client_order_id, OrderState.REJECTED)
    assert "insufficient buying power" in rec.reject_reason
    assert stub[0].post_counts[intent.client_order_id] == 1


async def test_out_of_order_and_duplicate_updates(
    stub: tuple[AlpacaStub, StubServer], rig: Rig
) -> None:
    venue = stub[0]
    venue.fill_chunks = [Decimal(2), Decimal(3), Decimal(5)]
    venue.hold()
    intent = await rig.submit("AAPL", "10")
    await venue.release(reverse=True)  # fill, partial, partial, new
    await venue.resend(4)  # and all of them again
    rec = await rig.until(intent.client_order_id, OrderState.FILLED)
    await wait_for(lambda: len(venue.sent) == 8)
    assert rec.filled_qty == 10 and len(rec.trade_ids) == 3
    assert (await rig.kinds(intent.client_order_id)).count("Fill") == 3
    pos = rig.proj.position("bot1", "alp1", "AAPL")
    assert pos is not None and pos.qty == 10


async def test_dropped_stream_mid_fill_loses_no_fill(
    stub: tuple[AlpacaStub, StubServer], rig: Rig
) -> None:
    venue = stub[0]
    intent = await rig.submit("AAPL", "10", limit="101")
    cid = intent.client_order_id
    await rig.until(cid, OrderState.ACCEPTED)
    venue.drop_after = 1
    await venue.fill(cid, "4")  # delivered
    await venue.fill(cid, "6")  # lost: the stream drops instead
    venue.drop_after = None
    assert len(venue.lost) == 1
    rec = await rig.until(cid, OrderState.FILLED)  # reconnect → get_order + fills_since
    assert rec.trade_ids == fills(venue, cid) and rec.filled_qty == 10
    assert venue.connections >= 2


async def test_429_waits_for_retry_after(stub: tuple[AlpacaStub, StubServer], rig: Rig) -> None:
    venue = stub[0]
    venue.faults.add("POST /v2/orders", Fault(429, {"code": 42910000, "message": "rate limit"},
                                              headers={"Retry-After": "0.3"}))
    t0 = time.monotonic()
    intent = await rig.submit("AAPL", "1")
    assert time.monotonic() - t0 >= 0.3
    await rig.until(intent.client_order_id, OrderState.FILLED)
    assert venue.log.routes().count("POST /v2/orders") == 2
    assert venue.post_counts[intent.client_order_id] == 1


async def test_submit_timeout_whose_order_reached_the_venue_is_not_resent(
    stub: tuple[AlpacaStub, StubServer], store: EventStore
) -> None:
    venue, server = stub
    broker = make_broker(server, timeout_s=0.3)
    await broker.start()
    rig = await Rig(store, broker, ["AAPL"]).start({"AAPL": "100"})
    try:
        venue.faults.add("POST /v2/orders", Fault(delay_s=0.8, apply=True))
        intent = await rig.submit("AAPL", "3")
        await rig.until(intent.client_order_id, OrderState.FILLED)
        assert venue.post_counts == {intent.client_order_id: 1}
        assert "GET /v2/orders:by_client_order_id" in venue.log.routes()
        assert "BrokerError" not in await rig.kinds()
    finally:
        await rig.stop()
        await broker.close()


async def test_5xx_with_the_order_not_at_the_venue_stays_in_flight(
    stub: tuple[AlpacaStub, StubServer], rig: Rig
) -> None:
    venue = stub[0]
    venue.faults.add("POST /v2/orders", Fault(503, {"message": "upstream"}))
    intent = await rig.submit("AAPL", "3")
    rec = rig.order(intent.client_order_id)
    assert not rec.state.is_terminal  # never marked dead without the venue's word
    errors = [e for e in await rig.store.query(kind="BrokerError")]
    assert len(errors) == 1 and isinstance(errors[0], BrokerError)
    assert errors[0].error_type == "OutcomeUnknown"
    assert venue.log.routes().count("GET /v2/orders:by_client_order_id") == FAST.resolve_attempts
    assert venue.post_counts == {}  # and never re-sent


async def test_restart_finds_fills_made_while_down(
    stub: tuple[AlpacaStub, StubServer], rig: Rig
) -> None:
    venue, server = stub
    intent = await rig.submit("AAPL", "10", limit="99")
    cid = intent.client_order_id
    await rig.until(cid, OrderState.ACCEPTED)
    await rig.broker.close()  # type: ignore[attr-defined]  # the agent goes down
    await venue.fill(cid, "10", "98.5")
    fresh = make_broker(server)
    fresh.track(intent)
    try:
        found = await fresh.fills_since(intent.ts_event)
        assert [(f.client_order_id, f.qty, f.price, f.bot) for f in found] == [
            (cid, Decimal(10), Decimal("98.5"), "bot1")]
        assert {f.trade_id for f in found} == fills(venue, cid)
        report = await fresh.get_order(cid)
        assert report is not None and report.state is OrderState.FILLED
        for f in found:
            await rig.router.on_venue_event(f)
        assert rig.order(cid).state is OrderState.FILLED
    finally:
        await fresh.close()


async def test_malformed_and_unknown_messages_keep_the_order_open(
    stub: tuple[AlpacaStub, StubServer], rig: Rig
) -> None:
    venue = stub[0]
    intent = await rig.submit("AAPL", "4", limit="99")
    cid = intent.client_order_id
    await rig.until(cid, OrderState.ACCEPTED)
    await venue.send_raw("{not json")
    await venue.venue_status(cid, "teleported", "teleported")
    await wait_for(lambda: bool(rig.store.last_seq) and venue.sent[-1]["data"]["event"]
                   == "teleported")
    await venue.fill(cid, "4")
    await rig.until(cid, OrderState.FILLED)
    errors = await rig.store.query(kind="BrokerError")
    assert [(e.operation, e.client_order_id) for e in errors] == [  # type: ignore[union-attr]
        ("stream", cid)]
    report = await rig.broker.get_order(cid)  # type: ignore[attr-defined]
    assert report.state is OrderState.FILLED


async def test_positions_and_account(stub: tuple[AlpacaStub, StubServer], rig: Rig) -> None:
    intent = await rig.submit("AAPL", "2", Side.BUY)
    await rig.until(intent.client_order_id, OrderState.FILLED)
    (pos,) = await rig.broker.positions()
    assert (pos.symbol, pos.qty, pos.source) == ("AAPL", Decimal(2), "broker")
    acct = await rig.broker.account_info()
    assert acct.cash == Decimal(100_000) - 200
    assert [o.client_order_id for o in await rig.broker.open_orders()] == []
    assert isinstance((await rig.broker.fills_since(0))[0], Fill)
