"""Live market data: one venue stream, normalised to qtd :class:`~qtd.feeds.Bar` /
:class:`~qtd.feeds.Trade`, reconnected, watched for silence and back-filled.

This module is venue-neutral: a venue plugs in a :class:`VenueSession` (connect, receive,
parse, fetch bars) from its package (:mod:`qtd.venues.alpaca.feed`,
:mod:`qtd.venues.binance.feed`). The entry points that pick the session by venue name are in
:mod:`qtd.venues.streams`::

    from qtd.feeds.live import LiveSettings
    from qtd.venues.streams import open_live_bars, open_live_feed

    settings = LiveSettings(venue="binance")              # or venue="alpaca", api_key=...
    async with open_live_bars("binance", ["BTCUSDT"], "1m", settings) as bars:
        async for bar in bars:                            # qtd Bar, closed bars only
            ...

    feed = open_live_feed("alpaca", ["AAPL"], "1m", settings, on_price=paper_tap)
    task = asyncio.create_task(feed.run())                # bars and trades: ``async for`` feed
    ...; await feed.close()

Guarantees of :class:`LiveFeed` (per symbol):

* **Closed bars only, in order, no duplicates.** A bar is emitted once its interval closed
  (Binance ``k.x == true``; Alpaca sends a minute bar after its minute). A bar whose open
  time is not after the last one emitted for its symbol is dropped and counted
  (:attr:`FeedStats.duplicates`).
* **Reconnect with exponential backoff** (``tenacity``: ``reconnect_min_s`` doubling to
  ``reconnect_max_s``, plus jitter); the backoff starts over once a connection delivered
  market data, so a stream that connects and drops at once is not hammered.
* **Silence watchdog.** No market data for ``silence_s`` seconds (default 5 on Binance; 65
  on Alpaca, whose stream is silent between minute bars) while the market is open
  (``market_open(now_ns)``; crypto: always) → the connection is presumed dead ("connected
  but mute") and replaced (:attr:`FeedStats.silences`). While the market is closed, silence
  is expected and the connection is kept. Subscription acks and other control frames do not
  count as data.
* **Back-fill after every reconnect.** Before the first message of a new connection is
  read, the closed bars each symbol missed since its last emitted bar are fetched from the
  venue's REST API (Alpaca ``get_stock_bars``/``get_crypto_bars``, Binance ``klines``) and
  emitted in order; the first stream bar of the new connection is checked again for a gap
  (a REST API may lag the stream by a bar) and a gap is filled before it is emitted. Bots
  therefore never see a newer bar before an older one. If the REST API cannot be reached
  even then, the bar is emitted after the gap, logged as an error and counted
  (:attr:`FeedStats.gaps`): bots are not stalled behind an unreachable API. Trades are not
  back-filled (the bar series is the complete record; a missed trade is in its bar).
* **Bad input never stops the feed.** A frame that cannot be decoded, or a message whose
  fields are missing or not numbers, is skipped and counted (:attr:`FeedStats.malformed`)
  with a log line naming the field and value; the connection stays up.
* **Back-pressure, not loss.** Items wait in a bounded queue (``queue_size``); a consumer
  that falls behind slows the reader instead of losing bars.

``on_price(symbol, price)`` (optional, async) runs for each item before it is queued, like
:class:`qtd.agent.market.ReplayFeed`: a paper broker fills resting orders and the risk engine
marks the symbol before any bot acts on the same price. This is qtd's paper (and shadow)
mode on live data: the venue's paper *endpoint* is the other kind of paper mode
(``AlpacaBroker(paper=True)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Annotated, Any, Final, Literal, Protocol

import msgspec
from msgspec import Meta
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from qtd.feeds.bars import Bar, MarketData, Trade

log = logging.getLogger("qtd.feeds.live")

OnPrice = Callable[[str, Decimal], Awaitable[None]]
MarketOpen = Callable[[int], bool]
_END: Final = object()


class LiveSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How to reach one venue's market data and how to watch it.

    Attributes:
        venue: the venue's registry name (:mod:`qtd.venues`), e.g. ``"alpaca"``.
        api_key: API key (Alpaca requires one for data; Binance market data needs none).
        secret_key: API secret (never logged).
        asset_class: Alpaca only: ``"stock"`` (StockDataStream) or ``"crypto"``.
        feed: Alpaca stock feed, ``"iex"`` (free) or ``"sip"``.
        stream_url: WebSocket URL override (Alpaca: the full data-stream URL; Binance: the
            stream base, e.g. ``"wss://stream.binance.com:9443/"``).
        rest_url: REST base override (Alpaca data API base without ``/v2``; Binance
            ``.../api``).
        trades: also stream trades (ticks), not only bars.
        silence_s: no market data for this long (seconds) on an open market → reconnect.
            Default (None): 5 s on Binance, whose kline stream pushes an update every 2 s
            (Binance "Kline/Candlestick Streams": update speed 2000 ms); 65 s on Alpaca,
            whose stream sends one bar per minute and nothing else on a quiet symbol
            (a minute plus 5 s of publication delay): the venue's ``LiveData.silence_s``
            (:func:`qtd.venues.streams.silence_for`).
        reconnect_min_s: first reconnect delay, seconds (doubles per failed attempt).
        reconnect_max_s: longest reconnect delay, seconds.
        queue_size: items buffered for the consumer before the reader waits.
        calendar: exchange-calendars code deciding when the market is open (silence only
            counts then); default: the venue's (``"XNYS"`` for Alpaca stocks), else always
            open (:func:`qtd.venues.streams.market_open_for`).
    """

    venue: str
    api_key: str = ""
    secret_key: str = ""
    asset_class: Literal["stock", "crypto"] = "stock"
    feed: Literal["iex", "sip"] = "iex"
    stream_url: str | None = None
    rest_url: str | None = None
    trades: bool = False
    silence_s: Annotated[float, Meta(gt=0)] | None = None
    reconnect_min_s: Annotated[float, Meta(gt=0)] = 0.5
    reconnect_max_s: Annotated[float, Meta(gt=0)] = 30.0
    queue_size: Annotated[int, Meta(gt=0)] = 10_000
    calendar: str | None = None


