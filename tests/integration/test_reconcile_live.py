"""Reconciliation against the venue stubs with the real SDK clients: a restart finds the fills
made while the agent was down, an unknown submit outcome is resolved by client_order_id,
reconciliation runs after every reconnect and periodically, and the auto-flatten policy
closes the account's positions after a long outage (and only then)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from qtd.brokers.retry import RetryPolicy
from qtd.clock import LiveClock
from qtd.events import Fill, OrderState, Scope, Side, TradingState
from qtd.reconcile import ReconcilePolicy, Reconciler, reconcile_account
from qtd.store import EventStore
from qtd.venues.alpaca.broker import AlpacaBroker
from qtd.venues.binance.broker import BinanceBroker
from tests.stubs import Fault, StubServer
from tests.stubs.alpaca_stub import AlpacaStub, wait_for
from tests.stubs.binance_stub import BinanceStub
from tests.stubs.rig import Rig

FAST = RetryPolicy(attempts=2, initial_s=0.01, max_backoff_s=0.05, resolve_attempts=2,
                   resolve_interval_s=0.02)


def alpaca(server: StubServer) -> AlpacaBroker:
    return AlpacaBroker(account="alp1", node="node-a", clock=LiveClock(), api_key="key",
                        secret_key="secret", base_url=server.http_url,
                        stream_url=f"{server.ws_url}/stream", timeout_s=2.0, policy=FAST,
                        reconnect_min_s=0.05)


@pytest.fixture
async def venue() -> AsyncIterator[tuple[AlpacaStub, StubServer]]:
    stub = AlpacaStub()
    server = await StubServer(stub.app).start()
    yield stub, server
    await server.stop()


@pytest.fixture
async def rig(venue: tuple[AlpacaStub, StubServer], store: EventStore) -> AsyncIterator[Rig]:
    broker = alpaca(venue[1])
    await broker.start()
    r = await Rig(store, broker, ["AAPL"]).start({"AAPL": "100"})
    yield r
    await r.stop()
    await broker.close()


async def test_restart_imports_fills_made_while_down(
        venue: tuple[AlpacaStub, StubServer], rig: Rig) -> None:
    stub, server = venue
    cid = (await rig.submit("AAPL", "10", limit="99")).client_order_id
    await rig.until(cid, OrderState.ACCEPTED)
    await rig.broker.close()  # type: ignore[attr-defined]  # the agent goes down
    await stub.fill(cid, "4", "98.5")
    await stub.fill(cid, "6", "98.0")
    fresh = alpaca(server)  # a restarted agent: the adapter tracks nothing
    await fresh.start()
    try:
        rec = await reconcile_account(rig.router, fresh, rig.clock)
    finally:
        await fresh.close()
    assert rec.ok and rec.resolved == [cid] and rec.fills_imported == 2
    order = rig.order(cid)
    assert order.state is OrderState.FILLED and order.filled_qty == Decimal(10)
    fills = [f for f in await rig.store.query(kind="Fill") if isinstance(f, Fill)]
    assert [(f.qty, f.price, f.bot) for f in fills] == [
        (Decimal(4), Decimal("98.5"), "bot1"), (Decimal(6), Decimal("98.0"), "bot1")]
    assert rec.position_mismatches == []
    again = await reconcile_account(rig.router, rig.broker, rig.clock)
    assert again.ok and again.fills_imported == 0  # nothing imported twice


async def test_unknown_submit_outcome_is_resolved_by_client_order_id(
        venue: tuple[AlpacaStub, StubServer], rig: Rig) -> None:
    stub, _ = venue
    stub.hold()  # the stream says nothing about this order
    stub.faults.add("POST /v2/orders", Fault(500, {"message": "internal"}, apply=True))
    stub.faults.add("GET /v2/orders:by_client_order_id",
                    *[Fault(503, {"message": "busy"}) for _ in range(FAST.attempts)])
    cid = (await rig.submit("AAPL", "5", limit="90")).client_order_id
    await asyncio.sleep(0.05)
    assert rig.order(cid).state is OrderState.PENDING_SUBMIT  # unknown: still in flight
    assert "BrokerError" in await rig.kinds(cid)
    rec = await reconcile_account(rig.router, rig.broker, rig.clock)
    assert rec.ok and rec.resolved == [cid] and rec.open_at_venue == 1
    assert rig.order(cid).state is OrderState.ACCEPTED  # the venue's word, applied
    assert stub.post_counts[cid] == 1  # never re-sent


async def test_order_the_venue_no_longer_lists_is_looked_up(
        venue: tuple[AlpacaStub, StubServer], rig: Rig) -> None:
    stub, _ = venue
    cid = (await rig.submit("AAPL", "5", limit="90")).client_order_id
    await rig.until(cid, OrderState.ACCEPTED)
    stub.drop_after = 0  # the stream loses the cancel
    stub.order(cid)["status"] = "canceled"
    await stub._emit("canceled", stub.order(cid))
    rec = await reconcile_account(rig.router, rig.broker, rig.clock)
    assert rec.ok and rec.resolved == [cid]
    assert rig.order(cid).state is OrderState.CANCELED


async def test_reconnect_triggers_reconciliation_and_long_outage_flattens(
        venue: tuple[AlpacaStub, StubServer], rig: Rig) -> None:
    stub, _ = venue
    rec = Reconciler(rig.router, rig.broker, rig.clock,
                     ReconcilePolicy(interval_s=3600, flatten_after_s=0.3))
    task = asyncio.create_task(rec.run())
    try:
        cid = (await rig.submit("AAPL", "10")).client_order_id
        await rig.until(cid, OrderState.FILLED)
        assert stub.positions["AAPL"][0] == Decimal(10)
        stub.refuse = True
        await stub.drop_stream()
        link = rig.broker.link  # type: ignore[attr-defined]
        await wait_for(lambda: link.down_since is not None)
        await asyncio.sleep(0.5)  # longer than flatten_after_s
        stub.refuse = False
        await wait_for(lambda: bool(rec.flattened), timeout=10)
        await wait_for(lambda: stub.positions["AAPL"][0] == 0, timeout=10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [r.trigger for r in rec.runs] == ["reconnect"]
    sells = [p for r, p, _ in stub.log.entries if r == "POST /v2/orders" and p["side"] == "sell"]
    assert len(sells) == 1 and Decimal(sells[0]["qty"]) == Decimal(10)
    assert rig.engine.states.get(Scope.ACCOUNT, "alp1") is TradingState.HALTED
    await wait_for(lambda: rig.proj.positions and all(
        p.qty == 0 for p in rig.proj.positions.values()))


async def test_short_outage_reconciles_without_flattening(
        venue: tuple[AlpacaStub, StubServer], rig: Rig) -> None:
    stub, _ = venue
    rec = Reconciler(rig.router, rig.broker, rig.clock,
                     ReconcilePolicy(interval_s=3600, flatten_after_s=60))
    task = asyncio.create_task(rec.run())
    try:
        cid = (await rig.submit("AAPL", "10")).client_order_id
        await rig.until(cid, OrderState.FILLED)
        await stub.drop_stream()
        await wait_for(lambda: len(rec.runs) == 1, timeout=10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert rec.runs[0].trigger == "reconnect" and rec.runs[0].ok
    assert rec.flattened == []
    assert not any(p["side"] == "sell" for r, p, _ in stub.log.entries
                   if r == "POST /v2/orders")


async def test_periodic_reconciliation(venue: tuple[AlpacaStub, StubServer], rig: Rig) -> None:
    rec = Reconciler(rig.router, rig.broker, rig.clock, ReconcilePolicy(interval_s=0.05))
    task = asyncio.create_task(rec.run())
    try:
        await wait_for(lambda: len(rec.runs) >= 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert {r.trigger for r in rec.runs} == {"periodic"} and all(r.ok for r in rec.runs)
    stored = await rig.store.query(kind="Reconciliation")
    assert len(stored) >= 2


async def test_binance_restart_imports_fills(store: EventStore) -> None:
    stub = BinanceStub()
    server = await StubServer(stub.app).start()

    def make() -> BinanceBroker:
        return BinanceBroker(account="bn1", node="node-a", clock=LiveClock(), api_key="key",
                             api_secret="secret", symbols=["BTCUSDT"],
                             api_url=f"{server.http_url}/api",
                             ws_api_url=f"{server.ws_url}/ws-api/v3", policy=FAST,
                             reconnect_min_s=0.05)
    broker = make()
    await broker.start()
    rig = await Rig(store, broker, ["BTCUSDT"]).start({"BTCUSDT": "50000"})
    fresh = make()
    try:
        cid = (await rig.submit("BTCUSDT", "0.01", Side.BUY, limit="49000")).client_order_id
        await rig.until(cid, OrderState.ACCEPTED)
        await rig.stop()
        await broker.close()
        await stub.fill(cid, "0.01", "48900")
        await fresh.start()
        rec = await reconcile_account(rig.router, fresh, rig.clock)
        assert rec.resolved == [cid] and rec.fills_imported == 1
        assert rig.order(cid).state is OrderState.FILLED
        # spot balances count every BTC the account holds; the store agrees here
        assert rec.position_mismatches == [] and rec.ok
    finally:
        await fresh.close()
        await server.stop()
