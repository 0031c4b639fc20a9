"""Stubs of the venues' market-data services, for offline live-feed tests.

:class:`AlpacaDataStub` speaks Alpaca Market Data API v2 (docs "Real-time data",
alpaca.markets/deprecated/docs/api-documentation/api-v2/market-data/alpaca-data-api-v2/real-time/,
and "Historical bars", alpaca.markets/docs/broker/market-data/historical/): WebSocket
``/v2/{feed}`` and ``/v1beta3/crypto/us`` in msgpack (``[{"T": "success", "msg":
"connected"}]`` → ``auth`` → ``authenticated`` → ``subscribe`` → ``subscription``; bars ``{"T":
"b", "S", "o", "h", "l", "c", "v", "t"}`` with ``t`` a msgpack timestamp, trades ``{"T":
"t", "S", "p", "s", "t", "i"}``), and REST ``GET /v2/stocks/bars`` /
``/v1beta3/crypto/us/bars`` (``{"bars": {sym: [...]}, "next_page_token"}``, ``t`` RFC 3339).

:class:`BinanceMarketStub` speaks Binance Spot (``web-socket-streams.md``, "Combined
streams", "Kline/Candlestick Streams", "Trade Streams"; ``rest-api.md`` "Kline/Candlestick
data"): WebSocket ``/stream?streams=...`` sending ``{"stream", "data"}``, REST
``/api/v3/ping``, ``/api/v3/time``, ``/api/v3/klines`` (the current, still open kline
included, as Binance does).

Both keep the venue's **tape**: every bar pushed is recorded (the REST answer) and sent to
connected clients unless the test made the stream :attr:`mute`, dropped it
(:meth:`drop`), or refuses connections (:attr:`refuse`). :meth:`send_raw` sends any frame
(malformed ones).
"""

from __future__ import annotations

import contextlib
import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgpack
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

MINUTE_NS = 60_000_000_000


class _Tape:
    """Common state: recorded bars per symbol, clients, faults."""

    def __init__(self) -> None:
        self.bars: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.clients: set[WebSocket] = set()
        self.connections = 0
        self.mute = False
        self.refuse = False
        self.rest_down = False  # REST answers 503 (the venue's API is unreachable)
        self.rest_calls: list[dict[str, str]] = []

    def record(self, symbol: str, ts_ns: int, ohlcv: dict[str, str]) -> None:
        self.bars.setdefault(symbol, []).append((ts_ns, ohlcv))

    async def drop(self) -> None:
        """Close every client connection (the venue side drops the stream)."""
        for ws in list(self.clients):
            with contextlib.suppress(Exception):
                await ws.close()
        self.clients.clear()

    async def _broadcast(self, send: Any) -> None:
        if self.mute:
            return
        for ws in list(self.clients):
            try:
                await send(ws)
            except Exception:
                self.clients.discard(ws)


def ohlcv(close: str | Decimal, volume: str = "10") -> dict[str, str]:
    """A bar around ``close``: open = close − 1, high = close + 1, low = close − 2."""
    c = Decimal(str(close))
    return {"o": str(c - 1), "h": str(c + 1), "l": str(c - 2), "c": str(c), "v": volume}


def _iso(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).isoformat().replace("+00:00", "Z")


class AlpacaDataStub(_Tape):
    """Alpaca market data (module docstring). ``api_key`` must be presented on ``auth``."""

    def __init__(self, api_key: str = "key", secret: str = "secret") -> None:
        super().__init__()
        self.api_key, self.secret = api_key, secret
        self.subscriptions: list[dict[str, Any]] = []
        self.app = Starlette(routes=[
            WebSocketRoute("/v2/{feed}", self._stream),
            WebSocketRoute("/v1beta3/crypto/{loc}", self._stream),
            Route("/v2/stocks/bars", self._rest_bars),
            Route("/v1beta3/crypto/{loc}/bars", self._rest_bars),
        ])

    async def push_bar(self, symbol: str, ts_ns: int, close: str, volume: str = "10",
                       *, record: bool = True) -> None:
        bar = ohlcv(close, volume)
        if record:
            self.record(symbol, ts_ns, bar)
        msg = {"T": "b", "S": symbol, **{k: float(v) for k, v in bar.items()},
               "t": msgpack.Timestamp.from_unix_nano(ts_ns), "n": 3, "vw": float(close)}
        frame = msgpack.packb([msg], datetime=False)
        await self._broadcast(lambda ws: ws.send_bytes(frame))

    async def push_trade(self, symbol: str, ts_ns: int, price: str, size: str) -> None:
        msg = {"T": "t", "S": symbol, "i": ts_ns % 10**9, "x": "V", "p": float(price),
               "s": float(size), "t": msgpack.Timestamp.from_unix_nano(ts_ns), "c": ["@"],
               "z": "C"}
        frame = msgpack.packb([msg])
        await self._broadcast(lambda ws: ws.send_bytes(frame))

    async def send_raw(self, frame: bytes) -> None:
        for ws in list(self.clients):
            await ws.send_bytes(frame)

    async def _stream(self, ws: WebSocket) -> None:
        if self.refuse:
            await ws.close(code=1013)
            return
        await ws.accept()
        self.connections += 1
        try:
            await ws.send_bytes(msgpack.packb([{"T": "success", "msg": "connected"}]))
            auth = msgpack.unpackb(await ws.receive_bytes())
            if auth.get("action") != "auth" or auth.get("key") != self.api_key or \
                    auth.get("secret") != self.secret:
                await ws.send_bytes(msgpack.packb([{"T": "error", "code": 402,
                                                    "msg": "auth failed"}]))
                await ws.close()
                return
            await ws.send_bytes(msgpack.packb([{"T": "success", "msg": "authenticated"}]))
            sub = msgpack.unpackb(await ws.receive_bytes())
            self.subscriptions.append(sub)
            await ws.send_bytes(msgpack.packb([{
                "T": "subscription", "trades": sub.get("trades", []), "quotes": [],
                "bars": sub.get("bars", []), "updatedBars": [], "dailyBars": []}]))
            self.clients.add(ws)
            while True:
                await ws.receive_bytes()
        except (WebSocketDisconnect, KeyError, RuntimeError):
            pass
        finally:
            self.clients.discard(ws)

    async def _rest_bars(self, request: Request) -> Response:
        q = dict(request.query_params)
        self.rest_calls.append(q)
        if self.rest_down:
            return JSONResponse({"message": "service unavailable"}, 503)
        if request.headers.get("APCA-API-KEY-ID") != self.api_key:
            return JSONResponse({"message": "forbidden"}, 403)
        start = _parse_iso(q.get("start")) if q.get("start") else 0
        end = _parse_iso(q["end"]) if q.get("end") else time.time_ns()
        out: dict[str, list[dict[str, Any]]] = {}
        for sym in q.get("symbols", "").split(","):
            rows = [{"t": _iso(ts), **{k: float(v) for k, v in b.items()}, "n": 3,
                     "vw": float(b["c"])}
                    for ts, b in self.bars.get(sym, []) if start <= ts <= end]
            if rows:
                out[sym] = rows
        return JSONResponse({"bars": out, "next_page_token": None})


