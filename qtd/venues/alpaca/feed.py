"""Alpaca market data for :class:`qtd.feeds.live.LiveFeed`: alpaca-py's ``StockDataStream`` /
``CryptoDataStream`` for minute bars and trades, ``StockHistoricalDataClient`` /
``CryptoHistoricalDataClient`` for back-fill.

Formats (Alpaca Market Data API v2 docs, "Real-time data" and "Historical bars"):

* stream ``wss://stream.data.alpaca.markets/v2/{iex|sip}`` (crypto:
  ``/v1beta3/crypto/us``), msgpack frames (alpaca-py asks for ``application/msgpack``), each a
  list of messages ``{"T": type, ...}``: ``success`` (connected / authenticated),
  ``subscription``, ``error`` (``code``, ``msg``), ``b`` minute bar (``S`` symbol, ``o h l
  c v``, ``t`` bar start: a msgpack timestamp, or RFC 3339 text in JSON), ``t`` trade (``S``,
  ``p`` price, ``s`` size, ``t`` time, ``i`` id);
* ``GET /v2/stocks/bars?symbols&timeframe&start&end`` answers ``{"bars": {symbol: [{"t",
  "o", "h", "l", "c", "v", ...}]}, "next_page_token"}`` (alpaca-py follows the pages).

The stream carries minute bars only, so the feed's interval must be one minute. alpaca-py
connects, authenticates and subscribes (``_start_ws``, ``_send_subscribe_msg``, the steps of
its own ``_run_forever``, called only by the small subclasses below: alpaca-py's internals
are touched in this module and ``broker.py``, nowhere else); frames are then read here so
that the feed sees every reconnect (to back-fill), applies its silence watchdog and skips
unreadable frames one by one. Its REST clients are synchronous (``requests``) and run in a
worker thread.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import msgpack  # type: ignore[import-untyped]
import websockets
from alpaca.data.enums import DataFeed
from alpaca.data.historical.crypto import CryptoHistoricalDataClient
from alpaca.data.historical.stock import StockHistoricalDataClient
from alpaca.data.live.crypto import CryptoDataStream
from alpaca.data.live.stock import StockDataStream
from alpaca.data.requests import CryptoBarsRequest, StockBarsRequest
from alpaca.data.timeframe import TimeFrame

from qtd.feeds.bars import NS_PER_S, Bar, Trade, datetime_to_ns, ns_to_datetime
from qtd.feeds.live import FeedLost, LiveSettings, Parsed

MINUTE_NS = 60 * NS_PER_S
REST_TIMEOUT_S = 30.0


def _ts(raw: Any, where: str) -> int:
    if isinstance(raw, msgpack.Timestamp):
        return int(raw.to_unix_nano())
    if isinstance(raw, str):
        try:
            return datetime_to_ns(datetime.fromisoformat(raw))
        except ValueError:
            pass
    raise ValueError(f"{where}.t = {raw!r}: not a timestamp")


def _dec(msg: dict[str, Any], key: str, where: str, *, positive: bool) -> Decimal:
    raw = msg.get(key)
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ValueError(f"{where}.{key} = {raw!r}: not a number")
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        raise ValueError(f"{where}.{key} = {raw!r}: not a number") from None
    if not value.is_finite() or value < 0 or (positive and value == 0):
        raise ValueError(f"{where}.{key} = {raw!r}: must be finite and "
                         f"{'> 0' if positive else '>= 0'}")
    return value


def bar_of(msg: dict[str, Any], symbol: str) -> Bar:
    """An Alpaca bar (stream ``b`` message or REST bar object) as a one-minute qtd Bar.

    Raises:
        ValueError: a field is missing or invalid (names it).
    """
    o, h = _dec(msg, "o", "bar", positive=True), _dec(msg, "h", "bar", positive=True)
    low, c = _dec(msg, "l", "bar", positive=True), _dec(msg, "c", "bar", positive=True)
    if not (low <= min(o, c) and h >= max(o, c)):
        raise ValueError(f"bar: o={o} h={h} l={low} c={c}: high/low do not bound open/close")
    return Bar(symbol, _ts(msg.get("t"), "bar"), MINUTE_NS, o, h, low, c,
               _dec(msg, "v", "bar", positive=False))


def parse_messages(msgs: Any, symbols: set[str], parsed: Parsed) -> None:
    """Add the items of one decoded frame (a list of messages) to ``parsed``."""
    if not isinstance(msgs, list):
        parsed.problems.append(f"frame {str(msgs)[:80]!r}: not a list of messages")
        return
    for msg in msgs:
        kind = msg.get("T") if isinstance(msg, dict) else None
        if kind in ("success", "subscription"):
            continue
        if kind == "error":
            parsed.errors.append(f"{msg.get('code')}: {msg.get('msg')}")
            continue
        if kind not in ("b", "t"):
            if kind not in ("q", "u", "d", "s", "l", "c", "x", "o", "n"):
                parsed.problems.append(f"message {str(msg)[:80]!r}: unknown type T")
            continue
        sym = msg.get("S")
        if sym not in symbols:
            parsed.problems.append(f"S = {sym!r}: not a subscribed symbol")
            continue
        try:
            if kind == "b":
                parsed.items.append(bar_of(msg, sym))
            else:
                parsed.items.append(Trade(sym, _ts(msg.get("t"), "trade"),
                                          _dec(msg, "p", "trade", positive=True),
                                          _dec(msg, "s", "trade", positive=True)))
            parsed.data += 1
        except ValueError as exc:
            parsed.problems.append(f"{sym}: {exc}")


# alpaca-py's streams run their own loop (``run()``) and read frames themselves; qtd reads
# the websocket on its loop. Its internals are touched here only, by these subclasses.


class _StockStream(StockDataStream):
    async def open(self) -> None:
        """Connect, authenticate and subscribe (alpaca-py's coroutine steps)."""
        await self._start_ws()
        await self._send_subscribe_msg()

    @property
    def websocket(self) -> Any:
        """The open websocket, or None."""
        return self._ws


class _CryptoStream(CryptoDataStream):
    async def open(self) -> None:
        """Connect, authenticate and subscribe (alpaca-py's coroutine steps)."""
        await self._start_ws()
        await self._send_subscribe_msg()

    @property
    def websocket(self) -> Any:
        """The open websocket, or None."""
        return self._ws


class _StockBars(StockHistoricalDataClient):
    def close(self) -> None:
        """Close the HTTP session (alpaca-py has no public close)."""
        self._session.close()


class _CryptoBars(CryptoHistoricalDataClient):
    def close(self) -> None:
        """Close the HTTP session (alpaca-py has no public close)."""
        self._session.close()


class AlpacaSession:
    """Alpaca market-data connection (module docstring) for :class:`~qtd.feeds.live.LiveFeed`.

    Args:
        symbols: Alpaca symbols (``"AAPL"``; crypto ``"BTC/USD"``).
        interval_ns: must be one minute (the stream's bar length).
        settings: keys, URLs, stock feed, asset class, trades.

    Raises:
        ValueError: another interval, or no API key.
    """

    def __init__(self, symbols: list[str], interval_ns: int, settings: LiveSettings) -> None:
        if interval_ns != MINUTE_NS:
            raise ValueError(f"interval = {interval_ns / NS_PER_S:g} s: Alpaca streams "
                             "one-minute bars only (use '1m')")
        if not settings.api_key or not settings.secret_key:
            raise ValueError("api_key / secret_key: Alpaca market data needs an API key")
        self.symbols, self.settings = set(symbols), settings
        self.crypto = settings.asset_class == "crypto"
        self._symbols = list(symbols)
        self._stream: _StockStream | _CryptoStream = self._make_stream(self._symbols)
        key, secret, url = settings.api_key, settings.secret_key, settings.rest_url
        self._rest: _StockBars | _CryptoBars = (
            _CryptoBars(key, secret, raw_data=True, url_override=url)
            if self.crypto else
            _StockBars(key, secret, raw_data=True, url_override=url))

    def _make_stream(self, symbols: list[str]) -> _StockStream | _CryptoStream:
        s = self.settings
        stream: _StockStream | _CryptoStream = (
            _CryptoStream(s.api_key, s.secret_key, raw_data=True, url_override=s.stream_url)
            if self.crypto else
            _StockStream(s.api_key, s.secret_key, raw_data=True, url_override=s.stream_url,
                         feed=DataFeed(s.feed)))
        stream.subscribe_bars(_ignore, *symbols)  # registers the channel; frames read here
        if s.trades:
            stream.subscribe_trades(_ignore, *symbols)
        return stream

    async def connect(self) -> None:
        self._stream = self._make_stream(self._symbols)
        await self._stream.open()

    async def recv(self) -> Any:
        ws = self._stream.websocket
        if ws is None:
            raise FeedLost("not connected")
        try:
            return await ws.recv()
        except websockets.ConnectionClosed as exc:
            raise FeedLost(f"stream closed: {exc}") from exc

    def parse(self, frame: Any) -> Parsed:
        parsed = Parsed()
        try:
            msgs = msgpack.unpackb(frame) if isinstance(frame, bytes) else None
        except (ValueError, msgpack.UnpackException) as exc:
            parsed.problems.append(f"frame {frame[:40]!r}: not msgpack ({exc})")
            return parsed
        if msgs is None:
            parsed.problems.append(f"frame {str(frame)[:40]!r}: not a binary msgpack frame")
            return parsed
        parse_messages(msgs, self.symbols, parsed)
        return parsed

    async def fetch_bars(self, symbol: str, start_ns: int, end_ns: int) -> list[Bar]:
        """One-minute bars from the historical data API (alpaca-py follows the pages).

        Raises:
            Exception: alpaca-py / requests errors, TimeoutError after 30 s.
        """
        start, end = ns_to_datetime(start_ns), ns_to_datetime(end_ns - 1000)
        req: Any
        if self.crypto:
            req = CryptoBarsRequest(symbol_or_symbols=[symbol], timeframe=TimeFrame.Minute,
                                    start=start, end=end)
            call = self._rest.get_crypto_bars  # type: ignore[union-attr]
        else:
            req = StockBarsRequest(symbol_or_symbols=[symbol], timeframe=TimeFrame.Minute,
                                   start=start, end=end, feed=DataFeed(self.settings.feed))
            call = self._rest.get_stock_bars  # type: ignore[union-attr]
        raw = await asyncio.wait_for(asyncio.to_thread(call, req), REST_TIMEOUT_S)
        return [bar_of(b, symbol) for b in (raw or {}).get(symbol, [])]

    async def disconnect(self) -> None:
        await self._stream.close()

    async def close(self) -> None:
        await self.disconnect()
        self._rest.close()


async def _ignore(_: Any) -> None:
    return None

