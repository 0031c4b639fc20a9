"""Reading CSV rows and turning cells into timestamps and decimals (shared by the loaders).

A file is read whole (gzip detected from its first bytes) and split with :mod:`csv`; rows
carry their 1-based line number so that every issue can name it.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterable, Iterator, Sequence
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NamedTuple

from qtd.errors import ConfigError
from qtd.feeds.bars import (
    NS_PER_MS,
    NS_PER_S,
    NS_PER_US,
    datetime_to_ns,
    epoch_to_ns,
    parse_ts,
)
from qtd.feeds.validate import RULE_NUMBER, RULE_TIME, RowChecker

TIME_COLUMNS = ("time", "timestamp", "date", "datetime", "open_time", "ts")
"""Names (case-insensitive) tried for the time column, in order; ``ts_s``, ``ts_ms``,
``ts_us``, ``ts_ns`` (and ``time_ms`` etc.) also work and fix the epoch unit."""
_UNIT_SUFFIXES = {"_s": NS_PER_S, "_ms": NS_PER_MS, "_us": NS_PER_US, "_ns": 1}
_INDEX_HEADERS = ("", "unnamed: 0", "index")
_GZIP_MAGIC = b"\x1f\x8b"

Row = tuple[int, Sequence[Any]]
"""(1-based line or row number, cells)."""


class Columns(NamedTuple):
    """Where a loader's columns are (0-based indexes) and the time column's epoch unit."""

    time: int
    time_name: str
    time_unit: int | None
    values: tuple[int, ...]
    optional: int | None
    symbol: int | None


def cell_ts(checker: RowChecker, row: int, name: str, cell: Any, unit: int | None) -> int | None:
    """A time cell (text, epoch int in ``unit`` ns or by magnitude, datetime, date) as UTC
    ns, or ``None`` after recording an issue."""
    try:
        if isinstance(cell, datetime):
            return datetime_to_ns(cell)
        if isinstance(cell, date):
            return datetime_to_ns(datetime(cell.year, cell.month, cell.day))
        if isinstance(cell, int):
            return cell * unit if unit else epoch_to_ns(cell)
        if unit and cell.isdigit():
            return int(cell) * unit
        return parse_ts(cell)
    except (ValueError, TypeError, AttributeError, InvalidOperation):
        checker.add(row, name, cell, RULE_TIME)
        return None


def cell_decimals(
    checker: RowChecker,
    row: int,
    cells: Sequence[Any],
    indexes: Sequence[int],
    names: Sequence[str],
) -> tuple[Decimal, ...] | None:
    """The cells at ``indexes`` as Decimals, or ``None`` after recording an issue per bad
    cell."""
    out: list[Decimal] = []
    for index, name in zip(indexes, names, strict=True):
        cell = cells[index]
        try:
            if isinstance(cell, Decimal):
                out.append(cell)
            elif isinstance(cell, float):
                out.append(Decimal(repr(cell)))
            else:
                out.append(Decimal(cell))
        except (InvalidOperation, ValueError, TypeError):
            checker.add(row, name, cell, RULE_NUMBER)
    return tuple(out) if len(out) == len(indexes) else None


def find_columns(
    file: str, header: Sequence[str], required: Sequence[str], *, optional: str | None
) -> Columns:
    """Locate the time column and the ``required`` columns (case-insensitive).

    Raises:
        ConfigError: a required column (or any time column) is missing.
    """
    names = lower(header)
    time_index, unit = _time_column(names)
    missing = [name for name in required if name not in names]
    if time_index is None:
        missing.insert(0, "time")
    if missing:
        raise ConfigError(
            f"{file}: missing column(s) {', '.join(missing)} in header {list(header)}",
            source=file,
            field=missing[0],
            value=list(header),
            rule="required column; time is one of " + ", ".join(TIME_COLUMNS),
        )
    assert time_index is not None
    return Columns(
        time=time_index,
        time_name=header[time_index].strip() or "time",
        time_unit=unit,
        values=tuple(names.index(name) for name in required),
        optional=names.index(optional) if optional in names else None,
        symbol=names.index("symbol") if "symbol" in names else None,
    )


def _time_column(names: list[str]) -> tuple[int | None, int | None]:
    for name in TIME_COLUMNS:
        if name in names:
            return names.index(name), None
        for suffix, unit in _UNIT_SUFFIXES.items():
            if name + suffix in names:
                return names.index(name + suffix), unit
    if names and names[0] in _INDEX_HEADERS:
        return 0, None
    return None, None


def select_symbol(rows: Iterable[Row], columns: Columns, symbol: str) -> Iterator[Row]:
    """Only the rows for ``symbol`` when the file has a ``symbol`` column."""
    index = columns.symbol
    for row, cells in rows:
        if index is None or index >= len(cells) or cells[index] == symbol:
            yield row, cells


# --- file reading ----------------------------------------------------------------------------


def csv_rows(path: str | Path) -> tuple[list[str], Iterator[Row]]:
    """The header (stripped) and an iterator over the remaining non-empty rows.

    Raises:
        ConfigError: unreadable, corrupt or empty file.
    """
    rows = raw_rows(path)
    for _, header in rows:
        return [cell.strip() for cell in header], rows
    raise ConfigError(f"{path}: empty file", source=str(path), rule="a header row")


def raw_rows(path: str | Path) -> Iterator[tuple[int, list[str]]]:
    """Every non-empty row with its 1-based line number (see :func:`read_text`)."""
    text = read_text(path)
    reader = csv.reader(io.StringIO(text))
    for cells in reader:
        if cells:
            yield reader.line_num, cells


def first_row(path: str | Path) -> list[str]:
    """The first row of a (possibly gzipped) CSV file, reading only its first line.

    Raises:
        ConfigError: unreadable or corrupt file.
    """
    try:
        with Path(path).open("rb") as raw:
            gzipped = raw.read(2) == _GZIP_MAGIC
        opener = gzip.open if gzipped else open
        with opener(path, "rt", encoding="utf-8-sig", newline="") as text:
            line = text.readline()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path}: cannot read market data file: {exc}", source=str(path), rule="readable file"
        ) from exc
    return next(csv.reader([line]), [])


def read_text(path: str | Path) -> str:
    """The whole file as text, gunzipped if it starts with the gzip magic bytes.

    Raises:
        ConfigError: unreadable file, corrupt gzip, or not UTF-8.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read market data file: {exc.strerror or exc}",
            source=str(path),
            rule="readable file",
        ) from exc
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise ConfigError(
                f"{path}: corrupt gzip file: {exc}", source=str(path), rule="valid gzip"
            ) from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text: {exc}", source=str(path), rule="UTF-8 CSV"
        ) from exc


def lower(cells: Sequence[str]) -> list[str]:
    """Cells stripped and lower-cased (for header matching)."""
    return [cell.strip().lower() for cell in cells]
