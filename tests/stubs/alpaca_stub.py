"""A stub of Alpaca's Trading API v2 and its ``trade_updates`` stream, for offline tests.

Speaks the documented formats (docs.alpaca.markets, "Orders", "Positions", "Account",
"Account Activities" and "Websocket Streaming"): REST under ``/v2`` (``POST/GET/DELETE
/v2/orders``, ``GET /v2/orders:by_client_order_id``, ``GET /v2/positions``,
``GET /v2/account``, ``GET /v2/account/activities/FILL``) and the ``/stream`` WebSocket
(``authenticate`` → ``authorization``/``authorized``, ``listen`` → ``listening``, then
``trade_updates`` events sent as binary frames like the paper endpoint, each with a UUID
``execution_id``).

Behaviour: MARKET orders fill at once at :attr:`AlpacaStub.price` (in the chunks of
:attr:`AlpacaStub.fill_chunks` when set: partial fills); LIMIT orders rest until a test calls
:meth:`AlpacaStub.fill`. ``client_order_id`` must be unique among *active* orders (422).
Market data (Market Data API v2 "Historical bars"): ``GET /v2/stocks/bars`` (keys checked)
and ``/v1beta3/crypto/us/bars`` answer ``{"bars": {symbol: [{"t", "o", "h", "l", "c", "v",
"n", "vw"}]}, "next_page_token"}`` from the :class:`~tests.stubs.history.Series` in
:attr:`AlpacaStub.bars` keyed by ``(symbol, interval)``, ``limit`` bars a page (daily bars
stamped at midnight New York time, as Alpaca does); requests counted in
:attr:`AlpacaStub.rate` (a fixed window; over it: 429 with ``Retry-After``).
Faults: :attr:`faults` (HTTP status/headers/delays per route), :meth:`hold` /
:meth:`release` (out-of-order delivery), :meth:`resend` (duplicates), :attr:`drop_after`
(drop the stream after N more events; later events are lost to the client but stay true at
the venue), :attr:`refuse` (refuse stream connections: the venue is unreachable),
:meth:`send_raw` (malformed or unknown messages).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.stubs import Fault, Faults, RequestLog, form_or_query
from tests.stubs.history import Series, WeightWindow, alpaca_bars

_TIMEFRAMES = {"1Min": "1m", "5Min": "5m", "15Min": "15m", "1Hour": "1h", "4Hour": "4h",
               "1Day": "1d"}

ACTIVE = {"new", "accepted", "pending_new", "partially_filled", "pending_cancel", "held",
          "done_for_day", "calculated", "stopped", "suspended", "pending_replace"}


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class AlpacaStub:
    """State and handlers of the stub venue (see the module docstring).

    Args:
        api_key: the key the stream's ``authenticate`` must present.
        price: fill price of MARKET orders, USD.
    """

    def __init__(self, api_key: str = "key", price: str = "100") -> None:
        self.api_key, self.price = api_key, Decimal(price)
        self.fill_chunks: list[Decimal] = []
        self.orders: dict[str, dict[str, Any]] = {}
        self.by_cid: dict[str, str] = {}
        self.post_counts: dict[str, int] = {}
        self.activities: list[dict[str, Any]] = []
        self.positions: dict[str, tuple[Decimal, Decimal]] = {}
        self.cash = Decimal(100_000)
        self.faults = Faults()
        self.log = RequestLog()
        self.sent: list[dict[str, Any]] = []
        self.lost: list[dict[str, Any]] = []
        self.drop_after: int | None = None
        self.refuse = False
        self.connections = 0
        self.bars: dict[tuple[str, str], Series] = {}
        self.rate = WeightWindow(60, 200)
        self.page_max = 10_000  # bars per page at most, whatever ``limit`` asks
        self._clients: set[WebSocket] = set()
        self._held: list[dict[str, Any]] | None = None
        self.app = Starlette(routes=[
            Route("/v2/orders", self._post_order, methods=["POST"]),
            Route("/v2/orders", self._list_orders, methods=["GET"]),
            Route("/v2/orders", self._cancel_all, methods=["DELETE"]),
            Route("/v2/orders:by_client_order_id", self._by_cid, methods=["GET"]),
            Route("/v2/orders/{oid}", self._get_order, methods=["GET"]),
            Route("/v2/orders/{oid}", self._cancel, methods=["DELETE"]),
            Route("/v2/positions", self._positions, methods=["GET"]),
            Route("/v2/account", self._account, methods=["GET"]),
            Route("/v2/account/activities/{kind}", self._activities, methods=["GET"]),
            Route("/v2/stocks/bars", self._bars, methods=["GET"]),
            Route("/v1beta3/crypto/us/bars", self._bars, methods=["GET"]),
            WebSocketRoute("/stream", self._stream),
        ])

    # --- scripting ------------------------------------------------------------------------

    def order(self, cid: str) -> dict[str, Any]:
        return self.orders[self.by_cid[cid]]

    def hold(self) -> None:
        """Buffer stream events until :meth:`release` (to deliver them out of order)."""
        self._held = []

    async def release(self, reverse: bool = False) -> None:
        held, self._held = self._held or [], None
        for msg in reversed(held) if reverse else held:
            await self._send(msg)

    async def resend(self, n: int = 1) -> None:
        """Send the last ``n`` delivered events again (duplicates)."""
        for msg in self.sent[-n:]:
            await self._send(msg)

    async def send_raw(self, text: str) -> None:
        """Send a raw frame to every stream client (e.g. malformed JSON)."""
        for ws in list(self._clients):
            await ws.send_bytes(text.encode())

    async def drop_stream(self) -> None:
        for ws in list(self._clients):
            await ws.close()
        self._clients.clear()

    async def fill(self, cid: str, qty: str | Decimal, price: str | Decimal | None = None) -> None:
        """Execute ``qty`` of the order at ``price`` (default :attr:`price`)."""
        o = self.order(cid)
        q, p = Decimal(qty), Decimal(price) if price is not None else self.price
        filled = Decimal(o["filled_qty"]) + q
        avg = Decimal(o["filled_avg_price"] or 0)
        o["filled_avg_price"] = str((avg * Decimal(o["filled_qty"]) + p * q) / filled)
        o["filled_qty"] = str(filled)
        done = filled >= Decimal(o["qty"])
        o["status"] = "filled" if done else "partially_filled"
        o["updated_at"] = _now_iso()
        if done:
            o["filled_at"] = o["updated_at"]
        sign = 1 if o["side"] == "buy" else -1
        pos, cost = self.positions.get(o["symbol"], (Decimal(0), Decimal(0)))
        self.positions[o["symbol"]] = (pos + sign * q, cost + sign * q * p)
        self.cash -= sign * q * p
        exec_id = str(uuid.uuid4())
        self.activities.append({
            "id": f"{time.strftime('%Y%m%d%H%M%S')}000::{exec_id}", "activity_type": "FILL",
            "transaction_time": o["updated_at"], "type": "fill" if done else "partial_fill",
            "price": str(p), "qty": str(q), "side": o["side"], "symbol": o["symbol"],
            "leaves_qty": str(Decimal(o["qty"]) - filled), "order_id": o["id"],
            "cum_qty": str(filled), "order_status": o["status"],
        })
        await self._emit("fill" if done else "partial_fill", o, exec_id=exec_id, price=str(p),
                         qty=str(q), position_qty=str(pos + sign * q))

    async def venue_status(self, cid: str, event: str, status: str | None = None) -> None:
        """Move an order to ``status`` at the venue and send ``event`` (cancel, expire, ...)."""
        o = self.order(cid)
        o["status"] = status or event
        o["updated_at"] = _now_iso()
        await self._emit(event, o)

    # --- stream ---------------------------------------------------------------------------

    async def _emit(self, event: str, order: dict[str, Any], exec_id: str | None = None,
                    **extra: str) -> None:
        data: dict[str, Any] = {"event": event, "execution_id": exec_id or str(uuid.uuid4()),
                                "order": dict(order), "timestamp": _now_iso(), **extra}
        msg = {"stream": "trade_updates", "data": data}
        if self._held is not None:
            self._held.append(msg)
            return
        await self._send(msg)

    async def _send(self, msg: dict[str, Any]) -> None:
        if self.drop_after is not None:
            if self.drop_after <= 0:
                self.lost.append(msg)
                await self.drop_stream()
                return
            self.drop_after -= 1
        self.sent.append(msg)
        frame = json.dumps(msg).encode()
        for ws in list(self._clients):
            try:
                await ws.send_bytes(frame)
            except Exception:
                self._clients.discard(ws)

    async def _stream(self, ws: WebSocket) -> None:
        if self.refuse:  # the venue is unreachable: the handshake is refused
            await ws.close(code=1013)
            return
        await ws.accept()
        self.connections += 1
        try:
            auth = json.loads(await ws.receive_text())
            ok = auth.get("data", {}).get("key_id") == self.api_key
            await ws.send_bytes(json.dumps({"stream": "authorization", "data": {
                "action": "authenticate", "status": "authorized" if ok else "unauthorized"}}
            ).encode())
            if not ok:
                await ws.close()
                return
            listen = json.loads(await ws.receive_text())
            streams = listen.get("data", {}).get("streams", [])
            await ws.send_bytes(json.dumps({"stream": "listening",
                                            "data": {"streams": streams}}).encode())
            self._clients.add(ws)
            while True:
                await ws.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            self._clients.discard(ws)

    # --- REST -----------------------------------------------------------------------------

    async def _fault(self, route: str) -> Fault | None:
        return self.faults.take(route)

    async def _post_order(self, request: Request) -> Response:
        t0 = time.time_ns()
        body = await form_or_query(request)
        self.log.record("POST /v2/orders", body, t0)
        fault = await self._fault("POST /v2/orders")
        if fault is not None and not fault.apply:
            return await fault.respond()
        cid = body.get("client_order_id") or str(uuid.uuid4())
        self.post_counts[cid] = self.post_counts.get(cid, 0) + 1
        old = self.by_cid.get(cid)
        if old is not None and self.orders[old]["status"] in ACTIVE:
            return JSONResponse({"code": 40010001,
                                 "message": "client_order_id must be unique"}, 422)
        order = self._new_order(cid, body)
        if order["status"] == "rejected":
            resp: Response = JSONResponse({"code": 40310000,
                                           "message": "insufficient buying power"}, 403)
            return await fault.respond(resp) if fault else resp
        await self._emit("new", order)
        if order["type"] == "market":
            for chunk in self.fill_chunks or [Decimal(order["qty"])]:
                await self.fill(cid, chunk)
        resp = JSONResponse(self._new_view(order))
        return await fault.respond(resp) if fault else resp

    def _new_view(self, order: dict[str, Any]) -> dict[str, Any]:
        return {**order, "status": "accepted" if order["status"] == "new" else order["status"]}

    def _new_order(self, cid: str, body: dict[str, Any]) -> dict[str, Any]:
        now = _now_iso()
        qty = Decimal(str(body["qty"]))
        status = "new" if qty * self.price <= self.cash * 4 else "rejected"
        order = {
            "id": str(uuid.uuid4()), "client_order_id": cid, "created_at": now,
            "updated_at": now, "submitted_at": now, "filled_at": None, "expired_at": None,
            "canceled_at": None, "failed_at": None, "replaced_at": None, "replaced_by": None,
            "replaces": None, "asset_id": str(uuid.uuid4()), "symbol": body["symbol"],
            "asset_class": "us_equity", "notional": None, "qty": str(qty), "filled_qty": "0",
            "filled_avg_price": None, "order_class": "", "order_type": body["type"],
            "type": body["type"], "side": body["side"], "time_in_force": body["time_in_force"],
            "limit_price": body.get("limit_price"), "stop_price": None, "status": status,
            "extended_hours": False, "legs": None, "trail_percent": None, "trail_price": None,
            "hwm": None,
        }
        self.orders[order["id"]] = order
        self.by_cid[cid] = order["id"]
        return order

    async def _by_cid(self, request: Request) -> Response:
        cid = request.query_params.get("client_order_id", "")
        self.log.record("GET /v2/orders:by_client_order_id", {"client_order_id": cid})
        fault = await self._fault("GET /v2/orders:by_client_order_id")
        if fault is not None:
            return await fault.respond()
        oid = self.by_cid.get(cid)
        if oid is None:
            return JSONResponse({"code": 40410000, "message": "order not found"}, 404)
        return JSONResponse(self.orders[oid])

    async def _get_order(self, request: Request) -> Response:
        o = self.orders.get(request.path_params["oid"])
        if o is None:
            return JSONResponse({"code": 40410000, "message": "order not found"}, 404)
        return JSONResponse(o)

    async def _list_orders(self, request: Request) -> Response:
        self.log.record("GET /v2/orders", dict(request.query_params))
        status = request.query_params.get("status", "open")
        out = [o for o in self.orders.values()
               if status == "all" or (o["status"] in ACTIVE) == (status == "open")]
        return JSONResponse(out)

    async def _cancel(self, request: Request) -> Response:
        oid = request.path_params["oid"]
        self.log.record("DELETE /v2/orders/{id}", {"id": oid})
        fault = await self._fault("DELETE /v2/orders/{id}")
        if fault is not None:
            return await fault.respond()
        o = self.orders.get(oid)
        if o is None:
            return JSONResponse({"code": 40410000, "message": "order not found"}, 404)
        if o["status"] not in ACTIVE:
            return JSONResponse({"code": 42210000, "message": "order is not cancelable"}, 422)
        o["canceled_at"] = _now_iso()
        await self.venue_status(o["client_order_id"], "canceled")
        return Response(status_code=204)

    async def _cancel_all(self, request: Request) -> Response:
        self.log.record("DELETE /v2/orders", {})
        out = []
        for o in list(self.orders.values()):
            if o["status"] in ACTIVE:
                await self.venue_status(o["client_order_id"], "canceled")
                out.append({"id": o["id"], "status": 200, "body": o})
        return JSONResponse(out, 207)

    async def _positions(self, request: Request) -> Response:
        out = []
        for sym, (qty, cost) in self.positions.items():
            if qty:
                out.append({"asset_id": str(uuid.uuid4()), "symbol": sym, "exchange": "NASDAQ",
                            "asset_class": "us_equity", "avg_entry_price": str(cost / qty),
                            "qty": str(qty), "side": "long" if qty > 0 else "short",
                            "market_value": str(qty * self.price), "cost_basis": str(cost),
                            "current_price": str(self.price), "qty_available": str(qty)})
        return JSONResponse(out)

    async def _account(self, request: Request) -> Response:
        equity = self.cash + sum((q * self.price for q, _ in self.positions.values()),
                                 Decimal(0))
        return JSONResponse({"id": str(uuid.uuid4()), "account_number": "PA0000000",
                             "status": "ACTIVE", "currency": "USD", "cash": str(self.cash),
                             "equity": str(equity), "buying_power": str(self.cash * 4),
                             "portfolio_value": str(equity)})

    async def _activities(self, request: Request) -> Response:
        after = request.query_params.get("after")
        self.log.record("GET /v2/account/activities", dict(request.query_params))
        rows = [a for a in self.activities if after is None or a["transaction_time"] > after]
        direction = request.query_params.get("direction", "desc")
        return JSONResponse(rows if direction == "asc" else rows[::-1])

    async def _bars(self, request: Request) -> Response:
        q = dict(request.query_params)
        route = f"GET {request.url.path}"
        self.log.record(route, q)
        wait = self.rate.take(1)
        if wait is not None:
            return JSONResponse({"code": 42910000, "message": "rate limit exceeded"}, 429,
                                {"Retry-After": str(max(1, round(wait)))})
        if "stocks" in route and request.headers.get("APCA-API-KEY-ID") != self.api_key:
            return JSONResponse({"code": 40110000, "message": "request is not authorized"}, 401)
        fault = await self._fault(route)
        resp = self._bar_page(q)
        return await fault.respond(resp) if fault is not None else resp

    def _bar_page(self, q: dict[str, str]) -> Response:
        series = self.bars.get((q.get("symbols", ""), _TIMEFRAMES.get(q.get("timeframe", ""), "")))
        if series is None:
            return JSONResponse({"code": 42210000, "message": "invalid symbol"}, 422)
        return JSONResponse(alpaca_bars(series, q, self.page_max))


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    """Poll ``predicate()`` every 10 ms until true.

    Raises:
        TimeoutError: still false after ``timeout`` seconds.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)
