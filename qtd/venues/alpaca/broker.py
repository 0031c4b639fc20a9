"""Alpaca broker adapter (alpaca-py ``TradingClient`` + ``TradingStream``).

* REST through alpaca-py's ``TradingClient`` with ``raw_data=True`` (payloads decoded by
  :mod:`qtd.venues.alpaca.mapping`). It uses synchronous ``requests``, so every call runs in a
  worker thread (``asyncio.to_thread``). The client is subclassed only to give each request
  a timeout (alpaca-py sets none) and to switch off its own retry of 429/504 (3 × 3 s,
  blind to ``Retry-After``, and a 504 on ``POST /v2/orders`` must not be re-sent): qtd
  retries through :mod:`qtd.brokers.retry`.
* Order updates through ``TradingStream`` (``trade_updates``), run as a task on the current
  loop via its coroutine entry point; subclassed to learn of each (re)connection, after
  which every order still in flight is re-read with :meth:`AlpacaBroker.get_order` and its
  missed executions imported from ``FILL`` account activities (:meth:`fills_since`).
* ``paper=True`` uses ``https://paper-api.alpaca.markets`` and its stream; ``False`` the live
  ones; ``base_url``/``stream_url`` override both (stubs in tests).

A submit whose outcome is unknown (timeout, 5xx, dropped connection, unreadable answer) is
never re-sent: the order is looked up by client_order_id (``GET
/v2/orders:by_client_order_id``); if the venue still does not know it the submit raises
:class:`~qtd.brokers.retry.OutcomeUnknown` and the order stays in flight. Alpaca only
refuses a duplicate client_order_id among *active* orders (STACK-NOTES), so a re-send of an
order that already filled would trade twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.stream import TradingStream

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
    OrderType,
    PositionSnapshot,
    Side,
    TimeInForce,
)
from qtd.venues.alpaca import mapping as am

log = logging.getLogger(__name__)


class _Client(TradingClient):
    def __init__(self, *args: Any, timeout_s: float, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._qtd_timeout = timeout_s

    def _one_request(self, method: str, url: str, opts: dict[str, Any], retry: int) -> Any:
        return super()._one_request(method, url, {**opts, "timeout": self._qtd_timeout}, 0)

    def close(self) -> None:
        """Close the HTTP session (alpaca-py has no public close)."""
        self._session.close()


class _Stream(TradingStream):
    def __init__(self, *args: Any, on_connect: Callable[[], None],
                 on_lost: Callable[[], None], reconnect_min_s: float, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._on_connect, self._on_lost = on_connect, on_lost
        self._reconnect_min_backoff = reconnect_min_s

    async def serve(self) -> None:
        """Run the stream on the current loop (its ``run()`` starts a loop of its own)."""
        await self._run_forever()  # type: ignore[no-untyped-call]

    async def _start_ws(self) -> None:
        await super()._start_ws()  # type: ignore[no-untyped-call]
        self._on_connect()

    async def _consume(self) -> None:
        try:
            await super()._consume()  # type: ignore[no-untyped-call]
        finally:
            self._on_lost()


def translate(exc: BaseException) -> BaseException:
    """Map a ``requests``/alpaca-py error to a :mod:`qtd.brokers.retry` outcome."""
    if isinstance(exc, (requests.Timeout, requests.ConnectionError, ValueError)):
        return VenueUnavailable(f"alpaca: {type(exc).__name__}: {exc}")
    if not isinstance(exc, APIError):
        return exc
    status = exc.status_code or 0
    if status == 429:
        after = exc.response.headers.get("Retry-After") if exc.response is not None else None
        return RateLimited("alpaca: 429 too many requests",
                           retry_after_s=float(after) if after else None)
    if status >= 500 or status == 0:
        return VenueUnavailable(f"alpaca: HTTP {status}: {str(exc)[:200]}")
    try:
        code, msg = str(exc.code), str(exc.message)
    except (ValueError, KeyError, TypeError):
        code, msg = str(status), str(exc)[:200]
    return VenueRejected(f"alpaca: HTTP {status} {code}: {msg}", code=code, status=status)


class AlpacaBroker:
    """One Alpaca account (see the module docstring).

    Args:
        account: account name in qtd events.
        node: node name in qtd events.
        clock: UTC ns time source for ``ts_init``.
        api_key: Alpaca API key id.
        secret_key: Alpaca API secret.
        paper: paper (True) or live (False) endpoints.
        base_url: REST base URL override (without ``/v2``).
        stream_url: trade stream URL override (``ws://.../stream``).
        timeout_s: per-request timeout, seconds.
        policy: retry and resolution timing.
        reconnect_min_s: first stream reconnect delay, seconds (alpaca-py backs off to 30 s).
    """

    def __init__(
        self, *, account: str, node: str, clock: Clock, api_key: str, secret_key: str,
        paper: bool = True, base_url: str | None = None, stream_url: str | None = None,
        timeout_s: float = 5.0, policy: RetryPolicy | None = None,
        reconnect_min_s: float = 1.0, venue: str = "alpaca",
    ) -> None:
        self.account, self.venue, self.node, self.clock = account, venue, node, clock
        self.policy = policy or RetryPolicy()
        self.ctx = am.Context(node=node, account=account, venue=venue)
        self._client = _Client(api_key, secret_key, paper=paper, raw_data=True,
                               url_override=base_url, timeout_s=timeout_s)
        self._stream = _Stream(api_key, secret_key, paper=paper, raw_data=True,
                               url_override=stream_url, on_connect=self._connected,
                               on_lost=self.link_down, reconnect_min_s=reconnect_min_s)
        self._stream.subscribe_trade_updates(self._on_update)
        self._queue: asyncio.Queue[AnyEvent] = asyncio.Queue()
        self._intents: dict[str, OrderIntent] = {}
        self._open: set[str] = set()
        self._vids: dict[str, str] = {}  # venue order id -> client_order_id
        self._task: asyncio.Task[None] | None = None
        self._resyncs: set[asyncio.Task[None]] = set()  # owned: cancelled by close()
        self.connects = 0
        self.connected = asyncio.Event()
        self.link = Link()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the trade-updates stream task (returns once it is authorized and listening)."""
        self._task = asyncio.create_task(self._stream.serve(), name="alpaca-stream")
        await asyncio.wait_for(self.connected.wait(), 10)

    async def close(self) -> None:
        """Stop the resyncs in progress, the stream and the HTTP session."""
        for task in list(self._resyncs):
            await cancel_and_wait(task)
        if self._task is not None:
            await self._stream.stop_ws()
            await self._stream.close()
            try:
                await asyncio.wait_for(self._task, 2)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._client.close()

    def track(self, intent: OrderIntent) -> None:
        """Remember an intent still open (e.g. from the store after a restart), so its
        updates carry its bot and it is re-read after a reconnect."""
        self._intents[intent.client_order_id] = intent
        self._open.add(intent.client_order_id)

    # --- Broker Protocol ------------------------------------------------------------------

    async def submit(self, intent: OrderIntent, token: SubmitToken) -> None:
        """Place ``intent`` (``POST /v2/orders`` with its client_order_id).

        Raises:
            TokenError: no valid risk-engine token; nothing was sent.
            OutcomeUnknown: the venue could not say whether the order exists; it stays in
                flight (never re-sent).
        """
        verify_token(token, intent)
        self.track(intent)
        cid = intent.client_order_id
        try:
            raw = await self._rest(self._client.post, "/orders", am.order_body(intent),
                                   idempotent=False)
        except (VenueRejected, RateLimited) as exc:
            code = getattr(exc, "code", "") or "RATE_LIMITED"
            self._open.discard(cid)
            self._put(OrderRejected(**self._base(intent.bot), client_order_id=cid,
                                    reason=exc.message, code=str(code)))
            return
        except VenueUnavailable as exc:
            await self._resolve(intent, exc)
            return
        self._emit_report(am.order_report(raw), intent.bot)

    async def _resolve(self, intent: OrderIntent, cause: VenueUnavailable) -> None:
        cid = intent.client_order_id
        report = await resolve_unknown(lambda: self._get_order(cid), policy=self.policy)
        if report is None:
            raise OutcomeUnknown(f"alpaca: submit of {cid} failed ({cause.message}) and the "
                                 "venue does not know the order yet; it stays in flight",
                                 client_order_id=cid)
        self._emit_report(report, intent.bot)

    async def cancel(self, client_order_id: str, token: SubmitToken) -> None:
        """Cancel one order (``DELETE /v2/orders/{id}``); an order that is no longer
        cancelable (422) or unknown (404) is left to the stream / reconciliation.

        Raises:
            TokenError: missing or wrong cancel token.
        """
        verify_cancel_token(token, client_order_id)
        vid = next((v for v, c in self._vids.items() if c == client_order_id), None)
        if vid is None:
            report = await self.get_order(client_order_id)
            if report is None:
                return
            vid = report.venue_order_id
        try:
            await self._rest(self._client.cancel_order_by_id, vid, idempotent=True)
        except VenueRejected as exc:
            log.info("alpaca cancel of %s refused: %s", client_order_id, exc.message)

    async def cancel_all(self, token: SubmitToken) -> list[str]:
        """Cancel every open order (``DELETE /v2/orders``; Alpaca answers 500 for orders no
        longer cancelable, so open orders are listed again afterwards).

        Raises:
            TokenError: no cancel token minted for ``"*"``.
        """
        verify_cancel_token(token, "*")
        before = [o.client_order_id for o in await self.open_orders()]
        try:
            await self._rest(self._client.cancel_orders, idempotent=True)
        except VenueUnavailable as exc:
            log.warning("alpaca cancel-all answered %s; open orders listed again", exc)
        return before

    async def open_orders(self) -> list[OrderIntent]:
        rows = await self._rest(self._client.get, "/orders", {"status": "open", "limit": 500},
                                idempotent=True)
        return [self._intents.get(r["client_order_id"]) or self._foreign(r) for r in rows]

    async def positions(self) -> list[PositionSnapshot]:
        rows = await self._rest(self._client.get, "/positions", idempotent=True)
        return am.position_snapshots(rows, self.ctx, self.clock.now_ns())

    async def account_info(self) -> AccountSnapshot:
        raw = await self._rest(self._client.get, "/account", idempotent=True)
        return am.account_snapshot(raw, self.account)

    async def get_order(self, client_order_id: str) -> OrderStatusReport | None:
        """``GET /v2/orders:by_client_order_id``; None on 404 (the venue has no such order).

        Raises:
            VenueUnavailable, RateLimited: the venue could not be asked.
        """
        return await call(lambda: self._get_order(client_order_id), idempotent=True,
                          policy=self.policy)

    async def _get_order(self, cid: str) -> OrderStatusReport | None:
        try:
            raw = await self._thread(self._client.get_order_by_client_id, cid)
        except VenueRejected as exc:
            if exc.status == 404:
                return None
            raise
        return am.order_report(raw)

    async def fills_since(self, ts_ns: int) -> list[Fill]:
        """``FILL`` account activities after ``ts_ns`` (oldest first, paged by ``page_token``);
        each activity's order is mapped to its client_order_id (tracked, or looked up)."""
        after = datetime.fromtimestamp((ts_ns - 1_000_000) / 1e9, UTC).isoformat()
        params: dict[str, Any] = {"after": after, "direction": "asc", "page_size": 100}
        out: list[Fill] = []
        while True:
            rows = await self._rest(self._client.get, "/account/activities/FILL", params,
                                    idempotent=True)
            for row in rows:
                fill = await self._activity_fill(row)
                if fill.ts_event >= ts_ns:
                    out.append(fill)
            if len(rows) < params["page_size"]:
                return out
            params["page_token"] = rows[-1]["id"]

    async def _activity_fill(self, row: dict[str, Any]) -> Fill:
        vid = row.get("order_id", "")
        cid = self._vids.get(vid)
        if cid is None:
            raw = await self._rest(self._client.get_order_by_id, vid, idempotent=True)
            cid = self._vids[vid] = raw["client_order_id"]
        bot = self._intents[cid].bot if cid in self._intents else ""
        return am.activity_fill(row, cid, self.ctx, bot, self.clock.now_ns())

    async def reports(self) -> AsyncIterator[AnyEvent]:
        while True:
            yield await self._queue.get()

    def has_reports(self) -> bool:
        return not self._queue.empty()

    # --- stream ---------------------------------------------------------------------------

    def link_down(self) -> None:
        """The trade-updates stream dropped (see :class:`~qtd.brokers.base.Link`)."""
        self.link.down()

    def _connected(self) -> None:
        self.connects += 1
        self.connected.set()
        self.link.up()
        if self.connects > 1:
            task = asyncio.get_running_loop().create_task(self.resync(), name="alpaca-resync")
            self._resyncs.add(task)
            task.add_done_callback(self._resyncs.discard)

    async def resync(self) -> None:
        """Re-read every order still in flight and import its missed executions (after a
        stream reconnect: updates sent while it was down are not replayed)."""
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
        except Exception as exc:  # a failed resync is reported; reconciliation retries
            self._put(self._error("resync", exc))

    async def _on_update(self, msg: dict[str, Any]) -> None:
        try:
            tu = am.decode_trade_update(msg)
            if tu is None:
                return
            cid = tu.order.client_order_id
            self._vids[tu.order.id] = cid
            bot = self._intents[cid].bot if cid in self._intents else ""
            for ev in am.trade_update_events(tu, self.ctx, bot, self.clock.now_ns()):
                self._put(ev)
            if am.is_terminal(tu):
                self._open.discard(cid)
        except VenueMessageError as exc:
            self._put(self._error("stream", exc))

    # --- helpers --------------------------------------------------------------------------

    def _emit_report(self, report: OrderStatusReport, bot: str) -> None:
        if report.venue_order_id:
            self._vids[report.venue_order_id] = report.client_order_id
        if report.state is None:
            self._put(self._error("status", VenueMessageError(
                f"alpaca: order {report.client_order_id} has status {report.venue_status!r}, "
                "unknown to qtd; it stays in flight")))
            return
        if report.state.is_terminal:
            self._open.discard(report.client_order_id)
        for ev in report_events(report, node=self.node, bot=bot, ts_init=self.clock.now_ns()):
            self._put(ev)

    async def _thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except Exception as exc:
            raise translate(exc) from exc

    async def _rest(self, fn: Callable[..., Any], *args: Any, idempotent: bool) -> Any:
        return await call(lambda: self._thread(fn, *args), idempotent=idempotent,
                          policy=self.policy)

    def _foreign(self, row: dict[str, Any]) -> OrderIntent:
        now = self.clock.now_ns()
        limit = row.get("limit_price")
        return OrderIntent(
            node=self.node, ts_event=now, ts_init=now, client_order_id=row["client_order_id"],
            cid_counter=0, account=self.account, venue=self.venue, symbol=row["symbol"],
            side=Side(row["side"].upper()), qty=Decimal(str(row["qty"])),
            order_type=OrderType.LIMIT if row.get("type") == "limit" else OrderType.MARKET,
            limit_price=Decimal(str(limit)) if limit else None,
            tif=TimeInForce(row.get("time_in_force", "day").upper())
            if row.get("time_in_force", "day").upper() in TimeInForce.__members__
            else TimeInForce.DAY,
            reason="venue",
        )

    def _error(self, op: str, exc: BaseException) -> BrokerError:
        now = self.clock.now_ns()
        return BrokerError(node=self.node, ts_event=now, ts_init=now,
                           client_order_id=str(getattr(exc, "fields", {}).get(
                               "client_order_id", "")),
                           account=self.account, operation=op, error_type=type(exc).__name__,
                           message=str(exc), venue=self.venue)

    def _base(self, bot: str) -> dict[str, Any]:
        now = self.clock.now_ns()
        return {"node": self.node, "bot": bot, "ts_event": now, "ts_init": now}

    def _put(self, event: Event) -> None:
        self._queue.put_nowait(event)  # type: ignore[arg-type]
