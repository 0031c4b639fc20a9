"""Re-check a set of bars: gaps against the venue's calendar, order, duplicates, OHLC rules.

Each problem names the time of the bar (or the first and last missing bar) as ISO 8601 UTC
text, which is how :mod:`qtd.catalog` files show time. The calendar is ``"24x7"`` (crypto:
every interval is a bar) or an ``exchange-calendars`` code such as ``"XNYS"``: intraday bars
are expected for every interval slot holding a trading minute, daily bars for every session
date. Bars outside the calendar (pre- and post-market bars, which Alpaca serves) are counted,
not reported as problems.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np
import numpy.typing as npt

from qtd.calendars import ExchangeSession, is_calendar
from qtd.catalog.keys import INTERVALS
from qtd.errors import ConfigError
from qtd.feeds.bars import Bar, ns_to_iso
from qtd.feeds.validate import RULE_DUPLICATE, RULE_SORTED, RowChecker

ALWAYS_OPEN = "24x7"
RULE_GAP = "a bar for every interval the calendar is open"
RULE_GRID = "open time a whole number of intervals since 1970-01-01T00:00:00Z"
_DAY = INTERVALS["1d"]
_KINDS = {RULE_DUPLICATE: "duplicate", RULE_SORTED: "order"}


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """One problem in a set.

    Attributes:
        kind: ``"gap"``, ``"duplicate"``, ``"order"``, ``"ohlc"`` or ``"grid"``.
        time: the bar's open time (a gap: the first missing bar's), ISO 8601 UTC.
        until: a gap: the last missing bar's open time; else ``""``.
        bars: a gap: how many bars are missing; else 1.
        field: the field at fault (``"high"``, ``"ts"``); ``""`` for a gap.
        value: the offending value as text.
        rule: the rule broken.
    """

    kind: str
    time: str
    until: str = ""
    bars: int = 1
    field: str = ""
    value: str = ""
    rule: str = ""

    def describe(self) -> str:
        """One line for the operator."""
        if self.kind == "gap":
            span = self.time if self.bars == 1 else f"{self.time} .. {self.until}"
            return f"gap        {span}: {self.bars} bar(s) missing"
        return f"{self.kind:<10} {self.time}: {self.field}={self.value!r} breaks '{self.rule}'"


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """The result of :func:`verify_bars`.

    Attributes:
        set: the set's name.
        calendar: the calendar gaps were checked against.
        rows: bars checked.
        first: first bar open time, ISO 8601 UTC (``""`` without bars).
        last: last bar open time, ISO 8601 UTC.
        expected: bars the calendar expects from first to last.
        off_calendar: bars outside the calendar's trading time (not problems).
        problems: every problem, in time order within each kind (gaps first).
    """

    set: str
    calendar: str
    rows: int
    first: str
    last: str
    expected: int
    off_calendar: int
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        """True when there is no problem."""
        return not self.problems


def check_calendar(name: str) -> None:
    """Raises :class:`~qtd.errors.ConfigError` unless ``name`` is ``"24x7"`` or an
    exchange-calendars code."""
    if name != ALWAYS_OPEN and not is_calendar(name):
        raise ConfigError(
            f"calendar {name!r}: must be {ALWAYS_OPEN} or an exchange-calendars code "
            "(e.g. XNYS, XNAS, XLON)",
            source="<arg>",
            field="calendar",
            value=name,
            rule=f"{ALWAYS_OPEN} or an exchange-calendars code",
        )


def verify_bars(name: str, bars: Sequence[Bar], interval: str, calendar: str) -> Report:
    """Check ``bars`` of set ``name`` (open times ascending expected).

    Args:
        name: the set's name, for the report.
        bars: the bars, as read.
        interval: the set's interval (a key of :data:`~qtd.catalog.keys.INTERVALS`).
        calendar: ``"24x7"`` or an exchange-calendars code.

    Raises:
        ConfigError: unknown calendar.
    """
    check_calendar(calendar)
    problems = _row_problems(name, bars, INTERVALS[interval])
    if not bars:
        return Report(
            set=name,
            calendar=calendar,
            rows=0,
            first="",
            last="",
            expected=0,
            off_calendar=0,
            problems=problems,
        )
    stamps = np.unique(np.fromiter((bar.ts_ns for bar in bars), np.int64, len(bars)))
    expected, actual = _expected(stamps, INTERVALS[interval], calendar)
    gaps = _gaps(expected, actual)
    off = int(np.setdiff1d(actual, expected, assume_unique=True).size)
    return Report(
        set=name,
        calendar=calendar,
        rows=len(bars),
        first=ns_to_iso(bars[0].ts_ns),
        last=ns_to_iso(bars[-1].ts_ns),
        expected=int(expected.size),
        off_calendar=off,
        problems=gaps + problems,
    )


def _row_problems(name: str, bars: Sequence[Bar], interval_ns: int) -> list[Problem]:
    checker = RowChecker(name, unique_ts=True)
    grid: list[Problem] = []
    for row, bar in enumerate(bars):
        time = ns_to_iso(bar.ts_ns)
        checker.check_ts(row, "ts", bar.ts_ns, time)
        checker.check_bar(row, bar.open, bar.high, bar.low, bar.close, bar.volume)
        if interval_ns < _DAY and bar.ts_ns % interval_ns:
            grid.append(Problem(kind="grid", time=time, field="ts", value=time, rule=RULE_GRID))
    rows = [
        Problem(
            kind=_KINDS.get(issue.rule, "ohlc"),
            time=ns_to_iso(bars[issue.row].ts_ns),
            field=issue.field,
            value=issue.value,
            rule=issue.rule,
        )
        for issue in checker.issues
    ]
    return rows + grid


def _expected(
    stamps: npt.NDArray[np.int64], interval_ns: int, calendar: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(open times the calendar expects, open times present), both sorted and unique;
    daily sets compare UTC dates."""
    first, last = int(stamps[0]), int(stamps[-1])
    if calendar == ALWAYS_OPEN:
        count = (last - first) // interval_ns + 1  # integers: arange's float length is off
        return first + interval_ns * np.arange(count, dtype=np.int64), stamps
    session = ExchangeSession(calendar)
    if interval_ns >= _DAY:
        days = np.array(session.session_days(first, last), dtype=np.int64)
        return days, np.unique(stamps - stamps % _DAY)
    minutes = np.array(session.minutes_ns(first, last + interval_ns - 1), dtype=np.int64)
    slots = np.unique(minutes - minutes % interval_ns)
    return slots[(slots >= first) & (slots <= last)], stamps


def _gaps(expected: npt.NDArray[np.int64], actual: npt.NDArray[np.int64]) -> list[Problem]:
    missing = np.flatnonzero(~np.isin(expected, actual, assume_unique=True))
    if missing.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(missing) != 1) + 1
    out: list[Problem] = []
    for run in np.split(missing, breaks):
        first, last = int(expected[run[0]]), int(expected[run[-1]])
        out.append(
            Problem(
                kind="gap",
                time=ns_to_iso(first),
                until=ns_to_iso(last),
                bars=int(run.size),
                rule=RULE_GAP,
            )
        )
    return out
