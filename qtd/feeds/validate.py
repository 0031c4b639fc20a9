"""Row checks for market data files: collect every bad row, then raise one error.

Each problem is an :class:`Issue` naming the file, the row, the field, the value and the rule
it broke. :class:`RowChecker` gathers them while a loader reads a file;
:meth:`RowChecker.raise_if_any` raises one :class:`~qtd.errors.ConfigError` that lists them
all (the first :data:`MAX_LISTED` in its message) and carries the full list as ``.issues``.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from qtd.errors import ConfigError
from qtd.feeds.bars import ns_to_iso

MAX_LISTED = 50
"""How many issues an error message lists; ``ConfigError.issues`` always has them all."""

RULE_SORTED = "timestamps ascending"
RULE_DUPLICATE = "no duplicate timestamps"
RULE_HIGH = "high >= max(open, close)"
RULE_LOW = "low <= min(open, close)"
RULE_PRICE = "price > 0 and finite"
RULE_VOLUME = "volume >= 0 and finite"
RULE_NUMBER = "a decimal number"
RULE_TIME = "ISO 8601 time or epoch number"
RULE_COLUMNS = "same number of columns as the header"


class Issue(msgspec.Struct, frozen=True):
    """One bad row.

    Attributes:
        file: the file the row came from.
        row: 1-based line number in the file (the header is line 1); for Parquet, the
            1-based row index.
        field: the column at fault, e.g. ``"high"``.
        value: the offending value as text.
        rule: the rule it broke, one of the ``RULE_*`` constants.
    """

    file: str
    row: int
    field: str
    value: str
    rule: str

    def describe(self) -> str:
        """One line for the operator, e.g. ``"line 7: high='9' breaks 'high >= ...'"``."""
        return f"line {self.row}: {self.field}={self.value!r} breaks '{self.rule}'"


class RowChecker:
    """Checks rows one at a time and remembers every issue.

    Args:
        file: file name used in issues and in the error.
        unique_ts: bars: timestamps strictly ascending and never repeated. Trades
            (``False``): timestamps non-decreasing (many trades share a millisecond).
    """

    def __init__(self, file: str, *, unique_ts: bool) -> None:
        self.file = file
        self.issues: list[Issue] = []
        self._unique = unique_ts
        self._seen: set[int] = set()
        self.prev_ts: int | None = None
        """Timestamp of the last row checked (UTC ns); loaders with a fast path keep it."""

    def add(self, row: int, field: str, value: object, rule: str) -> None:
        """Record one issue."""
        self.issues.append(Issue(self.file, row, field, str(value), rule))

    def check_ts(self, row: int, field: str, ts_ns: int, text: object = None) -> None:
        """Order checks against the previous row (and, for bars, every earlier row).

        ``text`` is the time as the file wrote it, shown in an issue; ISO 8601 UTC of
        ``ts_ns`` when ``None`` (a typed Parquet timestamp has no text of its own).
        """
        shown = ns_to_iso(ts_ns) if text is None else text
        if self._unique and ts_ns in self._seen:
            self.add(row, field, shown, RULE_DUPLICATE)
        elif self.prev_ts is not None and ts_ns < self.prev_ts:
            self.add(row, field, shown, RULE_SORTED)
        if self._unique:
            self._seen.add(ts_ns)
        self.prev_ts = ts_ns

    def check_bar(
        self, row: int, o: Decimal, h: Decimal, low: Decimal, c: Decimal, v: Decimal
    ) -> bool:
        """Price and volume rules for one bar; returns True when the row is good."""
        before = len(self.issues)
        prices_ok = True
        for name, price in (("open", o), ("high", h), ("low", low), ("close", c)):
            if not (price.is_finite() and price > 0):
                self.add(row, name, price, RULE_PRICE)
                prices_ok = False
        if prices_ok:
            if h < max(o, c):
                self.add(row, "high", h, RULE_HIGH)
            if low > min(o, c):
                self.add(row, "low", low, RULE_LOW)
        if not (v.is_finite() and v >= 0):
            self.add(row, "volume", v, RULE_VOLUME)
        return len(self.issues) == before

    def check_trade(self, row: int, price: Decimal, size: Decimal) -> bool:
        """Price and size rules for one trade; returns True when the row is good."""
        ok = True
        if not (price.is_finite() and price > 0):
            self.add(row, "price", price, RULE_PRICE)
            ok = False
        if not (size.is_finite() and size >= 0):
            self.add(row, "size", size, RULE_VOLUME)
            ok = False
        return ok

    def raise_if_any(self) -> None:
        """Raise one error listing every issue recorded so far.

        Raises:
            ConfigError: at least one issue. ``source``/``field``/``value``/``rule`` and
                ``row`` describe the first; ``issues`` holds all of them as :class:`Issue`.
        """
        if not self.issues:
            return
        raise issues_error(self.file, self.issues)


def issues_error(file: str, issues: list[Issue]) -> ConfigError:
    """Build the :class:`~qtd.errors.ConfigError` for a non-empty list of issues."""
    lines = [f"{file}: {len(issues)} bad value(s) in market data"]
    lines += [f"  {issue.describe()}" for issue in issues[:MAX_LISTED]]
    if len(issues) > MAX_LISTED:
        lines.append(f"  ... and {len(issues) - MAX_LISTED} more (see .issues)")
    first = issues[0]
    return ConfigError(
        "\n".join(lines),
        source=file,
        field=first.field,
        value=first.value,
        rule=first.rule,
        row=first.row,
        issues=issues,
    )
