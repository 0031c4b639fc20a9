"""Binance spot market data for :class:`qtd.feeds.live.LiveFeed`: kline and trade streams,
REST klines for back-fill.

Formats (Binance Spot API docs, ``web-socket-streams.md`` "Kline/Candlestick Streams",
"Trade Streams", "Combined streams"; ``rest-api.md`` "Kline/Candlestick data"):

* combined stream ``<base>stream?streams=btcusdt@kline_1m/btcusdt@trade`` (symbols lower
  case) wraps each event as ``{"stream": name, "data": event}``;
* kline event ``{"e": "kline", "E", "s", "k": {"t": open ms, "T": close ms, "s", "i",
  "o", "c", "h", "l", "v", "x": closed?, ...}}``, sent about every 1-2 s while the kline
  is open; only ``x == true`` becomes a :class:`~qtd.feeds.Bar`, every one proves the stream
  is alive;
* trade event ``{"e": "trade", "E", "s", "t": trade id, "p", "q", "T": trade time ms, ...}``;
* ``GET /api/v3/klines?symbol&interval&startTime&endTime&limit`` (limit ≤ 1000) answers
  ``[[open ms, "o", "h", "l", "c", "v", close ms, ...], ...]``, the last one possibly still
  open (dropped by the feed: only bars whose close has passed are emitted).

The stream base defaults to python-binance's ``BinanceSocketManager.STREAM_URL``; REST goes
through python-binance's ``AsyncClient.get_klines`` (``API_URL`` pointed at ``rest_url``).
The WebSocket itself is opened with ``websockets`` rather than python-binance 1.0.37's
``ReconnectingWebsocket``, whose hidden reconnects (the feed must know of each one to
back-fill), read loop that stops on one undecodable frame, and 5-attempt limit do not fit
a feed that must reconnect forever and skip bad frames.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec
import websockets
from binance.async_client import AsyncClient  # type: ignore[import-untyped]
from binance.ws.streams import BinanceSocketManager  # type: ignore[import-untyped]
from websockets.asyncio.client import ClientConnection, connect

from qtd.events import DECODE_ERRORS
from qtd.feeds.bars import NS_PER_S, Bar, Trade, epoch_to_ns
from qtd.feeds.live import FeedLost, LiveSettings, Parsed
from qtd.venues.binance.endpoints import LIVE_API

KLINE_LIMIT = 1000
_INTERVALS = {60: "1m", 180: "3m", 300: "5m", 900: "15m", 1800: "30m", 3600: "1h",
              7200: "2h", 14400: "4h", 21600: "6h", 28800: "8h", 43200: "12h", 86400: "1d",
              259200: "3d", 604800: "1w"}
_decoder = msgspec.json.Decoder()


def binance_interval(interval_ns: int) -> str:
    """Binance's name of a kline interval (``"1m"``, ``"1h"``, ``"1d"`` ...).

    Raises:
        ValueError: Binance has no kline of that length (names the allowed ones).
    """
    name = _INTERVALS.get(interval_ns // NS_PER_S) if interval_ns % NS_PER_S == 0 else None
    if name is None:
        raise ValueError(f"interval = {interval_ns / NS_PER_S:g} s: Binance klines are "
                         f"{', '.join(_INTERVALS.values())}")
    return name


def _dec(obj: dict[str, Any], key: str, where: str, *, positive: bool) -> Decimal:
    raw = obj.get(key)
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        raise ValueError(f"{where}.{key} = {raw!r}: not a decimal number") from None
    if not value.is_finite() or value < 0 or (positive and value == 0):
        rule = "> 0" if positive else ">= 0"
        raise ValueError(f"{where}.{key} = {raw!r}: must be finite and {rule}")
    return value


def _int(obj: dict[str, Any], key: str, where: str) -> int:
    raw = obj.get(key)
    if type(raw) is not int or raw <= 0:
        raise ValueError(f"{where}.{key} = {raw!r}: must be a positive integer (epoch ms)")
    return raw


def kline_bar(k: dict[str, Any], symbol: str, interval_ns: int) -> Bar:
    """A stream kline (``k`` object) as a qtd Bar (open time, length ``interval_ns``).

    Raises:
        ValueError: a field is missing or invalid (names it).
    """
    o, h = _dec(k, "o", "k", positive=True), _dec(k, "h", "k", positive=True)
    low, c = _dec(k, "l", "k", positive=True), _dec(k, "c", "k", positive=True)
    if not (low <= min(o, c) and h >= max(o, c)):
        raise ValueError(f"k: o={o} h={h} l={low} c={c}: high/low do not bound open/close")
    return Bar(symbol, epoch_to_ns(_int(k, "t", "k")), interval_ns, o, h, low, c,
               _dec(k, "v", "k", positive=False))


def rest_kline_bar(row: list[Any], symbol: str, interval_ns: int) -> Bar:
    """One ``/api/v3/klines`` row as a qtd Bar.

    Raises:
        ValueError: the row is not ``[open ms, o, h, l, c, v, ...]``.
    """
    if not isinstance(row, list) or len(row) < 6:
        raise ValueError(f"kline row {row!r}: expected [openTime, o, h, l, c, v, ...]")
    k = {"t": row[0], "o": row[1], "h": row[2], "l": row[3], "c": row[4], "v": row[5]}
    return kline_bar(k, symbol, interval_ns)


def parse_event(msg: Any, names: dict[str, str], interval_ns: int, parsed: Parsed) -> None:
    """Add one combined-stream message's item (if any) to ``parsed`` (problems included)."""
    data = msg.get("data") if isinstance(msg, dict) else None
    if not isinstance(data, dict):
        if isinstance(msg, dict) and ("result" in msg or "id" in msg):
            return  # an answer to a request, not market data
        parsed.problems.append(f"message {str(msg)[:120]!r}: no 'data' object")
        return
    kind, sym = data.get("e"), names.get(str(data.get("s", "")).upper())
    if sym is None:
        parsed.problems.append(f"data.s = {data.get('s')!r}: not a subscribed symbol")
        return
    try:
        if kind == "kline":
            k = data.get("k")
            if not isinstance(k, dict):
                raise ValueError(f"data.k = {k!r}: missing kline object")
            parsed.data += 1
            if k.get("x") is True:
                parsed.items.append(kline_bar(k, sym, interval_ns))
        elif kind == "trade":
            parsed.data += 1
            parsed.items.append(Trade(sym, epoch_to_ns(_int(data, "T", "data")),
                                      _dec(data, "p", "data", positive=True),
                                      _dec(data, "q", "data", positive=True)))
        else:
            parsed.problems.append(f"data.e = {kind!r}: not a kline or trade event")
    except ValueError as exc:
        parsed.problems.append(f"{sym}: {exc}")


