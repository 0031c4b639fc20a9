"""The local market data catalog: one Parquet file per set and calendar month.

Layout under the root (``$QTD_CATALOG``, else ``$XDG_DATA_HOME/qtd/catalog``, else
``~/.local/share/qtd/catalog``)::

    <root>/<venue>/<SYMBOL>/<interval>/<YYYY-MM>.parquet   bars opening in that UTC month
    <root>/<venue>/<SYMBOL>/<interval>/provenance.jsonl    one Provenance per write

A symbol with ``/`` (``BTC/USD``) is stored percent-encoded (``BTC%2FUSD``). Writing a batch
rewrites only the months it touches, each through a temporary file and an atomic rename,
under an exclusive lock on the set's directory, so a reader never sees half a month and the
past is never rewritten when a month is appended. The file format is in
:mod:`qtd.catalog.parquet` (imported on first read or write, so listing and naming sets
costs no pyarrow import).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, unquote

import msgspec

from qtd.catalog.keys import INTERVALS, Provenance, SetInfo, SetKey
from qtd.errors import ConfigError
from qtd.feeds.bars import Bar, ns_to_datetime

PROVENANCE_FILE = "provenance.jsonl"
_SUFFIX = ".parquet"
_LOCK = ".lock"


def default_root() -> Path:
    """``$QTD_CATALOG``, else ``$XDG_DATA_HOME/qtd/catalog``, else
    ``~/.local/share/qtd/catalog``."""
    explicit = os.environ.get("QTD_CATALOG")
    if explicit:
        return Path(explicit)
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "qtd" / "catalog"


def month_of(ts_ns: int) -> str:
    """``"YYYY-MM"`` of UTC ns ``ts_ns``."""
    dt = ns_to_datetime(ts_ns)
    return f"{dt.year:04d}-{dt.month:02d}"


class Catalog:
    """Bars by set name, stored as monthly Parquet files.

    Args:
        root: catalog directory; :func:`default_root` when ``None``. Created on first write.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = default_root() if root is None else Path(root)

    def set_dir(self, key: SetKey) -> Path:
        """Directory holding ``key``'s month files and provenance."""
        return self.root / key.venue / quote(key.symbol, safe="") / key.interval

    def has(self, key: SetKey) -> bool:
        """True if the catalog holds at least one month of ``key``."""
        return bool(self._months(key))

    def write(self, key: SetKey, bars: Sequence[Bar], provenance: Provenance) -> int:
        """Merge validated ``bars`` into ``key``'s month files and record ``provenance``.

        Bars may come in any order. A bar whose open time the set already holds is dropped
        (the stored bar wins); within ``bars`` the first of equal open times wins. Only the
        months the bars fall in are rewritten.

        Returns:
            Number of bars added.

        Raises:
            ConfigError: a bar's symbol or interval differs from ``key``'s.
        """
        by_month: dict[str, list[Bar]] = {}
        for bar in bars:
            _check_bar(key, bar)
            by_month.setdefault(month_of(bar.ts_ns), []).append(bar)
        from qtd.catalog import parquet

        directory = self.set_dir(key)
        directory.mkdir(parents=True, exist_ok=True)
        added = 0
        with _locked(directory):
            for month, month_bars in sorted(by_month.items()):
                added += parquet.merge_month(directory / (month + _SUFFIX), month_bars)
            with open(directory / PROVENANCE_FILE, "ab") as out:
                out.write(msgspec.json.encode(provenance) + b"\n")
                out.flush()
                os.fsync(out.fileno())
        return added

    def read(
        self, key: SetKey, start_ns: int | None = None, end_ns: int | None = None
    ) -> list[Bar]:
        """Bars of ``key`` with ``start_ns <= ts_ns < end_ns`` (either bound may be ``None``),
        ascending by open time; ``[]`` for an unknown set."""
        months = self._months(key)
        if start_ns is not None:
            months = [m for m in months if m >= month_of(start_ns)]
        if end_ns is not None:
            months = [m for m in months if m <= month_of(end_ns)]
        if not months:
            return []
        from qtd.catalog import parquet

        paths = [self.set_dir(key) / (m + _SUFFIX) for m in months]
        return parquet.read_months(paths, key.symbol, key.interval_ns, start_ns, end_ns)

    def span(self, key: SetKey) -> tuple[int, int] | None:
        """First and last bar open time of ``key``, UTC ns; ``None`` for an unknown set."""
        months = self._months(key)
        if not months:
            return None
        from qtd.catalog import parquet

        directory = self.set_dir(key)
        return parquet.first_last(
            directory / (months[0] + _SUFFIX), directory / (months[-1] + _SUFFIX)
        )

    def rows(self, key: SetKey) -> int:
        """Number of bars of ``key`` (from the files' metadata)."""
        from qtd.catalog import parquet

        directory = self.set_dir(key)
        return sum(parquet.num_rows(directory / (m + _SUFFIX)) for m in self._months(key))

    def provenance(self, key: SetKey) -> list[Provenance]:
        """Every write to ``key``, oldest first."""
        path = self.set_dir(key) / PROVENANCE_FILE
        if not path.exists():
            return []
        decoder = msgspec.json.Decoder(Provenance)
        return [decoder.decode(line) for line in path.read_bytes().splitlines() if line]

    def set_keys(self) -> list[SetKey]:
        """Every set in the catalog, sorted by name."""
        found: list[SetKey] = []
        for path in sorted(self.root.glob(f"*/*/*/*{_SUFFIX}")):
            interval_dir = path.parent
            if interval_dir.name not in INTERVALS:
                continue
            symbol = unquote(interval_dir.parent.name)
            venue = interval_dir.parent.parent.name
            try:
                key = SetKey(venue, symbol, interval_dir.name)
            except ConfigError:
                continue
            if key not in found:
                found.append(key)
        return sorted(found, key=lambda k: k.name)

    def sets(self) -> list[SetInfo]:
        """A summary of every set, sorted by name."""
        infos: list[SetInfo] = []
        for key in self.set_keys():
            span = self.span(key)
            if span is None:
                continue
            infos.append(
                SetInfo(
                    key=key,
                    rows=self.rows(key),
                    first_ns=span[0],
                    last_ns=span[1],
                    months=self._months(key),
                    provenance=self.provenance(key),
                )
            )
        return infos

    def _months(self, key: SetKey) -> list[str]:
        directory = self.set_dir(key)
        if not directory.is_dir():
            return []
        return sorted(p.name[: -len(_SUFFIX)] for p in directory.glob(f"????-??{_SUFFIX}"))


def _check_bar(key: SetKey, bar: Bar) -> None:
    if bar.symbol != key.symbol:
        raise ConfigError(
            f"{key.name}: bar at {bar.ts_ns} has symbol {bar.symbol!r}, not {key.symbol!r}",
            source=key.name,
            field="symbol",
            value=bar.symbol,
            rule=f"symbol == {key.symbol}",
        )
    if bar.interval_ns != key.interval_ns:
        raise ConfigError(
            f"{key.name}: bar at {bar.ts_ns} is {bar.interval_ns} ns long, not {key.interval}",
            source=key.name,
            field="interval",
            value=bar.interval_ns,
            rule=f"interval_ns == {key.interval_ns}",
        )


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / _LOCK, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