class FeedStats(msgspec.Struct, kw_only=True):
    """Counters of one :class:`LiveFeed` (for status, metrics and tests).

    Attributes:
        connects: successful connections (the first included).
        reconnects: connections after the first.
        failed_connects: connection attempts that failed.
        silences: connections dropped by the silence watchdog.
        malformed: messages skipped as unreadable or invalid.
        duplicates: bars dropped as already emitted (same or older open time).
        backfilled: bars emitted from the REST API.
        bars: bars emitted (stream and back-fill).
        trades: trades emitted.
        venue_errors: error messages the venue sent on the stream.
        gaps: bars emitted after a gap the REST API could not fill (it was unreachable).
    """

    connects: int = 0
    reconnects: int = 0
    failed_connects: int = 0
    silences: int = 0
    malformed: int = 0
    duplicates: int = 0
    backfilled: int = 0
    bars: int = 0
    trades: int = 0
    venue_errors: int = 0
    gaps: int = 0


class FeedLost(Exception):
    """The connection is gone (dropped, refused, silent). ``delivered``: it had carried
    market data (the reconnect backoff starts over); ``malformed``: it was given up because
    of a frame that could not be read (counted in :attr:`FeedStats.malformed`)."""

    def __init__(self, reason: str, *, delivered: bool = False, malformed: bool = False) -> None:
        super().__init__(reason)
        self.delivered, self.malformed = delivered, malformed


class Parsed(msgspec.Struct):
    """What one frame held: normalised items, how many market-data messages it carried
    (in-progress bars included: they prove the stream is alive), problems (one line each,
    naming field and value), and venue error messages."""

    items: list[MarketData] = msgspec.field(default_factory=list)
    data: int = 0
    problems: list[str] = msgspec.field(default_factory=list)
    errors: list[str] = msgspec.field(default_factory=list)


