"""Names and records of the market data catalog: set keys, provenance, set summaries.

A set is one venue's bars of one symbol at one interval, named ``venue:SYMBOL:interval``
(``"binance:ETHUSDT:1h"``, ``"alpaca:MSFT:1d"``, ``"alpaca:BTC/USD:1m"``).
"""

from __future__ import annotations

import re

import msgspec

from qtd.errors import ConfigError
from qtd.feeds.bars import NS_PER_S

INTERVALS: dict[str, int] = {
    "1m": 60 * NS_PER_S,
    "5m": 300 * NS_PER_S,
    "15m": 900 * NS_PER_S,
    "1h": 3600 * NS_PER_S,
    "4h": 4 * 3600 * NS_PER_S,
    "1d": 86400 * NS_PER_S,
}
"""Intervals a catalog set may have, with their length in ns."""

RULE_KEY = "venue:SYMBOL:interval, e.g. binance:ETHUSDT:1h"
RULE_VENUE = "lower-case letters, digits and _, starting with a letter"
RULE_SYMBOL = "letters, digits and . / - _ (upper case)"
RULE_INTERVAL = "one of " + ", ".join(INTERVALS)

_VENUE_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_SYMBOL_RE = re.compile(r"^[A-Z0-9][A-Z0-9._/-]*$")


class SetKey(msgspec.Struct, frozen=True):
    """The name of one catalog set.

    Attributes:
        venue: venue name, e.g. ``"binance"`` (lower case).
        symbol: the venue's symbol, e.g. ``"ETHUSDT"``, ``"BTC/USD"`` (upper case).
        interval: bar interval, one of :data:`INTERVALS`.

    Raises:
        ConfigError: a field breaks its rule (``field``, ``value`` and ``rule`` say which).
    """

    venue: str
    symbol: str
    interval: str

    def __post_init__(self) -> None:
        _check("venue", self.venue, _VENUE_RE.match(self.venue) is not None, RULE_VENUE)
        _check("symbol", self.symbol, _SYMBOL_RE.match(self.symbol) is not None, RULE_SYMBOL)
        _check("interval", self.interval, self.interval in INTERVALS, RULE_INTERVAL)

    @classmethod
    def parse(cls, text: str) -> SetKey:
        """Parse ``"venue:SYMBOL:interval"``; the venue is lower-cased, the symbol upper-cased.

        Raises:
            ConfigError: not three ``:``-separated parts, or a part breaks its rule.
        """
        parts = text.strip().split(":")
        if len(parts) != 3:
            raise ConfigError(
                f"bad data set name {text!r}: expected {RULE_KEY}",
                source="<set>",
                field="set",
                value=text,
                rule=RULE_KEY,
            )
        venue, symbol, interval = parts
        return cls(venue.strip().lower(), symbol.strip().upper(), interval.strip())

    @property
    def name(self) -> str:
        """``"venue:SYMBOL:interval"``."""
        return f"{self.venue}:{self.symbol}:{self.interval}"

    @property
    def interval_ns(self) -> int:
        """Bar length in ns."""
        return INTERVALS[self.interval]


def _check(field: str, value: str, ok: bool, rule: str) -> None:
    if not ok:
        raise ConfigError(
            f"bad data set {field} {value!r}: must be {rule}",
            source="<set>",
            field=field,
            value=value,
            rule=rule,
        )


def is_set_name(text: str) -> bool:
    """True if ``text`` looks like a catalog set name (two ``:``), valid or not."""
    return text.count(":") == 2


class Provenance(msgspec.Struct, frozen=True, kw_only=True):
    """Where one write to a set came from (one line of ``provenance.jsonl``).

    Attributes:
        venue: venue the bars came from, e.g. ``"binance"``.
        endpoint: the URL or API call, e.g. ``"GET /api/v3/klines"``.
        fetched_at_ns: when they were fetched or imported, UTC ns.
        rows: number of bars in the write (before duplicates were dropped).
        first_ns: first bar open time, UTC ns.
        last_ns: last bar open time, UTC ns.
        source: ``"rest"``, ``"archive"`` or ``"import:<file>"``.
    """

    venue: str
    endpoint: str
    fetched_at_ns: int
    rows: int
    first_ns: int
    last_ns: int
    source: str = ""


class SetInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Summary of one catalog set.

    Attributes:
        key: the set's name.
        rows: number of bars.
        first_ns: first bar open time, UTC ns.
        last_ns: last bar open time, UTC ns.
        months: the month files, ``"YYYY-MM"``, ascending.
        provenance: every write, oldest first.
    """

    key: SetKey
    rows: int
    first_ns: int
    last_ns: int
    months: list[str]
    provenance: list[Provenance]