class BinanceSession:
    """Binance market-data connection (module docstring) for :class:`~qtd.feeds.live.LiveFeed`.

    Args:
        symbols: Binance symbols, e.g. ``["BTCUSDT"]``.
        interval_ns: kline length, ns (a Binance interval).
        settings: URLs and whether trades are streamed.

    Raises:
        ValueError: an interval Binance does not have.
    """

    def __init__(self, symbols: list[str], interval_ns: int, settings: LiveSettings) -> None:
        self.interval_ns, self.interval = interval_ns, binance_interval(interval_ns)
        self.names = {s.upper(): s for s in symbols}
        streams = [f"{s.lower()}@kline_{self.interval}" for s in symbols]
        if settings.trades:
            streams += [f"{s.lower()}@trade" for s in symbols]
        base = settings.stream_url or BinanceSocketManager.STREAM_URL.format("com")
        self.url = f"{base.rstrip('/')}/stream?streams={'/'.join(streams)}"
        self.rest_url = settings.rest_url or LIVE_API
        self._ws: ClientConnection | None = None
        self._client: AsyncClient | None = None

    async def connect(self) -> None:
        self._ws = await connect(self.url, open_timeout=10, max_queue=4096)

    async def recv(self) -> Any:
        if self._ws is None:
            raise FeedLost("not connected")
        try:
            return await self._ws.recv()
        except websockets.ConnectionClosed as exc:
            raise FeedLost(f"stream closed: {exc}") from exc

    def parse(self, frame: Any) -> Parsed:
        parsed = Parsed()
        try:
            msg = _decoder.decode(frame)
        except (*DECODE_ERRORS, TypeError) as exc:
            parsed.problems.append(f"frame {str(frame)[:80]!r}: not JSON ({exc})")
            return parsed
        parse_event(msg, self.names, self.interval_ns, parsed)
        return parsed

    async def fetch_bars(self, symbol: str, start_ns: int, end_ns: int) -> list[Bar]:
        """``AsyncClient.get_klines`` from ``start_ns`` to ``end_ns``, paged by 1000.

        Raises:
            Exception: python-binance / aiohttp errors (the feed logs and retries later).
        """
        client = await self._rest()
        out: list[Bar] = []
        start_ms, end_ms = start_ns // 1_000_000, (end_ns - 1) // 1_000_000
        while start_ms <= end_ms:
            rows = await client.get_klines(symbol=symbol, interval=self.interval,
                                           startTime=start_ms, endTime=end_ms,
                                           limit=KLINE_LIMIT)
            out += [rest_kline_bar(r, symbol, self.interval_ns) for r in rows]
            if len(rows) < KLINE_LIMIT:
                break
            start_ms = out[-1].ts_ns // 1_000_000 + self.interval_ns // 1_000_000
        return out

    async def _rest(self) -> AsyncClient:
        if self._client is None:
            cls: Any = type("QtdMarketClient", (AsyncClient,), {"API_URL": self.rest_url})
            self._client = await cls.create()
        return self._client

    async def disconnect(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    async def close(self) -> None:
        await self.disconnect()
        if self._client is not None:
            await self._client.close_connection()
            self._client = None

