"""Live market data on the real SDK clients against local venue stubs: bars flow, a dropped
stream is reconnected and back-filled with no gap and no duplicate, a silent stream is
replaced, malformed messages are skipped and counted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from qtd.feeds import Bar, Trade
from qtd.feeds.live import LiveFeed, LiveSettings
from qtd.venues.streams import open_live_bars, open_live_feed
from tests.stubs import StubServer
from tests.stubs.market_stub import MINUTE_NS, AlpacaDataStub, BinanceMarketStub

BASE = (time.time_ns() // MINUTE_NS - 60) * MINUTE_NS  # an hour ago, on a minute


class Venue:
    def __init__(self, name: str, stub: Any, server: StubServer, symbol: str) -> None:
        self.name, self.stub, self.server, self.symbol = name, stub, server, symbol

    def settings(self, **kw: Any) -> LiveSettings:
        fast = {"silence_s": 5.0, "reconnect_min_s": 0.05, "reconnect_max_s": 0.2, **kw}
        if self.name == "alpaca":
            return LiveSettings(venue="alpaca", api_key="key", secret_key="secret",
                                asset_class="crypto", stream_url=f"{self.server.ws_url}"
                                "/v1beta3/crypto/us", rest_url=self.server.http_url, **fast)
        return LiveSettings(venue="binance", stream_url=self.server.ws_url + "/",
                            rest_url=self.server.http_url + "/api", **fast)

    def feed(self, **kw: Any) -> LiveFeed:
        # market_open always True: crypto; the closed-market case has its own test
        return open_live_feed(self.name, [self.symbol], "1m", self.settings(**kw),
                              market_open=lambda _ns: True)

    async def bar(self, i: int, **kw: Any) -> None:
        await self.stub.push_bar(self.symbol, BASE + i * MINUTE_NS, str(100 + i), **kw)


@pytest.fixture(params=["alpaca", "binance"])
async def venue(request: pytest.FixtureRequest) -> AsyncIterator[Venue]:
    if request.param == "alpaca":
        stub: Any = AlpacaDataStub()
        symbol = "BTC/USD"
    else:
        stub, symbol = BinanceMarketStub(), "BTCUSDT"
    server = await StubServer(stub.app).start()
    try:
        yield Venue(request.param, stub, server, symbol)
    finally:
        await server.stop()


async def until(pred: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met")
        await asyncio.sleep(0.01)


class Run:
    """A feed running as a task, its items collected."""

    def __init__(self, feed: LiveFeed) -> None:
        self.feed, self.items = feed, []  # type: ignore[var-annotated]
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Run:
        async def collect() -> None:
            async for item in self.feed:
                self.items.append(item)
        self._tasks = [asyncio.create_task(self.feed.run()), asyncio.create_task(collect())]
        await asyncio.wait_for(self.feed.connected.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.feed.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def bars(self) -> list[Bar]:
        return [i for i in self.items if type(i) is Bar]


def reconnected(run: Run, n: int) -> bool:
    """``n`` reconnects done, back-fill included (``connected`` is set after it)."""
    return run.feed.stats.reconnects == n and run.feed.connected.is_set()


def opens(bars: list[Bar]) -> list[int]:
    return [(b.ts_ns - BASE) // MINUTE_NS for b in bars]


async def test_bars_flow_normalised(venue: Venue) -> None:
    async with Run(venue.feed(trades=True)) as run:
        for i in range(3):
            await venue.bar(i)
        if venue.name == "binance":  # an open kline is not a bar
            await venue.stub.push_bar(venue.symbol, BASE + 3 * MINUTE_NS, "1", closed=False)
        await venue.stub.push_trade(venue.symbol, BASE + 3 * MINUTE_NS + 5, "103.5", "0.25")
        await until(lambda: len(run.items) == 4)
    bars = run.bars()
    assert opens(bars) == [0, 1, 2]
    assert bars[1] == Bar(venue.symbol, BASE + MINUTE_NS, MINUTE_NS, Decimal("100"),
                          Decimal("102"), Decimal("99"), Decimal("101"), Decimal("10"))
    trade = run.items[3]
    assert type(trade) is Trade
    assert (trade.price, trade.size) == (Decimal("103.5"), Decimal("0.25"))
    assert run.feed.stats.malformed == 0 and run.feed.stats.reconnects == 0


async def test_dropped_stream_reconnects_and_backfills_without_gap_or_duplicate(
        venue: Venue) -> None:
    async with Run(venue.feed()) as run:
        for i in range(3):
            await venue.bar(i)
        await until(lambda: len(run.bars()) == 3)
        venue.stub.refuse = True        # the venue is unreachable for a while ...
        await venue.stub.drop()
        await until(lambda: run.feed.stats.failed_connects >= 1)
        for i in range(3, 6):           # ... while bars 3-5 happen (only on the tape)
            await venue.bar(i)
        venue.stub.refuse = False
        await until(lambda: reconnected(run, 1))
        await venue.bar(5, record=False)  # the stream repeats the last back-filled bar
        await venue.bar(6)
        await until(lambda: len(run.bars()) == 7)
    assert opens(run.bars()) == [0, 1, 2, 3, 4, 5, 6]
    assert run.feed.stats.backfilled == 3
    assert run.feed.stats.duplicates == 1
    assert venue.stub.rest_calls, "back-fill used the REST API"


async def test_gap_seen_on_first_bar_after_reconnect_is_filled_first(venue: Venue) -> None:
    """The REST API may lag: a bar missing from the first back-fill is fetched before the
    newer stream bar reaches the bots."""
    async with Run(venue.feed()) as run:
        await venue.bar(0)
        await until(lambda: len(run.bars()) == 1)
        venue.stub.refuse = True
        await venue.stub.drop()
        await until(lambda: run.feed.stats.failed_connects >= 1)
        venue.stub.refuse = False
        await until(lambda: reconnected(run, 1))  # back-fill found nothing yet
        assert opens(run.bars()) == [0]
        # bar 1 happened during the outage but reaches the REST API only now
        venue.stub.record(venue.symbol, BASE + MINUTE_NS, {"o": "100", "h": "102",
                                                           "l": "99", "c": "101", "v": "10"})
        await venue.bar(2)
        await until(lambda: len(run.bars()) == 3)
    assert opens(run.bars()) == [0, 1, 2]
    assert run.feed.stats.backfilled == 1


async def test_unreachable_rest_api_emits_after_the_gap_and_counts_it(venue: Venue) -> None:
    async with Run(venue.feed()) as run:
        await venue.bar(0)
        await until(lambda: len(run.bars()) == 1)
        venue.stub.refuse = True
        await venue.stub.drop()
        await until(lambda: run.feed.stats.failed_connects >= 1)
        await venue.bar(1)              # only on the tape, and the REST API is down
        venue.stub.rest_down = True
        venue.stub.refuse = False
        await until(lambda: reconnected(run, 1))
        await venue.bar(2)
        await until(lambda: len(run.bars()) == 2)
    assert opens(run.bars()) == [0, 2]
    assert run.feed.stats.gaps == 1 and run.feed.stats.backfilled == 0
    assert len(venue.stub.rest_calls) == 2  # after the reconnect, and before bar 2


async def test_silent_stream_is_replaced(venue: Venue) -> None:
    async with Run(venue.feed(silence_s=0.3)) as run:
        await venue.bar(0)
        await until(lambda: len(run.bars()) == 1)
        venue.stub.mute = True          # connected but mute
        await until(lambda: run.feed.stats.silences >= 1 and run.feed.stats.reconnects >= 1)
        venue.stub.mute = False
        await venue.bar(1)
        await until(lambda: len(run.bars()) == 2)
    assert opens(run.bars()) == [0, 1]
    assert venue.stub.connections >= 2


async def test_silence_on_a_closed_market_keeps_the_connection(venue: Venue) -> None:
    feed = open_live_feed(venue.name, [venue.symbol], "1m", venue.settings(silence_s=0.1),
                          market_open=lambda _ns: False)
    async with Run(feed) as run:
        await asyncio.sleep(0.6)        # six silence periods pass
        await venue.bar(0)
        await until(lambda: len(run.bars()) == 1)
    assert run.feed.stats.silences == 0 and venue.stub.connections == 1


async def test_malformed_messages_are_counted_and_skipped(venue: Venue) -> None:
    async with Run(venue.feed()) as run:
        await venue.bar(0)
        if venue.name == "alpaca":
            import msgpack
            await venue.stub.send_raw(b"\xc1\xc1 not msgpack")
            await venue.stub.send_raw(msgpack.packb([
                {"T": "b", "S": venue.symbol, "o": "abc", "h": 1.0, "l": 1.0, "c": 1.0,
                 "v": 1.0, "t": "2024-01-01T00:00:00Z"}]))
        else:
            await venue.stub.send_raw("{not json")
            await venue.stub.send_raw('{"stream": "btcusdt@kline_1m", "data": {"e": "kline", '
                                      '"s": "BTCUSDT", "k": {"t": 1, "o": "abc", "x": true}}}')
        await venue.bar(1)
        await until(lambda: len(run.bars()) == 2)
    assert opens(run.bars()) == [0, 1]
    assert run.feed.stats.malformed == 2
    assert run.feed.stats.reconnects == 0


async def test_open_live_bars_entry_point(venue: Venue) -> None:
    got: list[Bar] = []
    async with open_live_bars(venue.name, [venue.symbol], "1m", venue.settings()) as bars:
        async def read() -> None:
            async for b in bars:
                got.append(b)
                if len(got) == 2:
                    return
        reader = asyncio.create_task(read())
        await until(lambda: len(venue.stub.clients) == 1)
        await venue.bar(0)
        await venue.stub.push_trade(venue.symbol, BASE + MINUTE_NS, "100", "1")
        await venue.bar(1)
        await asyncio.wait_for(reader, 10)
    assert opens(got) == [0, 1]


def test_bad_arguments_name_the_field() -> None:
    s = LiveSettings(venue="alpaca", api_key="k", secret_key="s")
    with pytest.raises(ValueError, match="one-minute"):
        open_live_feed("alpaca", ["AAPL"], "5m", s)
    with pytest.raises(ValueError, match="symbols"):
        open_live_feed("alpaca", [], "1m", s)
    with pytest.raises(ValueError, match="Binance klines"):
        open_live_feed("binance", ["BTCUSDT"], "7m", LiveSettings(venue="binance"))
    with pytest.raises(ValueError, match="api_key"):
        open_live_feed("alpaca", ["AAPL"], "1m", LiveSettings(venue="alpaca"))


async def test_alpaca_stock_stream_and_stock_bars_backfill() -> None:
    """StockDataStream (``/v2/iex``) and StockHistoricalDataClient (``/v2/stocks/bars``)."""
    stub = AlpacaDataStub()
    server = await StubServer(stub.app).start()
    settings = LiveSettings(venue="alpaca", api_key="key", secret_key="secret",
                            asset_class="stock", feed="iex",
                            stream_url=f"{server.ws_url}/v2/iex", rest_url=server.http_url,
                            reconnect_min_s=0.05, reconnect_max_s=0.2)
    feed = open_live_feed("alpaca", ["AAPL"], "1m", settings, market_open=lambda _ns: True)
    try:
        async with Run(feed) as run:
            await stub.push_bar("AAPL", BASE, "190.5")
            await until(lambda: len(run.bars()) == 1)
            stub.refuse = True
            await stub.drop()
            await until(lambda: run.feed.stats.failed_connects >= 1)
            await stub.push_bar("AAPL", BASE + MINUTE_NS, "191")
            stub.refuse = False
            await until(lambda: len(run.bars()) == 2)
    finally:
        await server.stop()
    assert opens(run.bars()) == [0, 1] and run.feed.stats.backfilled == 1
    assert run.bars()[1].close == Decimal("191")
    assert stub.subscriptions[0]["bars"] == ["AAPL"]
    assert stub.rest_calls[0]["symbols"] == "AAPL" and stub.rest_calls[0]["feed"] == "iex"


def test_default_market_hours() -> None:
    from qtd.venues.streams import market_open_for
    stocks = market_open_for(LiveSettings(venue="alpaca", api_key="k", secret_key="s"))
    assert stocks is not None
    assert stocks(1_700_000_000 * 10**9 - 3 * 3600 * 10**9)  # Tue 2023-11-14 19:13 UTC: open
    assert not stocks(1_699_747_200 * 10**9)                   # Sun 2023-11-12: closed
    assert market_open_for(LiveSettings(venue="binance")) is None  # crypto: always open
    with pytest.raises(ValueError, match="calendar"):
        market_open_for(LiveSettings(venue="binance", calendar="NOPE"))
