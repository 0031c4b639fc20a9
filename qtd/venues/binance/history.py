"""Binance spot kline history for ``qtd data fetch`` (:class:`qtd.catalog.fetch.BarSource`).

* ``GET /api/v3/klines?symbol&interval&startTime&endTime&limit=1000`` through python-binance's
  ``AsyncClient.get_klines`` (public: no API key). Pages by ``startTime``: the next page
  starts one interval after the last kline received; a page shorter than 1000 klines is the
  last of the range (Binance Spot API docs, ``rest-api.md`` "Kline/Candlestick data":
  "Default: 500; Maximum: 1000"; klines are "uniquely identified by their open time").
  ``get_historical_klines`` is not used: it adds a call for the earliest timestamp, sleeps
  on its own schedule and hides the pages from the rate gate and the resume ledger.
* Rate limits (``rest-api.md`` "Kline/Candlestick data" **Weight: 2**, the same for every
  ``limit``; CHANGELOG 2023-08-25: "The ``REQUEST_WEIGHT`` rate limit ... 6,000 every
  minute", ``RAW_REQUESTS`` "61,000 every 5 minutes", ``GET /api/v3/klines`` weight 1 → 2).
  Weight *by limit* applies to ``/api/v3/depth`` and to the futures klines, not to spot
  klines. Every request first passes the shared :class:`~qtd.brokers.retry.RateGate`
  (``REQUEST_WEIGHT`` 2, ``RAW_REQUESTS`` 1), so qtd never sends a request its window has
  no room for; a 429 anyway (another process on the same IP) blocks the gate for its
  ``Retry-After`` and the request is retried after it; a 418 (ban) stops the fetch.
* Retries: :func:`qtd.brokers.retry.call` (tenacity, exponential backoff with jitter) on
  429, 5xx, timeouts, dropped connections and unreadable (e.g. truncated) answers.
* **No bulk archive.** The public monthly kline files of ``data.binance.vision`` are not
  used: that host is not reachable from the test and ops hosts (only the API, or a stub of
  it, is), it would be a second format and code path to validate and test, and REST is
  enough: a year of 1-minute klines is 526 requests = 1,052 weight, under a fifth of one
  minute's budget, fetched in a few minutes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from binance.async_client import AsyncClient  # type: ignore[import-untyped]

from qtd.brokers.retry import (
    RateGate,
    RetryPolicy,
    VenueUnavailable,
    call,
)
from qtd.catalog.fetch import Page, RawBar
from qtd.feeds.bars import NS_PER_MS, ns_to_iso
from qtd.venues import HistoryContext
from qtd.venues.binance.endpoints import LIVE_API
from qtd.venues.binance.rest import RestGuard

KLINE_LIMIT = 1000
KLINE_WEIGHT = 2
KLINE_COSTS = {"REQUEST_WEIGHT": KLINE_WEIGHT, "RAW_REQUESTS": 1}
"""What one klines request counts against the gate."""
PUBLISHED_LIMITS: list[tuple[str, float, int]] = [
    ("REQUEST_WEIGHT", 60.0, 6000), ("RAW_REQUESTS", 300.0, 61000)]
"""Binance spot's published IP limits (module docstring)."""

_INTERVAL_MS = {"1m": 60_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000,
                "4h": 14_400_000, "1d": 86_400_000}


def rows_of(raw: Any) -> list[RawBar]:
    """``/api/v3/klines`` rows as ``(open ns, o, h, l, c, v)``.

    Raises:
        VenueUnavailable: the answer is not a list of ``[openTime ms, o, h, l, c, v, ...]``
            (a broken or truncated answer: retried).
    """
    if not isinstance(raw, list):
        raise VenueUnavailable(f"binance klines: answer is not a list: {str(raw)[:120]}")
    out: list[RawBar] = []
    for row in raw:
        if not isinstance(row, list) or len(row) < 6 or type(row[0]) is not int:
            raise VenueUnavailable(f"binance klines: unreadable row {str(row)[:120]}")
        out.append((row[0] * NS_PER_MS, row[1], row[2], row[3], row[4], row[5]))
    return out


class BinanceHistory:
    """Binance spot klines (module docstring).

    Args:
        ctx: ``rest_url`` (ending in ``/api``; default production), ``timeout_s``,
            ``policy``, ``limits`` (default :data:`PUBLISHED_LIMITS`).
    """

    venue = "binance"
    endpoint = "GET /api/v3/klines"

    def __init__(self, ctx: HistoryContext) -> None:
        self.url = ctx.rest_url or LIVE_API
        self.timeout_s = ctx.timeout_s
        self.policy = ctx.policy or RetryPolicy()
        self.guard = RestGuard(RateGate(ctx.limits or PUBLISHED_LIMITS,
                                        max_wait_s=max(self.policy.max_retry_after_s, 61.0)))
        self._client: AsyncClient | None = None

    async def pages(self, symbol: str, interval: str, start_ns: int, end_ns: int
                    ) -> AsyncIterator[Page]:
        """Pages of up to 1000 klines covering ``[start_ns, end_ns)``.

        Raises:
            RateLimited, VenueUnavailable: still failing after ``policy.attempts``.
            VenueBanned: HTTP 418. VenueRejected: e.g. an unknown symbol (HTTP 400).
        """
        step = _INTERVAL_MS[interval]
        start_ms, last_ms = start_ns // NS_PER_MS, (end_ns - 1) // NS_PER_MS
        while start_ms <= last_ms:
            rows = await self._klines(symbol=symbol, interval=interval, startTime=start_ms,
                                      endTime=last_ms, limit=KLINE_LIMIT)
            if len(rows) < KLINE_LIMIT:
                yield Page(rows, end_ns)
                return
            after = rows[-1][0] // NS_PER_MS + step
            if after <= start_ms:
                raise VenueUnavailable(
                    f"binance klines: a full page ending at {ns_to_iso(rows[-1][0])} does not "
                    f"advance past startTime {ns_to_iso(start_ms * NS_PER_MS)}")
            start_ms = after
            yield Page(rows, start_ms * NS_PER_MS)

    async def _klines(self, **params: Any) -> list[RawBar]:
        client = self._open()

        async def once() -> list[RawBar]:
            return rows_of(await self.guard.send(client.get_klines, KLINE_COSTS, **params))

        return await call(once, idempotent=True, policy=self.policy)

    def _open(self) -> AsyncClient:
        if self._client is None:
            cls: Any = type("QtdHistoryClient", (AsyncClient,),
                            {"API_URL": self.url, "REQUEST_TIMEOUT": self.timeout_s})
            self._client = cls()  # no ping/time calls: klines are public and unsigned
        return self._client

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._client is not None:
            await self._client.close_connection()
            self._client = None