class VenueSession(Protocol):
    """One venue's market-data connection (e.g. :mod:`qtd.venues.binance.feed`)."""

    async def connect(self) -> None:
        """Connect, authenticate and subscribe. Raises on failure (any exception)."""
        ...

    async def recv(self) -> Any:
        """One raw frame. Raises :class:`FeedLost` when the connection is gone."""
        ...

    def parse(self, frame: Any) -> Parsed:
        """Normalise one frame; never raises."""
        ...

    async def fetch_bars(self, symbol: str, start_ns: int, end_ns: int) -> list[Bar]:
        """Closed bars of ``symbol`` opening in ``[start_ns, end_ns)`` (UTC ns), oldest
        first, from the venue's REST API."""
        ...

    async def disconnect(self) -> None:
        """Close the stream connection (the session may connect again)."""
        ...

    async def close(self) -> None:
        """Release everything (HTTP sessions too)."""
        ...


class LiveFeed:
    """A live, gap-free stream of bars (and trades) for some symbols of one venue.

    Args:
        session: the venue connection.
        symbols: symbols as the venue names them (``"AAPL"``, ``"BTC/USD"``, ``"BTCUSDT"``).
        interval_ns: bar length, ns.
        settings: watchdog, backoff and queue settings.
        market_open: ``(now_ns) -> bool``; silence counts only while True (default: always).
        on_price: async ``(symbol, price)`` run before each item is queued.
        default_silence_s: the silence watchdog's limit, seconds, when
            ``settings.silence_s`` is unset (the venue's ``LiveData.silence_s``).
    """

    def __init__(
        self, session: VenueSession, symbols: list[str], interval_ns: int,
        settings: LiveSettings, *, market_open: MarketOpen | None = None,
        on_price: OnPrice | None = None, default_silence_s: float = 5.0,
    ) -> None:
        self.session, self.symbols, self.interval_ns = session, list(symbols), interval_ns
        self.settings, self.market_open, self.on_price = settings, market_open, on_price
        self.silence_s = (default_silence_s if settings.silence_s is None
                          else settings.silence_s)
        self.stats = FeedStats()
        self.connected = asyncio.Event()
        self._queue: asyncio.Queue[object] = asyncio.Queue(settings.queue_size)
        self._last: dict[str, int] = {}
        self._recheck: set[str] = set()
        self._fails = 0
        self._closed = False
        self._backoff = wait_exponential_jitter(multiplier=settings.reconnect_min_s,
                                                max=settings.reconnect_max_s,
                                                jitter=settings.reconnect_min_s)

    # --- consumer side --------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[MarketData]:
        return self._drain()

    async def _drain(self) -> AsyncIterator[MarketData]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            yield item  # type: ignore[misc]

    async def close(self) -> None:
        """Stop reading (the consumer's iteration ends) and release the session."""
        self._closed = True
        with contextlib.suppress(Exception):
            await self.session.disconnect()
        with contextlib.suppress(Exception):
            await self.session.close()
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_END)

    # --- reader ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Read the venue until :meth:`close` or cancellation (run as a task)."""
        retrying = AsyncRetrying(retry=retry_if_exception_type(FeedLost), wait=self._wait,
                                 before_sleep=self._before_sleep, reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    await self._one_connection()
        finally:
            with contextlib.suppress(Exception):
                await self.session.disconnect()

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, FeedLost) and exc.delivered:
            self._fails = 0
        self._fails += 1
        shim: Any = types.SimpleNamespace(attempt_number=self._fails)
        return float(self._backoff(shim))

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("live feed %s: %s; reconnecting in %.2f s", self.settings.venue, exc, wait,
                    extra={"venue": self.settings.venue})

    async def _one_connection(self) -> None:
        if self._closed:
            return
        self.connected.clear()
        try:
            await self.session.connect()
        except FeedLost:
            self.stats.failed_connects += 1
            raise
        except Exception as exc:
            self.stats.failed_connects += 1
            with contextlib.suppress(Exception):
                await self.session.disconnect()
            raise FeedLost(f"connect failed: {type(exc).__name__}: {exc}") from exc
        self.stats.connects += 1
        if self.stats.connects > 1:
            self.stats.reconnects += 1
            await self._backfill_all()
        self.connected.set()
        delivered = await self._pump()
        with contextlib.suppress(Exception):
            await self.session.disconnect()
        if not self._closed:
            raise FeedLost("stream lost", delivered=delivered)

    async def _pump(self) -> bool:
        """Read frames until the connection is lost (or silent); True if it carried data."""
        loop = asyncio.get_running_loop()
        silence = self.silence_s
        last, delivered = loop.time(), False
        while not self._closed:
            left = silence - (loop.time() - last)
            try:
                frame = await asyncio.wait_for(self.session.recv(), max(left, 0.001))
            except TimeoutError:
                if self._market_open():
                    self.stats.silences += 1
                    with contextlib.suppress(Exception):
                        await self.session.disconnect()
                    log.warning("live feed %s: no market data for %.1f s on an open market",
                                self.settings.venue, silence)
                    return delivered
                last = loop.time()  # closed market: silence is expected
                continue
            except FeedLost as lost:
                if lost.malformed:
                    self.stats.malformed += 1
                return delivered
            parsed = self.session.parse(frame)
            self._note(parsed)
            if parsed.data:
                last, delivered = loop.time(), True
            for item in parsed.items:
                await self._emit(item)
        return delivered

    def _note(self, parsed: Parsed) -> None:
        for problem in parsed.problems:
            self.stats.malformed += 1
            log.warning("live feed %s: skipped message: %s", self.settings.venue, problem)
        for err in parsed.errors:
            self.stats.venue_errors += 1
            log.error("live feed %s: venue error: %s", self.settings.venue, err)

    def _market_open(self) -> bool:
        return True if self.market_open is None else self.market_open(time.time_ns())

    # --- ordering, dedup and back-fill ----------------------------------------------------

    async def _emit(self, item: MarketData, *, backfill: bool = False) -> None:
        if type(item) is Trade:
            await self._put(item, item.price)
            self.stats.trades += 1
            return
        assert isinstance(item, Bar)
        sym, last = item.symbol, self._last.get(item.symbol)
        if last is not None and item.ts_ns <= last:
            self.stats.duplicates += 1
            return
        if sym in self._recheck and not backfill:
            self._recheck.discard(sym)
            if last is not None and item.ts_ns > last + self.interval_ns and \
                    not await self._backfill(sym, last + self.interval_ns, item.ts_ns):
                self.stats.gaps += 1  # the REST API could not be asked: emitted with a gap
                log.error("live feed %s: %s bars %s..%s could not be back-filled; the bots "
                          "see a gap", self.settings.venue, sym, last + self.interval_ns,
                          item.ts_ns)
        await self._put(item, item.close)
        self._last[sym] = item.ts_ns
        self.stats.bars += 1
        if backfill:
            self.stats.backfilled += 1

    async def _backfill_all(self) -> None:
        now = time.time_ns()
        for sym in self.symbols:
            last = self._last.get(sym)
            self._recheck.add(sym)
            if last is not None:
                await self._backfill(sym, last + self.interval_ns, now)

    async def _backfill(self, sym: str, start_ns: int, end_ns: int) -> bool:
        """Emit the closed bars of ``[start_ns, end_ns)`` from REST; False if it failed."""
        if start_ns >= end_ns:
            return True
        try:
            bars = await self.session.fetch_bars(sym, start_ns, end_ns)
        except Exception as exc:  # the first stream bar of the symbol tries again
            log.error("live feed %s: back-fill of %s failed: %s: %s", self.settings.venue, sym,
                      type(exc).__name__, exc)
            self._recheck.add(sym)
            return False
        now = time.time_ns()
        for bar in sorted(bars, key=lambda b: b.ts_ns):
            if start_ns <= bar.ts_ns < end_ns and bar.ts_ns + self.interval_ns <= now:
                await self._emit(bar, backfill=True)
        return True

    async def _put(self, item: MarketData, price: Decimal) -> None:
        if self.on_price is not None:
            try:
                await self.on_price(item.symbol, price)
            except Exception:  # a consumer's bug must not stop the feed
                log.exception("live feed %s: on_price failed for %s", self.settings.venue,
                              item.symbol)
        await self._queue.put(item)

