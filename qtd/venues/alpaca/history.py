"""Alpaca stock and crypto bar history for ``qtd data fetch``
(:class:`qtd.catalog.fetch.BarSource`).

* alpaca-py's ``StockHistoricalDataClient`` (``GET /v2/stocks/bars``, the account's keys,
  feed ``iex`` or ``sip``) and ``CryptoHistoricalDataClient`` (``GET
  /v1beta3/crypto/us/bars``) for a symbol with ``/`` (``BTC/USD``); ``url_override`` points
  them at a stub in tests. The request's fields come from alpaca-py's ``StockBarsRequest`` /
  ``CryptoBarsRequest``; each page is one call of the client's ``get`` with ``limit=10000``
  and the previous answer's ``next_page_token`` (Alpaca Market Data API v2, "Historical
  bars": ``{"bars": {symbol: [{"t", "o", "h", "l", "c", "v", ...}]},
  "next_page_token"}``). ``get_stock_bars`` is not used because it follows every page
  inside one call, out of reach of the rate gate, the progress bar and the resume ledger.
  Bars are raw (Alpaca's default ``adjustment``). Prices arrive as JSON numbers; the
  fetcher reads each as the shortest decimal text of that number (``Decimal(str(x))``).
* Daily bars are stamped by Alpaca at midnight New York time; qtd stamps a daily bar 00:00
  UTC of its trading date (:class:`~qtd.feeds.bars.Bar`), so their open time is mapped to
  that date.
* Rate limit: 200 historical API calls a minute on the free plan (docs.alpaca.markets
  "About Market Data API", "Historical API calls 200/min"; 10,000/min with Algo Trader
  Plus: pass ``limits``). Every request passes the shared
  :class:`~qtd.brokers.retry.RateGate` first; a 429 blocks it for ``Retry-After``.
* Retries: alpaca-py's own (3 × 3 s on 429/504, blind to ``Retry-After``) are switched off
  as in :mod:`qtd.venues.alpaca.broker`; :func:`qtd.brokers.retry.call` retries instead.
  The clients use ``requests`` and run in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from alpaca.common.enums import Sort
from alpaca.data.enums import DataFeed
from alpaca.data.historical.crypto import CryptoHistoricalDataClient
from alpaca.data.historical.stock import StockHistoricalDataClient
from alpaca.data.requests import CryptoBarsRequest, StockBarsRequest
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit

from qtd.brokers.retry import RateGate, RateLimited, RetryPolicy, VenueUnavailable, call
from qtd.catalog.fetch import Page, RawBar
from qtd.feeds.bars import NS_PER_S, datetime_to_ns, ns_to_datetime
from qtd.venues import HistoryContext
from qtd.venues.alpaca.broker import translate

PAGE_LIMIT = 10_000
PUBLISHED_LIMITS: list[tuple[str, float, int]] = [("REQUESTS", 60.0, 200)]
"""The free plan's historical API calls per minute (module docstring)."""

_TIMEFRAMES = {"1m": TimeFrame(1, TimeFrameUnit.Minute), "5m": TimeFrame(5, TimeFrameUnit.Minute),
               "15m": TimeFrame(15, TimeFrameUnit.Minute), "1h": TimeFrame(1, TimeFrameUnit.Hour),
               "4h": TimeFrame(4, TimeFrameUnit.Hour), "1d": TimeFrame(1, TimeFrameUnit.Day)}
_NEW_YORK = ZoneInfo("America/New_York")
_STEP_NS = {"1m": 60 * NS_PER_S, "5m": 300 * NS_PER_S, "15m": 900 * NS_PER_S,
            "1h": 3600 * NS_PER_S, "4h": 14_400 * NS_PER_S, "1d": 86_400 * NS_PER_S}


