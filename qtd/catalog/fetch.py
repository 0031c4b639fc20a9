"""Fetch a venue's bar history into the catalog: plan, page, validate, write, remember.

:class:`Fetcher` fills one set (``venue:SYMBOL:interval``) over ``[start, end)`` from a
:class:`BarSource` (a venue's history client, e.g.
:class:`qtd.venues.binance.history.BinanceHistory`):

* **Incremental, resumable.** Beside the set's month files the fetcher keeps
  ``fetched.jsonl``: one :class:`Covered` range per completed stretch, meaning "the venue was
  asked for these open times and every good bar it returned is stored". A fetch asks only
  for ``[start, end)`` minus those ranges (a set with bars but no ledger, e.g. one imported
  from CSV, counts ``[first, last]`` as covered). Ranges are recorded only *after* their bars
  were written, so an interrupted run (error, Ctrl-C, even ``kill -9``) loses at most the
  bars not yet written; the next run asks for exactly those again and the catalog drops any
  bar it already holds. A month half-filled by an interrupted run is completed by the next
  one; a gap the venue really has is asked for once.
* **Validated on the way in.** Each bar must have decimal prices > 0, ``high >=
  max(open, close)``, ``low <= min(open, close)``, volume >= 0 (the rules of
  :mod:`qtd.feeds.validate`), an open time inside the page asked for and strictly after the
  previous bar's. A bar that breaks a rule is **dropped** (never stored) and reported with
  its open time in ISO 8601 text (:class:`BadBar`); a bar dropped for its prices is left out
  of the covered range, so a later fetch asks the venue for it again.
* **Written in batches.** Bars are written when a page reaches a new month, every
  :data:`FLUSH_BARS` bars, at the end, and when the fetch stops on an error or is cancelled.
* Open times at or after the start of the bar still open now are never asked for.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol

import msgspec

from qtd.catalog.keys import Provenance, SetKey
from qtd.catalog.store import Catalog, month_of
from qtd.feeds.bars import Bar, ns_to_iso
from qtd.feeds.validate import RULE_DUPLICATE, RULE_NUMBER, RULE_SORTED, RowChecker

LEDGER_FILE = "fetched.jsonl"
FLUSH_BARS = 50_000
RULE_RANGE = "open time inside the range asked for"
RawBar = tuple[int, Any, Any, Any, Any, Any]
"""One bar as the venue sent it: ``(open time UTC ns, open, high, low, close, volume)``;
prices and volume as the venue's text or number (converted to Decimal by the fetcher)."""


class Page(msgspec.Struct, frozen=True):
    """One answer of the venue.

    Attributes:
        rows: the bars, in the venue's order (unvalidated).
        end_ns: the source vouches that ``rows`` are every bar opening from the end of the
            previous page (or the range start) up to ``end_ns`` (exclusive), UTC ns.
    """

    rows: list[RawBar]
    end_ns: int


class BarSource(Protocol):
    """A venue's historical bars, page by page (rate limits and retries are its own)."""

    venue: str
    endpoint: str

    def pages(self, symbol: str, interval: str, start_ns: int, end_ns: int
              ) -> AsyncIterator[Page]:
        """Pages covering ``[start_ns, end_ns)`` in ascending order.

        Raises:
            qtd.errors.QtdError: the venue refused or stayed unreachable after retries.
        """
        ...

    async def close(self) -> None:
        """Release the HTTP session."""
        ...


class Covered(msgspec.Struct, frozen=True):
    """One line of ``fetched.jsonl``: ``[start_ns, end_ns)`` fetched and stored."""

    start_ns: int
    end_ns: int
    endpoint: str = ""
    at_ns: int = 0


class BadBar(msgspec.Struct, frozen=True):
    """A bar the venue sent that broke a rule; it was dropped (not stored).

    Attributes:
        time: its open time, ISO 8601 UTC text.
        ts_ns: its open time, UTC ns.
        field: the field at fault (``"high"``, ``"time"`` ...).
        value: the value as sent.
        rule: the rule broken.
        action: what the fetch did: ``"dropped"`` (and, for price rules, ``"; asked
            again by the next fetch"``).
    """

    time: str
    ts_ns: int
    field: str
    value: str
    rule: str
    action: str

    def describe(self) -> str:
        """One line for the operator."""
        return f"{self.time}: {self.field}={self.value!r} breaks '{self.rule}'; {self.action}"


class FetchResult(msgspec.Struct, kw_only=True):
    """What one :meth:`Fetcher.fetch` did.

    Attributes:
        key: the set name.
        asked: the ranges asked of the venue, ``[start_ns, end_ns)`` each.
        pages: venue answers read.
        received: bars received.
        added: bars added to the catalog (new open times).
        bad: bars dropped, with the rule each broke.
        gaps: stretches with no bar between two received bars (the venue had none).
        longest_gap_ns: the longest such stretch, ns.
        longest_gap_at: where it starts (ISO text), or "".
        error: the error that stopped the fetch, or "" (bars before it are stored).
    """

    key: str
    asked: list[tuple[int, int]] = []
    pages: int = 0
    received: int = 0
    added: int = 0
    bad: list[BadBar] = []
    gaps: int = 0
    longest_gap_ns: int = 0
    longest_gap_at: str = ""
    error: str = ""


