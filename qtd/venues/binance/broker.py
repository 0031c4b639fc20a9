"""Binance spot broker adapter (python-binance ``AsyncClient`` + WebSocket API user stream).

* REST through python-binance 1.0.37's ``AsyncClient``, subclassed only to point
  ``API_URL`` at the configured base (it has no URL parameter) and to set its per-request
  timeout; orders carry ``newClientOrderId`` = qtd's client_order_id (≤ 36 chars).
* Symbol filters (tick size, lot size, min/max notional) from ``exchangeInfo`` are checked
  before any order leaves (:func:`qtd.venues.binance.mapping.check_filters`): a breach becomes
  an ``OrderRejected`` naming the filter, field, value and rule, code ``FILTER_<name>``.
* Rate limits: the ``REQUEST_WEIGHT`` and ``ORDERS`` windows published in ``exchangeInfo``
  gate every call client-side (:class:`~qtd.brokers.retry.RateGate`, documented weights);
  a 429 blocks every call for its ``Retry-After`` and is retried; a 418 (IP ban) stops all
  calls until its ``Retry-After`` and raises :class:`~qtd.brokers.retry.VenueBanned` (an
  ``OperationalError``: the router records it as ``BrokerError(error_type="VenueBanned")``,
  on which the account must be halted and on-call paged).
* User data: spot listen-key endpoints were retired on 2026-02-20; python-binance 1.0.37's
  ``user_socket`` subscribes with ``userDataStream.subscribe.signature`` on its WebSocket API
  connection but does not subscribe again after that connection is re-established, so this
  adapter runs its own WebSocket API connection (``websockets``): sign
  ``userDataStream.subscribe.signature`` (HMAC-SHA256 of the sorted parameters, Binance
  "Request security"), read ``{"subscriptionId", "event"}`` messages, and on every
  reconnect subscribe again and re-read orders in flight (:meth:`BinanceBroker.resync`).

A submit whose outcome is unknown (timeout, 5xx, -1006/-1007) is resolved by
``GET /api/v3/order?origClientOrderId=`` and never re-sent. If the venue still has no such
order once the request's ``recvWindow`` has passed, Binance can no longer execute it
("Timing security": a request is rejected after ``timestamp + recvWindow``), so the order is
recorded as rejected (code ``NOT_AT_VENUE``) on the venue's word; before that it raises
:class:`~qtd.brokers.retry.OutcomeUnknown` and stays in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import websockets
from binance.async_client import AsyncClient  # type: ignore[import-untyped]
from websockets.asyncio.client import connect

from qtd.aio import cancel_and_wait
from qtd.brokers.base import (
    AccountSnapshot,
    Link,
    OrderStatusReport,
    SubmitToken,
    verify_cancel_token,
    verify_token,
)
from qtd.brokers.retry import (
    OutcomeUnknown,
    RateGate,
    RateLimited,
    RetryPolicy,
    VenueMessageError,
    VenueRejected,
    VenueUnavailable,
    call,
    report_events,
    resolve_unknown,
)
from qtd.clock import Clock
from qtd.events import (
    AnyEvent,
    BrokerError,
    Event,
    Fill,
    OrderIntent,
    OrderRejected,
    PositionSnapshot,
)
from qtd.venues.binance import mapping as bm
from qtd.venues.binance.endpoints import LIVE_API, LIVE_WS_API
from qtd.venues.binance.rest import RestGuard

log = logging.getLogger(__name__)
# Request weights (Binance Spot API docs, per endpoint).
WEIGHT = {"order.post": 1, "order.get": 4, "order.delete": 1, "openOrders": 80,
          "openOrders.delete": 1, "account": 20, "myTrades": 20, "exchangeInfo": 20}
_NO_SUCH_ORDER = {-2013, -2011}  # "Order does not exist", "Unknown order sent"


def sign(params: dict[str, Any], secret: str) -> dict[str, Any]:
    """``params`` plus ``signature``: HMAC-SHA256 (hex) of the parameters sorted by name and
    joined as ``k=v&...`` (Binance WebSocket API "SIGNED request security")."""
    payload = "&".join(f"{k}={params[k]}" for k in sorted(params))
    digest = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
    return {**params, "signature": digest}


class BinanceBroker:
    """One Binance spot account (see the module docstring).

    Args:
        account: account name in qtd events.
        node: node name in qtd events.
        clock: UTC ns time source for ``ts_init``.
        api_key: API key.
        api_secret: API secret (HMAC).
        symbols: symbols this account trades (their filters are loaded; trade history is
            read per symbol).
        api_url: REST base ending in ``/api`` (default the live endpoint).
        ws_api_url: WebSocket API URL (default the live endpoint).
        quote_asset: the asset counted as cash.
        timeout_s: per-request timeout, seconds.
        recv_window_ms: ``recvWindow`` of signed orders, ms.
        policy: retry and resolution timing.
        reconnect_min_s: first user-stream reconnect delay, seconds (doubles to 30 s).
        session_params: extra ``aiohttp.ClientSession`` arguments (e.g. ``connector``,
            ``trace_configs``), passed through python-binance's ``session_params``.
    """

    def __init__(
        self, *, account: str, node: str, clock: Clock, api_key: str, api_secret: str,
        symbols: list[str], api_url: str = LIVE_API, ws_api_url: str = LIVE_WS_API,
        quote_asset: str = "USDT", timeout_s: float = 5.0, recv_window_ms: int = 5000,
        policy: RetryPolicy | None = None, reconnect_min_s: float = 1.0, venue: str = "binance",
        session_params: dict[str, Any] | None = None,
    ) -> None:
        self.account, self.venue, self.node, self.clock = account, venue, node, clock
        self.names = bm.Names(node=node, account=account, venue=venue)
        self.symbols, self.quote_asset = list(symbols), quote_asset
        self.policy = policy or RetryPolicy()
        self.recv_window_ms, self.timeout_s, self.reconnect_min_s = recv_window_ms, timeout_s, \
            reconnect_min_s
        self._key, self._secret, self._api_url, self._ws_url = api_key, api_secret, api_url, \
            ws_api_url
        self._session_params = session_params
        self.rules: dict[str, bm.SymbolRules] = {}
        self.guard = RestGuard(RateGate([]))
        self._client: AsyncClient | None = None
        self._queue: asyncio.Queue[AnyEvent] = asyncio.Queue()
        self._intents: dict[str, OrderIntent] = {}
        self._open: set[str] = set()
        self._vids: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._resyncs: set[asyncio.Task[None]] = set()  # owned: cancelled by close()
        self._closing = False
        self.connects = 0
        self.connected = asyncio.Event()
        self.link = Link()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the client (it pings and reads server time), load filters and rate limits
        from ``exchangeInfo``, and subscribe to the user data stream."""
        cls: Any = type("QtdAsyncClient", (AsyncClient,),
                   {"API_URL": self._api_url, "REQUEST_TIMEOUT": self.timeout_s})
        self._client = await cls.create(self._key, self._secret,
                                        session_params=self._session_params)
        raw = await self._rest("exchangeInfo", self._c.get_exchange_info, idempotent=True)
        rules, limits = bm.parse_exchange_info(raw)
        self.rules = {s: rules[s] for s in self.symbols if s in rules}
        self.guard.limit(RateGate([(r.kind, r.window_s, r.limit) for r in limits
                                   if r.kind in ("REQUEST_WEIGHT", "ORDERS")],
                                  max_wait_s=self.policy.max_retry_after_s))
        self._task = asyncio.create_task(self._user_stream(), name="binance-user-stream")
        await asyncio.wait_for(self.connected.wait(), 10)

    async def close(self) -> None:
        """Stop the resyncs in progress, the user stream and the HTTP session."""
        self._closing = True
        for task in list(self._resyncs):
            await cancel_and_wait(task)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._client is not None:
            await self._client.close_connection()

    def track(self, intent: OrderIntent) -> None:
        """Remember an intent still open (e.g. from the store after a restart)."""
        self._intents[intent.client_order_id] = intent
        self._open.add(intent.client_order_id)

    @property
    def _c(self) -> AsyncClient:
        assert self._client is not None, "BinanceBroker.start() first"
        return self._client

    # --- Broker Protocol ------------------------------------------------------------------

    async def submit(self, intent: OrderIntent, token: SubmitToken) -> None:
        """Check filters, then ``POST /api/v3/order`` with ``newClientOrderId``.

        Raises:
            TokenError: no valid risk-engine token; nothing was sent.
            VenueBanned: the IP is banned (418): halt the account and page.
            OutcomeUnknown: the venue could not yet say whether the order exists.
        """
        verify_token(token, intent)
        cid = intent.client_order_id
        rules = self.rules.get(intent.symbol)
        bad = (bm.Violation("SYMBOL", "symbol", Decimal(0), f"{intent.symbol} not loaded")
               if rules is None else bm.check_filters(rules, intent, intent.decision_price))
        if bad is not None:
            self._put(OrderRejected(**self._base(intent.bot), client_order_id=cid,
                                    reason=bad.message, code=f"FILTER_{bad.filter}"))
            return
        self.track(intent)
        sent = time.monotonic()
        try:
            raw = await self._rest("order.post", self._c.create_order,
                                   **bm.order_params(intent, self.recv_window_ms),
                                   idempotent=False)
        except (VenueRejected, RateLimited) as exc:
            self._open.discard(cid)
            self._put(OrderRejected(**self._base(intent.bot), client_order_id=cid,
                                    reason=exc.message,
                                    code=str(getattr(exc, "code", "") or "RATE_LIMITED")))
            return
        except VenueUnavailable as exc:
            await self._resolve(intent, exc, sent)
            return
        self._emit_report(bm.order_report(raw), intent.bot)

    async def _resolve(self, intent: OrderIntent, cause: VenueUnavailable, sent: float) -> None:
        cid = intent.client_order_id
        report = await resolve_unknown(lambda: self._get_order(cid), policy=self.policy)
        expiry = sent + self.recv_window_ms / 1000 + 0.1
        if report is None and time.monotonic() < expiry:
            await asyncio.sleep(expiry - time.monotonic())
            report = await self.get_order(cid)
        if report is not None:
            self._emit_report(report, intent.bot)
            return
        self._open.discard(cid)
        self._put(OrderRejected(
            **self._base(intent.bot), client_order_id=cid, code="NOT_AT_VENUE",
            reason=f"submit failed ({cause.message}); the venue has no order {cid} after "
                   f"recvWindow {self.recv_window_ms} ms, so it can no longer be placed",
        ))

    async def cancel(self, client_order_id: str, token: SubmitToken) -> None:
        """``DELETE /api/v3/order`` by ``origClientOrderId``; an unknown or finished order
        (-2011) is left to the stream / reconciliation.

        Raises:
            TokenError: missing or wrong cancel token.
        """
        verify_cancel_token(token, client_order_id)
        intent = self._intents.get(client_order_id)
        if intent is None:
            raise OutcomeUnknown(f"binance cancel of {client_order_id}: symbol unknown "
                                 "(track() the intent first)", client_order_id=client_order_id)
        try:
            await self._rest("order.delete", self._c.cancel_order, symbol=intent.symbol,
                             origClientOrderId=client_order_id, idempotent=True)
        except VenueRejected as exc:
            log.info("binance cancel of %s refused: %s", client_order_id, exc.message)

    async def cancel_all(self, token: SubmitToken) -> list[str]:
        """``DELETE /api/v3/openOrders`` for every symbol with open orders.

        Raises:
            TokenError: no cancel token minted for ``"*"``.
        """
        verify_cancel_token(token, "*")
        open_now = await self.open_orders()
        for sym in sorted({o.symbol for o in open_now}):
            await self._rest("openOrders.delete", self._c.cancel_all_open_orders, symbol=sym,
                             idempotent=True)
        return [o.client_order_id for o in open_now]

    async def open_orders(self) -> list[OrderIntent]:
        """Open orders of tracked intents (untracked venue orders appear in :meth:`get_order`
        and reconciliation, not as intents)."""
        rows = await self._rest("openOrders", self._c.get_open_orders, idempotent=True)
        return [self._intents[r["clientOrderId"]] for r in rows
                if r["clientOrderId"] in self._intents]

    async def positions(self) -> list[PositionSnapshot]:
        """Non-zero balances of every asset but the quote asset (spot "positions")."""
        raw = await self._rest("account", self._c.get_account, idempotent=True)
        now = self.clock.now_ns()
        out = []
        for b in raw.get("balances", []):
            qty = Decimal(b["free"]) + Decimal(b["locked"])
            sym = f"{b['asset']}{self.quote_asset}"
            if qty and b["asset"] != self.quote_asset:
                out.append(PositionSnapshot(node=self.node, ts_event=now, ts_init=now,
                                            account=self.account, symbol=sym, qty=qty,
                                            avg_price=Decimal(0), source="broker"))
        return out

    async def account_info(self) -> AccountSnapshot:
        """Cash = free + locked quote asset; equity is cash here (spot balances carry no
        marks; the projections value holdings)."""
        raw = await self._rest("account", self._c.get_account, idempotent=True)
        cash = sum((Decimal(b["free"]) + Decimal(b["locked"]) for b in raw.get("balances", [])
                    if b["asset"] == self.quote_asset), Decimal(0))
        return AccountSnapshot(account=self.account, cash=cash, equity=cash,
                               currency=self.quote_asset)

    async def get_order(self, client_order_id: str) -> OrderStatusReport | None:
        """``GET /api/v3/order`` by ``origClientOrderId``; None on -2013 (no such order).

        Raises:
            VenueUnavailable, RateLimited, VenueBanned: the venue could not be asked.
        """
        return await call(lambda: self._get_order(client_order_id), idempotent=True,
                          policy=self.policy)

    async def _get_order(self, cid: str) -> OrderStatusReport | None:
        intent = self._intents.get(cid)
        if intent is None:
            raise OutcomeUnknown(f"binance get_order {cid}: symbol unknown (track() it first)")
        try:
            raw = await self._once("order.get", self._c.get_order, symbol=intent.symbol,
                                   origClientOrderId=cid)
        except VenueRejected as exc:
            if exc.code and int(exc.code) in _NO_SUCH_ORDER:
                return None
            raise
        return bm.order_report(raw)

    async def fills_since(self, ts_ns: int) -> list[Fill]:
        """``GET /api/v3/myTrades`` per symbol from ``ts_ns`` (ms resolution), oldest first;
        each trade's order is mapped to its client_order_id (tracked, or looked up)."""
        out: list[Fill] = []
        for sym in self.symbols:
            rows = await self._rest("myTrades", self._c.get_my_trades, symbol=sym,
                                    startTime=ts_ns // 1_000_000, idempotent=True)
            for row in rows:
                cid = self._vids.get(str(row["orderId"]))
                if cid is None:
                    o = await self._rest("order.get", self._c.get_order, symbol=sym,
                                         orderId=row["orderId"], idempotent=True)
                    cid = self._vids[str(row["orderId"])] = o["clientOrderId"]
                bot = self._intents[cid].bot if cid in self._intents else ""
                quote = self.rules[sym].quote if sym in self.rules else self.quote_asset
                out.append(bm.trade_fill(row, cid, self.names, bot, quote, self.clock.now_ns()))
        return sorted(out, key=lambda f: f.ts_event)

    async def reports(self) -> AsyncIterator[AnyEvent]:
        while True:
            yield await self._queue.get()

    def has_reports(self) -> bool:
        return not self._queue.empty()

    # --- user data stream (WebSocket API) -------------------------------------------------

    async def _user_stream(self) -> None:
        delay = self.reconnect_min_s
        while not self._closing:
            try:
                async with connect(self._ws_url, open_timeout=self.timeout_s) as ws:
                    await self._subscribe(ws)
                    delay = self.reconnect_min_s
                    async for frame in ws:
                        self._on_frame(frame)
            except (OSError, TimeoutError, websockets.WebSocketException,
                    VenueMessageError) as exc:
                log.warning("binance user stream: %s; reconnecting in %.2f s", exc, delay)
            finally:
                self.link.down()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _subscribe(self, ws: Any) -> None:
        req_id = str(uuid.uuid4())
        params = sign({"apiKey": self._key, "timestamp": int(time.time() * 1000)}, self._secret)
        await ws.send(json.dumps({"id": req_id, "method": "userDataStream.subscribe.signature",
                                  "params": params}))
        answer = json.loads(await asyncio.wait_for(ws.recv(), self.timeout_s))
        if answer.get("id") != req_id or answer.get("status") != 200:
            raise VenueMessageError(f"binance userDataStream.subscribe.signature: {answer}")
        self.connects += 1
        self.connected.set()
        self.link.up()
        if self.connects > 1:
            task = asyncio.get_running_loop().create_task(self.resync(), name="binance-resync")
            self._resyncs.add(task)
            task.add_done_callback(self._resyncs.discard)

    def _on_frame(self, frame: str | bytes) -> None:
        try:
            msg = json.loads(frame)
            event = msg.get("event") if isinstance(msg, dict) else None
            if not isinstance(event, dict) or event.get("e") != "executionReport":
                return  # balance updates, stream terminated notices, answers
            cid = bm.report_cid(event)
            self._vids[str(event.get("i"))] = cid
            bot = self._intents[cid].bot if cid in self._intents else ""
            rules = self.rules.get(str(event.get("s")))
            quote = rules.quote if rules else self.quote_asset
            for ev in bm.execution_report_events(event, self.names, bot, quote,
                                                 self.clock.now_ns()):
                self._put(ev)
            state = bm.order_state(str(event.get("X")), Decimal(str(event.get("z") or 0)))
            if state is not None and state.is_terminal:
                self._open.discard(cid)
        except (ValueError, VenueMessageError) as exc:
            self._put(self._error("stream", exc))

    async def resync(self) -> None:
        """Re-read every order in flight and import its missed trades (updates sent while
        the user stream was down are not replayed)."""
        open_now = [self._intents[c] for c in list(self._open) if c in self._intents]
        if not open_now:
            return
        try:
            for intent in open_now:
                report = await self.get_order(intent.client_order_id)
                if report is not None:
                    self._emit_report(report, intent.bot)
            for fill in await self.fills_since(min(i.ts_event for i in open_now)):
                if fill.client_order_id in self._intents:
                    self._put(fill)
        except Exception as exc:  # reported; reconciliation retries
            self._put(self._error("resync", exc))

    # --- helpers --------------------------------------------------------------------------

    def _emit_report(self, report: OrderStatusReport, bot: str) -> None:
        if report.venue_order_id:
            self._vids[report.venue_order_id] = report.client_order_id
        if report.state is None:
            self._put(self._error("status", VenueMessageError(
                f"binance: order {report.client_order_id} has status {report.venue_status!r}, "
                "unknown to qtd; it stays in flight", client_order_id=report.client_order_id)))
            return
        if report.state.is_terminal:
            self._open.discard(report.client_order_id)
        for ev in report_events(report, node=self.node, bot=bot, ts_init=self.clock.now_ns()):
            self._put(ev)

    async def _once(self, endpoint: str, fn: Callable[..., Awaitable[Any]], **params: Any) -> Any:
        costs = {"REQUEST_WEIGHT": WEIGHT[endpoint],
                 "ORDERS": 1 if endpoint == "order.post" else 0}
        return await self.guard.send(fn, costs, **params)

    async def _rest(self, endpoint: str, fn: Callable[..., Awaitable[Any]], *,
                    idempotent: bool, **params: Any) -> Any:
        return await call(lambda: self._once(endpoint, fn, **params), idempotent=idempotent,
                          policy=self.policy)

    def _error(self, op: str, exc: BaseException) -> BrokerError:
        now = self.clock.now_ns()
        cid = str(getattr(exc, "fields", {}).get("client_order_id", ""))
        return BrokerError(node=self.node, ts_event=now, ts_init=now, client_order_id=cid,
                           account=self.account, operation=op, error_type=type(exc).__name__,
                           message=str(exc), venue=self.venue)

    def _base(self, bot: str) -> dict[str, Any]:
        now = self.clock.now_ns()
        return {"node": self.node, "bot": bot, "ts_event": now, "ts_init": now}

    def _put(self, event: Event) -> None:
        self._queue.put_nowait(event)  # type: ignore[arg-type]
