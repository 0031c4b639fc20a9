"""Shadow mode end to end: live bars from the Binance market-data stub drive a shadow bot on
qtd's paper broker and its live twin on BinanceBroker (Binance stub), through one router and
a real SQLite store; the tracking report compares them from the store."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal

import pytest

from qtd.brokers.paper import PaperBroker
from qtd.brokers.retry import RetryPolicy
from qtd.brokers.shadow import main, tracking_difference, tracking_report
from qtd.clock import LiveClock
from qtd.events import Fill, OrderIntent, OrderState, OrderType, Side
from qtd.execution import OrderRouter
from qtd.feeds import Bar
from qtd.feeds.live import LiveSettings
from qtd.orders import ClientOrderIds, OrderRequest
from qtd.projections import Projections
from qtd.risk import RiskEngine, parse_risk_config
from qtd.store import EventStore
from qtd.venues.binance.broker import BinanceBroker
from qtd.venues.streams import open_live_feed
from tests.stubs import StubServer
from tests.stubs.binance_stub import BinanceStub
from tests.stubs.market_stub import MINUTE_NS, BinanceMarketStub

SYM = "BTCUSDT"


async def until(pred: object, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met")
        await asyncio.sleep(0.01)


async def test_shadow_bot_on_live_data_and_its_tracking_difference(
        store: EventStore, tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    market, venue = BinanceMarketStub(), BinanceStub()
    msrv, vsrv = await StubServer(market.app).start(), await StubServer(venue.app).start()
    clock, proj = LiveClock(), Projections()
    live = BinanceBroker(account="bn1", node=store.node, clock=clock, api_key="key",
                         api_secret="secret", symbols=[SYM], api_url=f"{vsrv.http_url}/api",
                         ws_api_url=f"{vsrv.ws_url}/ws-api/v3",
                         policy=RetryPolicy(attempts=2, initial_s=0.01))
    paper = PaperBroker(account="shadow1", node=store.node, clock=clock, venue="paper")
    cfg = parse_risk_config({
        "global": {"duplicate_window_s": 0.0, "order_spike_factor": 0.0},
        "accounts": {"bn1": {"equity": 1e6}, "shadow1": {"equity": 1e6}},
        "strategies": {"twin": {}, "shadow": {}}, "symbols": {SYM: {}}})
    engine = RiskEngine(cfg, proj, clock, store.node)
    router = OrderRouter(store=store, clock=clock, risk=engine, cids=ClientOrderIds(store),
                         brokers={"bn1": live, "shadow1": paper}, projections=proj)

    async def on_price(symbol: str, price: Decimal) -> None:
        paper.on_price(symbol, price, clock.now_ns())
        await router.on_market_data(symbol, price, clock.now_ns())

    settings = LiveSettings(venue="binance", stream_url=msrv.ws_url + "/",
                            rest_url=msrv.http_url + "/api")
    feed = open_live_feed("binance", [SYM], "1m", settings, on_price=on_price)
    await live.start()
    tasks = [asyncio.create_task(feed.run()), asyncio.create_task(router.consume(live)),
             asyncio.create_task(router.consume(paper))]
    intents: list[OrderIntent] = []

    async def both(side: Side, bar: Bar, live_px: str) -> None:
        venue.price = Decimal(live_px)  # where the venue fills the twin's market order
        for bot, acct, v in (("shadow", "shadow1", "paper"), ("twin", "bn1", "binance")):
            out = await router.submit(OrderRequest(
                bot=bot, account=acct, venue=v, symbol=SYM, side=side, qty=Decimal("0.01"),
                order_type=OrderType.MARKET, decision_price=bar.close))
            assert isinstance(out, OrderIntent), out
            intents.append(out)

    base = (time.time_ns() // MINUTE_NS - 10) * MINUTE_NS
    try:
        await asyncio.wait_for(feed.connected.wait(), 10)
        bars: list[Bar] = []

        async def strategy() -> None:  # buy on the first bar, sell on the third
            async for item in feed:
                if type(item) is not Bar:
                    continue
                bars.append(item)
                if len(bars) == 1:
                    await both(Side.BUY, item, "50105")
                elif len(bars) == 3:
                    await both(Side.SELL, item, "50197")
                    return
        runner = asyncio.create_task(strategy())
        for i, close in enumerate(("50000", "50100", "50200")):  # one bar at a time
            await market.push_bar(SYM, base + i * MINUTE_NS, close)
            await until(lambda n=i: len(bars) > n and len(intents) >= {0: 2, 1: 2, 2: 4}[n])
        await asyncio.wait_for(runner, 10)
        await until(lambda: all(proj.orders.get(i.client_order_id).state  # type: ignore[union-attr]
                                is OrderState.FILLED for i in intents))
    finally:
        await feed.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await live.close()
        await msrv.stop()
        await vsrv.stop()

    fills = [f for f in await store.query(kind="Fill") if isinstance(f, Fill)]
    assert sorted((f.bot, f.side, f.price) for f in fills) == sorted([
        ("shadow", Side.BUY, Decimal("50000")), ("twin", Side.BUY, Decimal("50105")),
        ("shadow", Side.SELL, Decimal("50200")), ("twin", Side.SELL, Decimal("50197"))])
    report = await tracking_report(store.path, "shadow", store.path, "twin")
    (row,) = report.symbols
    assert (row.shadow_intents, row.live_intents, row.paired_orders) == (2, 2, 2)
    buy_bps = 105 / 50000 * 10_000          # paid 105 more than the shadow: worse
    sell_bps = -(50197 - 50200) / 50200 * 10_000  # got 3 less: worse
    assert row.mean_exec_diff_bps == pytest.approx((buy_bps + sell_bps) / 2)
    assert row.max_exec_diff_bps == pytest.approx(buy_bps)
    assert row.shadow_pnl == Decimal("2.00") and row.live_pnl == Decimal("0.92")
    assert report.tracking_difference == Decimal("-1.08")
    assert row.shadow_position == row.live_position == 0

    assert await asyncio.to_thread(main, ["--shadow-db", str(store.path), "--shadow-bot",
                                          "shadow", "--live-bot", "twin", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert Decimal(out["tracking_difference"]) == Decimal("-1.08")


def test_unpaired_orders_and_windows() -> None:
    def ev(kind: str, bot: str, cid: str, side: Side, ts: int, price: str = "10") -> object:
        if kind == "intent":
            return OrderIntent(node="n", bot=bot, ts_event=ts, ts_init=ts, client_order_id=cid,
                               cid_counter=1, account="a", venue="v", symbol="X", side=side,
                               qty=Decimal(1))
        return Fill(node="n", bot=bot, ts_event=ts, ts_init=ts, client_order_id=cid,
                    trade_id=cid, account="a", venue="v", symbol="X", side=side,
                    qty=Decimal(1), price=Decimal(price))
    events = [ev("intent", "s", "s1", Side.BUY, 1), ev("fill", "s", "s1", Side.BUY, 2, "10"),
              ev("intent", "l", "l1", Side.BUY, 1), ev("fill", "l", "l1", Side.BUY, 2, "11"),
              ev("intent", "s", "s2", Side.BUY, 50)]  # after the window
    r = tracking_difference(events, events, shadow_bot="s", live_bot="l",  # type: ignore[arg-type]
                            until_ns=10, marks={"X": Decimal(12)})
    (row,) = r.symbols
    assert (row.shadow_intents, row.live_intents, row.paired_orders) == (1, 1, 1)
    assert row.mean_exec_diff_bps == pytest.approx(1000.0)
    assert (row.shadow_pnl, row.live_pnl, r.tracking_difference) == (
        Decimal(2), Decimal(1), Decimal(-1))