class _Quiet:
    """Mixin: one attempt per request (qtd retries), a timeout, a close."""

    _session: Any

    def __init__(self, *args: Any, timeout_s: float, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._qtd_timeout = timeout_s

    def _one_request(self, method: str, url: str, opts: dict[str, Any], retry: int) -> Any:
        return super()._one_request(  # type: ignore[misc]
            method, url, {**opts, "timeout": self._qtd_timeout}, 0)

    def close(self) -> None:
        """Close the HTTP session (alpaca-py has no public close)."""
        self._session.close()


class _StockBars(_Quiet, StockHistoricalDataClient):
    pass


class _CryptoBars(_Quiet, CryptoHistoricalDataClient):
    pass


def open_time_ns(text: Any, interval: str) -> int:
    """A bar's ``t`` as qtd's open time, UTC ns (daily bars: 00:00 UTC of their date).

    Raises:
        VenueUnavailable: not RFC 3339 text (a broken answer: retried).
    """
    try:
        dt = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise VenueUnavailable(f"alpaca bars: t = {text!r}: not RFC 3339") from None
    ns = datetime_to_ns(dt)
    if interval != "1d":
        return ns
    day = ns_to_datetime(ns).astimezone(_NEW_YORK).date()
    return datetime_to_ns(datetime(day.year, day.month, day.day, tzinfo=UTC))


def rows_of(raw: Any, symbol: str, interval: str) -> tuple[list[RawBar], str | None]:
    """One answer's bars of ``symbol`` as ``(open ns, o, h, l, c, v)`` and its page token.

    Raises:
        VenueUnavailable: not the documented shape (retried).
    """
    bars = raw.get("bars") if isinstance(raw, dict) else None
    if not isinstance(bars, dict | None):
        raise VenueUnavailable(f"alpaca bars: unreadable answer {str(raw)[:120]}")
    out: list[RawBar] = []
    for b in (bars or {}).get(symbol, []) or []:
        if not isinstance(b, dict):
            raise VenueUnavailable(f"alpaca bars: unreadable bar {str(b)[:120]}")
        out.append((open_time_ns(b.get("t"), interval), b.get("o"), b.get("h"), b.get("l"),
                    b.get("c"), b.get("v")))
    token = raw.get("next_page_token")
    return out, token if isinstance(token, str) and token else None


class AlpacaHistory:
    """Alpaca historical bars (module docstring).

    Args:
        ctx: ``credentials`` (needed for stocks), ``rest_url`` (default
            ``https://data.alpaca.markets``), ``data_feed``, ``timeout_s``, ``policy``,
            ``limits`` (default :data:`PUBLISHED_LIMITS`).
    """

    venue = "alpaca"

    def __init__(self, ctx: HistoryContext) -> None:
        self.ctx = ctx
        self.policy = ctx.policy or RetryPolicy()
        self.gate = RateGate(ctx.limits or PUBLISHED_LIMITS,
                             max_wait_s=max(self.policy.max_retry_after_s, 61.0))
        self.endpoint = "GET /v2/stocks/bars"
        self._clients: dict[bool, _StockBars | _CryptoBars] = {}

    def _client(self, crypto: bool) -> _StockBars | _CryptoBars:
        if crypto not in self._clients:
            key, secret = self.ctx.credentials or (None, None)
            url = self.ctx.rest_url or None
            cls = _CryptoBars if crypto else _StockBars
            self._clients[crypto] = cls(key, secret, raw_data=True, url_override=url,
                                        timeout_s=self.ctx.timeout_s)
        return self._clients[crypto]

    def _params(self, symbol: str, interval: str, start_ns: int, end_ns: int) -> tuple[str, Any]:
        start, end = ns_to_datetime(start_ns), ns_to_datetime(end_ns - 1000)
        tf = _TIMEFRAMES[interval]
        if "/" in symbol:
            req: Any = CryptoBarsRequest(symbol_or_symbols=[symbol], timeframe=tf, start=start,
                                         end=end, sort=Sort.ASC)
            return "/crypto/us/bars", req.to_request_fields()
        req = StockBarsRequest(symbol_or_symbols=[symbol], timeframe=tf, start=start, end=end,
                               feed=DataFeed(self.ctx.data_feed), sort=Sort.ASC)
        return "/stocks/bars", req.to_request_fields()

    async def pages(self, symbol: str, interval: str, start_ns: int, end_ns: int
                    ) -> AsyncIterator[Page]:
        """Pages of up to 10,000 bars covering ``[start_ns, end_ns)``, by
        ``next_page_token``.

        Raises:
            RateLimited, VenueUnavailable: still failing after ``policy.attempts``.
            VenueRejected: e.g. bad keys (403) or an unknown symbol (422).
        """
        path, params = self._params(symbol, interval, start_ns, end_ns)
        client = self._client("/" in symbol)
        step = _STEP_NS[interval]
        self.endpoint = f"GET /{'v1beta3' if '/' in symbol else 'v2'}{path}"
        token: str | None = None
        while True:
            query = {**params, "limit": PAGE_LIMIT, **({"page_token": token} if token else {})}
            rows, nxt = await self._get(client, path, query, symbol, interval)
            if nxt is not None and nxt == token:
                raise VenueUnavailable(f"alpaca bars: next_page_token {nxt!r} repeats")
            token = nxt
            if token is None:
                yield Page(rows, end_ns)
                return
            if rows:
                yield Page(rows, rows[-1][0] + step)

    async def _get(self, client: _StockBars | _CryptoBars, path: str, query: dict[str, Any],
                   symbol: str, interval: str) -> tuple[list[RawBar], str | None]:
        async def once() -> tuple[list[RawBar], str | None]:
            await self.gate.acquire(REQUESTS=1)
            try:
                raw = await asyncio.wait_for(asyncio.to_thread(client.get, path, query),
                                             self.ctx.timeout_s + 5)
            except Exception as exc:
                err = translate(exc)
                if isinstance(err, RateLimited):
                    self.gate.block_for(err.retry_after_s or 60.0)
                raise err from exc
            return rows_of(raw, symbol, interval)

        return await call(once, idempotent=True, policy=self.policy)

    async def close(self) -> None:
        """Close the HTTP sessions."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()
