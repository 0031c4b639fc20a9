"""Bar history served by the venue stubs (``/api/v3/klines``, Alpaca ``/v2/stocks/bars``).

:class:`Series` is a deterministic bar for every open time of an interval from ``first_ns``
to ``last_ns`` (close = 100 + index mod 50, open = close - 1, high = close + 1, low = close -
2), except the open times in :attr:`Series.gaps` (the venue has no bar: a maintenance window)
and those in :attr:`Series.bad` (fields replaced, e.g. a high below the close).
:class:`WeightWindow` counts request weight in fixed windows, as Binance does, and tells when
a request goes over the limit (a 429 caused by the client).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

NS_PER_MS = 1_000_000
MINUTE_NS = 60_000_000_000
INTERVAL_NS = {"1m": MINUTE_NS, "5m": 5 * MINUTE_NS, "15m": 15 * MINUTE_NS,
               "1h": 60 * MINUTE_NS, "4h": 240 * MINUTE_NS, "1d": 1440 * MINUTE_NS}


class Series:
    """A venue's bars of one symbol and interval (module docstring).

    Args:
        interval: ``"1m"`` ... ``"1d"``.
        first_ns: first open time, UTC ns (aligned to the interval).
        last_ns: last open time, UTC ns (inclusive).
    """

    def __init__(self, interval: str, first_ns: int, last_ns: int) -> None:
        self.interval = interval
        self.interval_ns = INTERVAL_NS[interval]
        self.first_ns, self.last_ns = first_ns, last_ns
        self.gaps: list[tuple[int, int]] = []  # [lo, hi) open times without a bar
        self.bad: dict[int, dict[str, str]] = {}

    def bar(self, ts: int) -> dict[str, str] | None:
        if ts < self.first_ns or ts > self.last_ns or (ts - self.first_ns) % self.interval_ns:
            return None
        if any(lo <= ts < hi for lo, hi in self.gaps):
            return None
        i = (ts - self.first_ns) // self.interval_ns
        c = Decimal(100 + i % 50) + Decimal("0.25")
        bar = {"o": str(c - 1), "h": str(c + 1), "l": str(c - 2), "c": str(c), "v": "12.5"}
        return {**bar, **self.bad.get(ts, {})}

    def between(self, lo: int, hi: int) -> Iterator[tuple[int, dict[str, str]]]:
        """Bars with ``lo <= open time <= hi``, ascending."""
        start = max(lo, self.first_ns)
        off = (start - self.first_ns) % self.interval_ns
        ts = start + (self.interval_ns - off if off else 0)
        while ts <= min(hi, self.last_ns):
            bar = self.bar(ts)
            if bar is not None:
                yield ts, bar
            ts += self.interval_ns

    def count(self, lo: int, hi: int) -> int:
        """Bars with ``lo <= open time < hi``."""
        return sum(1 for _ in self.between(lo, hi - 1))


class WeightWindow:
    """Request weight per fixed window of ``window_s`` (Binance counts per minute).

    Args:
        window_s: window length, seconds.
        limit: weight allowed per window.
    """

    def __init__(self, window_s: float, limit: int) -> None:
        self.window_s, self.limit = window_s, limit
        self.window = -1
        self.used = 0
        self.peak = 0
        self.over = 0  # requests refused because the client went over the limit

    def take(self, weight: int) -> float | None:
        """Count ``weight``; None if within the limit, else seconds until the next window."""
        now = time.monotonic()
        window = int(now // self.window_s)
        if window != self.window:
            self.window, self.used = window, 0
        if self.used + weight > self.limit:
            self.over += 1
            return (window + 1) * self.window_s - now
        self.used += weight
        self.peak = max(self.peak, self.used)
        return None


def alpaca_bars(series: Series, q: dict[str, str], page_max: int) -> dict[str, Any]:
    """Alpaca's answer to ``/v2/stocks/bars`` query ``q`` (``start``, ``end``, ``limit``,
    ``page_token``: here the RFC 3339 open time of the page's first bar); daily bars are
    stamped at midnight New York time, as Alpaca does."""
    lo = _ns(q["page_token"]) if q.get("page_token") else _ns(q["start"])
    if series.interval == "1d":  # Alpaca's daily stamp is 04:00/05:00 UTC
        lo -= lo % INTERVAL_NS["1d"]
    hi = _ns(q["end"]) if q.get("end") else time.time_ns()
    limit = min(int(q.get("limit", 1000)), page_max)
    rows: list[dict[str, Any]] = []
    token = None
    for ts, b in series.between(lo, hi):
        if len(rows) == limit:
            token = datetime.fromtimestamp(ts // 1_000_000_000, UTC).isoformat()
            break
        rows.append({"t": _stamp(ts, series.interval), **{k: float(v) for k, v in b.items()},
                     "n": 7, "vw": float(b["c"])})
    return {"bars": {q.get("symbols", ""): rows} if rows else {}, "next_page_token": token}


def _ns(text: str) -> int:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def _stamp(ts: int, interval: str) -> str:
    dt = datetime.fromtimestamp(ts // 1_000_000_000, UTC)
    if interval == "1d":
        dt = datetime(dt.year, dt.month, dt.day, tzinfo=ZoneInfo("America/New_York"))
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")