def _parse_iso(text: str) -> int:
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1_000_000) * 1000


class BinanceMarketStub(_Tape):
    """Binance spot market data (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []
        self.app = Starlette(routes=[
            WebSocketRoute("/stream", self._stream),
            Route("/api/v3/ping", self._ping), Route("/api/v3/time", self._time),
            Route("/api/v3/klines", self._klines),
        ])

    def _kline(self, symbol: str, ts_ns: int, bar: dict[str, str], closed: bool,
               interval: str = "1m") -> dict[str, Any]:
        t = ts_ns // 1_000_000
        return {"e": "kline", "E": int(time.time() * 1000), "s": symbol, "k": {
            "t": t, "T": t + 59_999, "s": symbol, "i": interval, "f": 100, "L": 200,
            **bar, "n": 5, "x": closed, "q": "1.0", "V": "1", "Q": "1", "B": "0"}}

    async def push_bar(self, symbol: str, ts_ns: int, close: str, volume: str = "10",
                       *, record: bool = True, closed: bool = True) -> None:
        """A kline update; ``closed`` ones are recorded (the tape) and are bars."""
        bar = ohlcv(close, volume)
        if record and closed:
            self.record(symbol, ts_ns, bar)
        text = json.dumps({"stream": f"{symbol.lower()}@kline_1m",
                           "data": self._kline(symbol, ts_ns, bar, closed)})
        await self._broadcast(lambda ws: ws.send_text(text))

    async def push_trade(self, symbol: str, ts_ns: int, price: str, size: str) -> None:
        text = json.dumps({"stream": f"{symbol.lower()}@trade", "data": {
            "e": "trade", "E": ts_ns // 1_000_000, "s": symbol, "t": ts_ns % 10**9,
            "p": price, "q": size, "T": ts_ns // 1_000_000, "m": True, "M": True}})
        await self._broadcast(lambda ws: ws.send_text(text))

    async def send_raw(self, frame: str) -> None:
        for ws in list(self.clients):
            await ws.send_text(frame)

    async def _stream(self, ws: WebSocket) -> None:
        if self.refuse:
            await ws.close(code=1013)
            return
        await ws.accept()
        self.connections += 1
        self.paths.append(ws.url.query)
        self.clients.add(ws)
        try:
            while True:
                await ws.receive_text()
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            self.clients.discard(ws)

    async def _ping(self, request: Request) -> Response:
        return JSONResponse({})

    async def _time(self, request: Request) -> Response:
        return JSONResponse({"serverTime": int(time.time() * 1000)})

    async def _klines(self, request: Request) -> Response:
        q = dict(request.query_params)
        self.rest_calls.append(q)
        if self.rest_down:
            return JSONResponse({"code": -1001, "msg": "Internal error"}, 503)
        sym = q.get("symbol", "")
        start = int(q.get("startTime", 0)) * 1_000_000
        end = int(q["endTime"]) * 1_000_000 if "endTime" in q else time.time_ns()
        limit = min(int(q.get("limit", 500)), 1000)
        rows: list[list[Any]] = []
        for ts, b in self.bars.get(sym, []):
            if start <= ts <= end:
                t = ts // 1_000_000
                rows.append([t, b["o"], b["h"], b["l"], b["c"], b["v"], t + 59_999, "1.0", 5,
                             "0", "0", "0"])
        now = time.time_ns()
        current = now - now % MINUTE_NS  # Binance also returns the kline still open
        if start <= current <= end:
            t = current // 1_000_000
            rows.append([t, "1", "2", "0.5", "1.5", "1", t + 59_999, "1.0", 1, "0", "0", "0"])
        return JSONResponse(rows[:limit])