class FetchListener(Protocol):
    """Progress of a fetch (a progress bar, plain lines, or nothing)."""

    def started(self, key: SetKey, total_ns: int) -> None:
        """``total_ns`` of open times will be asked for."""

    def advanced(self, key: SetKey, done_ns: int, bars: int) -> None:
        """``done_ns`` more of it and ``bars`` more bars received."""

    def problem(self, key: SetKey, bad: BadBar) -> None:
        """A bar was dropped."""

    def finished(self, key: SetKey, result: FetchResult) -> None:
        """The fetch of ``key`` ended (see ``result.error``)."""


class Quiet:
    """A :class:`FetchListener` that reports nothing."""

    def started(self, key: SetKey, total_ns: int) -> None:
        return None

    def advanced(self, key: SetKey, done_ns: int, bars: int) -> None:
        return None

    def problem(self, key: SetKey, bad: BadBar) -> None:
        return None

    def finished(self, key: SetKey, result: FetchResult) -> None:
        return None


def merge(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of half-open ranges, sorted, adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(r for r in ranges if r[1] > r[0]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def missing(covered: Sequence[tuple[int, int]], start_ns: int, end_ns: int
            ) -> list[tuple[int, int]]:
    """``[start_ns, end_ns)`` minus ``covered``, as sorted half-open ranges."""
    out, cursor = [], start_ns
    for lo, hi in merge(covered):
        if hi <= cursor:
            continue
        if lo >= end_ns:
            break
        if lo > cursor:
            out.append((cursor, min(lo, end_ns)))
        cursor = max(cursor, hi)
    if cursor < end_ns:
        out.append((cursor, end_ns))
    return out


def ledger_path(catalog: Catalog, key: SetKey) -> Path:
    """``fetched.jsonl`` of ``key``."""
    return catalog.set_dir(key) / LEDGER_FILE


def covered(catalog: Catalog, key: SetKey) -> list[tuple[int, int]]:
    """The open-time ranges of ``key`` already fetched (module docstring), merged."""
    path = ledger_path(catalog, key)
    if path.exists():
        dec = msgspec.json.Decoder(Covered)
        lines = [dec.decode(line) for line in path.read_bytes().splitlines() if line.strip()]
        return merge([(c.start_ns, c.end_ns) for c in lines])
    span = catalog.span(key)
    return [] if span is None else [(span[0], span[1] + key.interval_ns)]


def last_closed_open_ns(interval_ns: int, now_ns: int) -> int:
    """Open time of the bar still open at ``now_ns``: bars from here on are not asked for."""
    return now_ns - now_ns % interval_ns


class Fetcher:
    """Fills catalog sets from one venue's :class:`BarSource` (module docstring).

    Args:
        catalog: where bars are written.
        source: the venue's history client.
        listener: progress and problems.
        now_ns: UTC ns clock (caps the range at the bar still open).
        flush_bars: write after this many buffered bars at the latest.
    """

    def __init__(self, catalog: Catalog, source: BarSource, *, listener: FetchListener,
                 now_ns: Callable[[], int] = time.time_ns, flush_bars: int = FLUSH_BARS
                 ) -> None:
        self.catalog, self.source, self.listener = catalog, source, listener
        self.now_ns, self.flush_bars = now_ns, flush_bars

    def plan(self, key: SetKey, start_ns: int, end_ns: int) -> list[tuple[int, int]]:
        """The ranges a fetch of ``[start_ns, end_ns)`` would ask for."""
        end = min(end_ns, last_closed_open_ns(key.interval_ns, self.now_ns()))
        return missing(covered(self.catalog, key), start_ns, end) if start_ns < end else []

    async def fetch(self, key: SetKey, start_ns: int, end_ns: int) -> FetchResult:
        """Fetch what ``key`` lacks of ``[start_ns, end_ns)`` (UTC ns, half-open).

        Returns:
            What was done; ``error`` is set when a venue error stopped the fetch (the bars
            received before it are stored and their range remembered).

        Raises:
            asyncio.CancelledError: cancelled (bars received so far are written first).
        """
        run = _Run(self, key)
        run.result.asked = self.plan(key, start_ns, end_ns)
        self.listener.started(key, sum(hi - lo for lo, hi in run.result.asked))
        try:
            for lo, hi in run.result.asked:
                await run.fetch_range(lo, hi)
        except Exception as exc:
            run.result.error = f"{type(exc).__name__}: {exc}"
        finally:
            run.flush()
        self.listener.finished(key, run.result)
        return run.result


class _Run:
    """The state of one :meth:`Fetcher.fetch`."""

    def __init__(self, fetcher: Fetcher, key: SetKey) -> None:
        self.f, self.key = fetcher, key
        self.result = FetchResult(key=key.name)
        self.checker = RowChecker(key.name, unique_ts=True)
        self.buffer: list[Bar] = []
        self.pending: list[tuple[int, int]] = []
        self.prev_ts: int | None = None
        self.started_ns = fetcher.now_ns()

    async def fetch_range(self, lo: int, hi: int) -> None:
        cursor = lo
        pages = self.f.source.pages(self.key.symbol, self.key.interval, lo, hi)
        async for page in pages:
            end = min(max(page.end_ns, cursor), hi)
            good, holes = self.check_page(page.rows, cursor, end)
            self.result.pages += 1
            self.result.received += len(page.rows)
            self.buffer += good
            self.pending += _minus([(cursor, end)], holes)
            self.f.listener.advanced(self.key, end - cursor, len(page.rows))
            if self.buffer and (len(self.buffer) >= self.f.flush_bars
                                or month_of(self.buffer[0].ts_ns) != month_of(end - 1)):
                self.flush()
            cursor = end
        self.flush()

    def check_page(self, rows: list[RawBar], lo: int, hi: int
                   ) -> tuple[list[Bar], list[tuple[int, int]]]:
        """Good bars of a page, and the open-time slots of bars dropped for their values."""
        good: list[Bar] = []
        holes: list[tuple[int, int]] = []
        iv = self.key.interval_ns
        for ts, *values in rows:
            bar, bad = self.check_row(ts, values, lo, hi)
            if bad is None or bad.field != "time":  # in order: the venue has this bar
                if self.prev_ts is not None and ts - self.prev_ts > iv:
                    self.note_gap(self.prev_ts + iv, ts)
                self.prev_ts = ts
            if bar is not None:
                good.append(bar)
            elif bad is not None:
                if bad.field != "time":
                    holes.append((ts, ts + iv))
                self.result.bad.append(bad)
                self.f.listener.problem(self.key, bad)
        return good, holes

    def check_row(self, ts: int, values: list[Any], lo: int, hi: int
                  ) -> tuple[Bar | None, BadBar | None]:
        if not lo <= ts < hi:
            return None, _bad(ts, "time", ns_to_iso(ts), RULE_RANGE, "dropped")
        if self.prev_ts is not None and ts <= self.prev_ts:
            rule = RULE_DUPLICATE if ts == self.prev_ts else RULE_SORTED
            return None, _bad(ts, "time", ns_to_iso(ts), rule, "dropped")
        nums: list[Decimal] = []
        for name, raw in zip(("open", "high", "low", "close", "volume"), values, strict=True):
            try:
                nums.append(Decimal(str(raw)))
            except InvalidOperation:
                return None, _bad(ts, name, str(raw), RULE_NUMBER, _AGAIN)
        before = len(self.checker.issues)
        if not self.checker.check_bar(self.result.received, *nums):
            issue = self.checker.issues[before]
            return None, _bad(ts, issue.field, issue.value, issue.rule, _AGAIN)
        o, h, low, c, v = nums
        return Bar(self.key.symbol, ts, self.key.interval_ns, o, h, low, c, v), None

    def note_gap(self, lo: int, hi: int) -> None:
        self.result.gaps += 1
        if hi - lo > self.result.longest_gap_ns:
            self.result.longest_gap_ns, self.result.longest_gap_at = hi - lo, ns_to_iso(lo)

    def flush(self) -> None:
        """Write the buffered bars, then remember the ranges they complete."""
        if self.buffer:
            bars, src = self.buffer, self.f.source
            self.result.added += self.f.catalog.write(self.key, bars, Provenance(
                venue=src.venue, endpoint=src.endpoint, fetched_at_ns=self.started_ns,
                rows=len(bars), first_ns=bars[0].ts_ns, last_ns=bars[-1].ts_ns, source="rest"))
            self.buffer = []
        if self.pending:
            path = ledger_path(self.f.catalog, self.key)
            path.parent.mkdir(parents=True, exist_ok=True)
            now = self.f.now_ns()
            with open(path, "ab") as out:
                for lo, hi in merge(self.pending):
                    out.write(msgspec.json.encode(Covered(lo, hi, self.f.source.endpoint, now))
                              + b"\n")
            self.pending = []


_AGAIN = "dropped, not stored; the next fetch asks for it again"


def _bad(ts: int, field: str, value: str, rule: str, action: str) -> BadBar:
    return BadBar(time=ns_to_iso(ts), ts_ns=ts, field=field, value=value, rule=rule,
                  action=action)


def _minus(ranges: list[tuple[int, int]], holes: list[tuple[int, int]]
           ) -> list[tuple[int, int]]:
    out = ranges
    for h_lo, h_hi in holes:
        nxt: list[tuple[int, int]] = []
        for lo, hi in out:
            nxt += [r for r in ((lo, min(hi, h_lo)), (max(lo, h_hi), hi)) if r[1] > r[0]]
        out = nxt
    return out
