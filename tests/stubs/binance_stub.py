"""A stub of Binance's spot REST API and WebSocket API user data stream, for offline tests.

Speaks the documented formats (Binance Spot API docs): ``GET /api/v3/ping``, ``/time``,
``/exchangeInfo`` (``PRICE_FILTER``, ``LOT_SIZE``, ``NOTIONAL`` filters and
``REQUEST_WEIGHT``/``ORDERS`` rate limits), ``POST/GET/DELETE /api/v3/order``
(``newClientOrderId`` / ``origClientOrderId``; errors -2010 duplicate open order, -2013 no
such order, -2011 unknown order to cancel), ``GET/DELETE /api/v3/openOrders``,
``GET /api/v3/account``, ``GET /api/v3/myTrades``, ``GET /api/v3/klines`` (from the
:class:`~tests.stubs.history.Series` in :attr:`BinanceStub.klines`, keyed by ``(symbol,
interval)``; weight 2 counted in :attr:`BinanceStub.weight`, a fixed window whose excess is
answered 429 with ``Retry-After``); and ``/ws-api/v3`` answering
``userDataStream.subscribe.signature`` (HMAC checked) with ``{"subscriptionId"}`` and then
pushing ``{"subscriptionId", "event": executionReport}`` messages.

MARKET orders fill at once at :attr:`BinanceStub.price` (in :attr:`fill_chunks` when set,
or in :attr:`fill_fractions` of each order's quantity, the last part taking the rest);
LIMIT orders rest until :meth:`BinanceStub.fill`. Faults as in :mod:`tests.stubs.alpaca_stub`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from decimal import Decimal
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.stubs import Faults, RequestLog, form_or_query
from tests.stubs.history import NS_PER_MS, Series, WeightWindow

OPEN = {"NEW", "PARTIALLY_FILLED", "PENDING_NEW"}


def exchange_info(orders_per_10s: int = 50, weight_per_min: int = 6000) -> dict[str, Any]:
    return {
        "timezone": "UTC", "serverTime": int(time.time() * 1000),
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
             "limit": weight_per_min},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10,
             "limit": orders_per_10s},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 160000},
            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5,
             "limit": 61000},
        ],
        "symbols": [{
            "symbol": "BTCUSDT", "status": "TRADING", "baseAsset": "BTC", "quoteAsset": "USDT",
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": "0.01", "maxPrice": "1000000.00",
                 "tickSize": "0.01"},
                {"filterType": "LOT_SIZE", "minQty": "0.00001", "maxQty": "9000.00000",
                 "stepSize": "0.00001"},
                {"filterType": "NOTIONAL", "minNotional": "5.00", "applyMinToMarket": True,
                 "maxNotional": "9000000.00", "applyMaxToMarket": False, "avgPriceMins": 5},
            ],
        }],
    }


class BinanceStub:
    """State and handlers of the stub venue (see the module docstring)."""

    def __init__(self, api_key: str = "key", secret: str = "secret", price: str = "50000",
                 orders_per_10s: int = 50, weight_per_min: int = 6000) -> None:
        self.api_key, self.secret, self.price = api_key, secret, Decimal(price)
        self.info = exchange_info(orders_per_10s, weight_per_min)
        self.fill_chunks: list[Decimal] = []
        self.fill_fractions: list[Decimal] = []  # of each MARKET order's qty (partial fills)
        self.orders: dict[str, dict[str, Any]] = {}  # by clientOrderId (latest)
        self.post_counts: dict[str, int] = {}
        self.trades: list[dict[str, Any]] = []
        self.balances = {"USDT": Decimal(1_000_000), "BTC": Decimal(0)}
        self.faults = Faults()
        self.log = RequestLog()
        self.sent: list[dict[str, Any]] = []
        self.lost: list[dict[str, Any]] = []
        self.drop_after: int | None = None
        self.subscribes = 0
        self.klines: dict[tuple[str, str], Series] = {}
        self.weight = WeightWindow(60, weight_per_min)
        self._clients: dict[WebSocket, int] = {}
        self._held: list[dict[str, Any]] | None = None
        self._ids = iter(range(1000, 10**9))
        self.app = Starlette(routes=[
            Route("/api/v3/ping", self._ping), Route("/api/v3/time", self._time),
            Route("/api/v3/exchangeInfo", self._exchange_info),
            Route("/api/v3/order", self._order, methods=["POST", "GET", "DELETE"]),
            Route("/api/v3/openOrders", self._open_orders, methods=["GET", "DELETE"]),
            Route("/api/v3/account", self._account), Route("/api/v3/myTrades", self._my_trades),
            Route("/api/v3/klines", self._klines),
            WebSocketRoute("/ws-api/v3", self._ws_api),
        ])

    # --- scripting ------------------------------------------------------------------------

    def hold(self) -> None:
        self._held = []

    async def release(self, reverse: bool = False) -> None:
        held, self._held = self._held or [], None
        for ev in reversed(held) if reverse else held:
            await self._send(ev)

    async def resend(self, n: int = 1) -> None:
        for ev in self.sent[-n:]:
            await self._send(ev)

    async def send_raw(self, text: str) -> None:
        for ws in list(self._clients):
            await ws.send_text(text)

    async def fill(self, cid: str, qty: str | Decimal, price: str | Decimal | None = None) -> None:
        o = self.orders[cid]
        q, p = Decimal(qty), Decimal(price) if price is not None else self.price
        executed = Decimal(o["executedQty"]) + q
        o["executedQty"] = str(executed)
        o["cummulativeQuoteQty"] = str(Decimal(o["cummulativeQuoteQty"]) + q * p)
        o["status"] = "FILLED" if executed >= Decimal(o["origQty"]) else "PARTIALLY_FILLED"
        o["updateTime"] = int(time.time() * 1000)
        sign = 1 if o["side"] == "BUY" else -1
        self.balances["BTC"] += sign * q
        self.balances["USDT"] -= sign * q * p
        trade = {"symbol": o["symbol"], "id": next(self._ids), "orderId": o["orderId"],
                 "orderListId": -1, "price": str(p), "qty": str(q), "quoteQty": str(q * p),
                 "commission": "0", "commissionAsset": "USDT", "time": o["updateTime"],
                 "isBuyer": o["side"] == "BUY", "isMaker": False, "isBestMatch": True}
        self.trades.append(trade)
        await self._report(o, "TRADE", l=str(q), L=str(p), t=trade["id"], n="0", N="USDT")

    async def venue_status(self, cid: str, x: str, status: str) -> None:
        o = self.orders[cid]
        o["status"] = status
        await self._report(o, x)

    # --- user data stream -----------------------------------------------------------------

    async def _report(self, o: dict[str, Any], x: str, **extra: Any) -> None:
        now = int(time.time() * 1000)
        ev: dict[str, Any] = {
            "e": "executionReport", "E": now, "s": o["symbol"], "c": o["clientOrderId"],
            "S": o["side"], "o": o["type"], "f": o["timeInForce"], "q": o["origQty"],
            "p": o["price"], "x": x, "X": o["status"], "r": "NONE", "i": o["orderId"],
            "l": "0", "z": o["executedQty"], "L": "0", "n": "0", "N": None, "T": now,
            "t": -1, "m": False, "O": o["transactTime"], "C": "", **extra,
        }
        if self._held is not None:
            self._held.append(ev)
            return
        await self._send(ev)

    async def _send(self, ev: dict[str, Any]) -> None:
        if self.drop_after is not None:
            if self.drop_after <= 0:
                self.lost.append(ev)
                for ws in list(self._clients):
                    await ws.close()
                self._clients.clear()
                return
            self.drop_after -= 1
        self.sent.append(ev)
        for ws, sub in list(self._clients.items()):
            try:
                await ws.send_text(json.dumps({"subscriptionId": sub, "event": ev}))
            except Exception:
                self._clients.pop(ws, None)

    async def _ws_api(self, ws: WebSocket) -> None:
        await ws.accept()
        try:
            while True:
                req = json.loads(await ws.receive_text())
                await ws.send_text(json.dumps(self._ws_answer(ws, req)))
        except WebSocketDisconnect:
            pass
        finally:
            self._clients.pop(ws, None)

    def _ws_answer(self, ws: WebSocket, req: dict[str, Any]) -> dict[str, Any]:
        params = dict(req.get("params", {}))
        if req.get("method") != "userDataStream.subscribe.signature":
            return {"id": req.get("id"), "status": 400,
                    "error": {"code": -1100, "msg": "unknown method"}}
        sig = params.pop("signature", "")
        payload = "&".join(f"{k}={params[k]}" for k in sorted(params))
        good = hmac.new(self.secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        if sig != good or params.get("apiKey") != self.api_key:
            return {"id": req.get("id"), "status": 400,
                    "error": {"code": -1022, "msg": "Signature for this request is not valid."}}
        self.subscribes += 1
        self._clients[ws] = self.subscribes
        return {"id": req["id"], "status": 200, "result": {"subscriptionId": self.subscribes}}

    # --- REST -----------------------------------------------------------------------------

    async def _ping(self, request: Request) -> Response:
        return JSONResponse({})

    async def _time(self, request: Request) -> Response:
        return JSONResponse({"serverTime": int(time.time() * 1000)})

    async def _exchange_info(self, request: Request) -> Response:
        return JSONResponse(self.info)

    async def _order(self, request: Request) -> Response:
        t0 = time.time_ns()
        params = await form_or_query(request)
        route = f"{request.method} /api/v3/order"
        self.log.record(route, params, t0)
        fault = self.faults.take(route)
        if fault is not None and not fault.apply:
            return await fault.respond()
        if request.method == "POST":
            resp = await self._place(params)
        elif request.method == "GET":
            resp = self._query(params)
        else:
            resp = await self._cancel(params)
        return await fault.respond(resp) if fault is not None else resp

    async def _place(self, p: dict[str, Any]) -> Response:
        cid = p["newClientOrderId"]
        self.post_counts[cid] = self.post_counts.get(cid, 0) + 1
        old = self.orders.get(cid)
        if old is not None and old["status"] in OPEN:
            return JSONResponse({"code": -2010, "msg": "Duplicate order sent."}, 400)
        now = int(time.time() * 1000)
        o = {"symbol": p["symbol"], "orderId": next(self._ids), "orderListId": -1,
             "clientOrderId": cid, "transactTime": now, "price": p.get("price", "0.00000000"),
             "origQty": p["quantity"], "executedQty": "0", "cummulativeQuoteQty": "0",
             "status": "NEW", "timeInForce": p.get("timeInForce", "GTC"), "type": p["type"],
             "side": p["side"], "workingTime": now, "updateTime": now,
             "selfTradePreventionMode": "EXPIRE_MAKER"}
        self.orders[cid] = o
        await self._report(o, "NEW")
        if o["type"] == "MARKET":
            qty = Decimal(o["origQty"])
            chunks = self.fill_chunks or [qty * f for f in self.fill_fractions[:-1]]
            if self.fill_fractions and not self.fill_chunks:
                chunks.append(qty - sum(chunks, Decimal(0)))  # the rest: the order fills
            for chunk in chunks or [qty]:
                await self.fill(cid, chunk)
        return JSONResponse(dict(o))

    def _query(self, p: dict[str, Any]) -> Response:
        cid = p.get("origClientOrderId")
        o = self.orders.get(cid) if cid else next(
            (x for x in self.orders.values() if str(x["orderId"]) == str(p.get("orderId"))), None)
        if o is None:
            return JSONResponse({"code": -2013, "msg": "Order does not exist."}, 400)
        return JSONResponse(o)

    async def _cancel(self, p: dict[str, Any]) -> Response:
        o = self.orders.get(p.get("origClientOrderId", ""))
        if o is None or o["status"] not in OPEN:
            return JSONResponse({"code": -2011, "msg": "Unknown order sent."}, 400)
        o["status"] = "CANCELED"
        await self._report(o, "CANCELED", c="cancel-" + o["clientOrderId"][:20],
                           C=o["clientOrderId"])
        return JSONResponse({**o, "origClientOrderId": o["clientOrderId"]})

    async def _open_orders(self, request: Request) -> Response:
        params = await form_or_query(request)
        self.log.record(f"{request.method} /api/v3/openOrders", params)
        rows = [o for o in self.orders.values() if o["status"] in OPEN
                and params.get("symbol") in (None, o["symbol"])]
        if request.method == "DELETE":
            for o in rows:
                o["status"] = "CANCELED"
                await self._report(o, "CANCELED")
        return JSONResponse(rows)

    async def _account(self, request: Request) -> Response:
        fault = self.faults.take("GET /api/v3/account")
        if fault is not None:
            return await fault.respond()
        return JSONResponse({"balances": [{"asset": a, "free": str(q), "locked": "0"}
                                          for a, q in self.balances.items()]})

    async def _my_trades(self, request: Request) -> Response:
        start = int(request.query_params.get("startTime", 0))
        sym = request.query_params.get("symbol")
        return JSONResponse([t for t in self.trades if t["time"] >= start and t["symbol"] == sym])

    async def _klines(self, request: Request) -> Response:
        q = dict(request.query_params)
        self.log.record("GET /api/v3/klines", q)
        wait = self.weight.take(2)  # "Kline/Candlestick data" weight: 2
        if wait is not None:
            return JSONResponse({"code": -1003, "msg": "Too much request weight used"}, 429,
                                {"Retry-After": str(max(1, round(wait)))})
        fault = self.faults.take("GET /api/v3/klines")
        resp = self._kline_rows(q)
        return await fault.respond(resp) if fault is not None else resp

    def _kline_rows(self, q: dict[str, str]) -> Response:
        series = self.klines.get((q.get("symbol", ""), q.get("interval", "")))
        if series is None:
            return JSONResponse({"code": -1121, "msg": "Invalid symbol."}, 400)
        lo = int(q.get("startTime", 0)) * NS_PER_MS
        hi = int(q["endTime"]) * NS_PER_MS if "endTime" in q else time.time_ns()
        limit = min(int(q.get("limit", 500)), 1000)
        rows: list[list[Any]] = []
        for ts, b in series.between(lo, hi):
            t = ts // NS_PER_MS
            rows.append([t, b["o"], b["h"], b["l"], b["c"], b["v"],
                         t + series.interval_ns // NS_PER_MS - 1, "1.0", 5, "0", "0", "0"])
            if len(rows) == limit:
                break
        return JSONResponse(rows)


async def settle(seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)
