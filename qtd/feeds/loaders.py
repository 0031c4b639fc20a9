"""Load bars and trades from CSV (plain or gzip), Binance kline CSV, Alpaca bar CSV, Parquet.

Every loader checks every row (see :mod:`qtd.feeds.validate`) and raises one
:class:`~qtd.errors.ConfigError` listing all bad rows, so an operator fixes a file in one go.
Naive timestamps are taken as UTC. Gzip is detected from the file's first bytes, not its name.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from qtd.errors import ConfigError
from qtd.feeds.bars import (
    NS_PER_MS,
    NS_PER_S,
    NS_PER_US,
    Bar,
    Interval,
    Trade,
    epoch_unit_ns,
    ns_to_datetime,
    parse_interval,
)
from qtd.feeds.rows import (
    Columns,
    Row,
    cell_decimals,
    cell_ts,
    csv_rows,
    find_columns,
    first_row,
    lower,
    raw_rows,
    select_symbol,
)
from qtd.feeds.validate import RULE_COLUMNS, RowChecker

Layout = Literal["auto", "ohlcv", "binance", "alpaca", "parquet"]

SIZE_COLUMNS = ("size", "qty", "quantity", "volume", "amount")
_ALPACA_COLUMNS = ("timestamp", "open", "high", "low", "close", "volume", "trade_count", "vwap")
_BINANCE_WIDTH = 12
_BINANCE_NAMES = ("open", "high", "low", "close", "volume")
_OHLC = ("open", "high", "low", "close")

# --- public loaders --------------------------------------------------------------------------


def load_bars(
    path: str | Path, symbol: str, *, interval: str | None = None, layout: Layout = "auto"
) -> list[Bar]:
    """Load OHLCV bars from ``path``, choosing the layout from the file when ``"auto"``.

    Auto-detection: ``.parquet`` → Parquet; a header with ``open_time`` and ``close_time``, or
    a headerless 12-column numeric row → Binance klines; anything else → plain OHLCV CSV
    (which also reads Alpaca bar CSVs).

    Args:
        path: CSV, CSV.gz or Parquet file.
        symbol: symbol to stamp on the bars (and to select rows if the file has a
            ``symbol`` column).
        interval: bar length such as ``"1m"``, ``"1h"``, ``"1d"``, ``"1mo"``; inferred from
            the timestamps when ``None`` (Binance files carry it in ``close_time``).
        layout: force a layout instead of detecting it.

    Returns:
        Bars in file order, ``ts_ns`` = bar open time (UTC ns).

    Raises:
        ConfigError: missing file or columns, or bad rows (all listed, ``.issues``).
    """
    path = Path(path)
    if layout == "auto":
        layout = _detect_layout(path)
    if layout == "parquet":
        return load_bars_parquet(path, symbol, interval=interval)
    if layout == "binance":
        return load_binance_klines(path, symbol)
    if layout == "alpaca":
        return load_alpaca_bars(path, symbol, interval=interval)
    return load_bars_csv(path, symbol, interval=interval)


def load_bars_csv(path: str | Path, symbol: str, *, interval: str | None = None) -> list[Bar]:
    """Load a CSV with a header naming a time column and open/high/low/close[/volume].

    Column names are matched case-insensitively; the time column is the first of
    :data:`TIME_COLUMNS` present (a pandas index column with an empty name also works).
    Times are ISO 8601 or epoch numbers (s/ms/µs/ns by magnitude, or by a ``_ms``-style
    suffix on the column name). A missing volume column gives volume 0.

    Raises:
        ConfigError: see :func:`load_bars`.
    """
    file = str(path)
    header, rows = csv_rows(path)
    columns = find_columns(file, header, _OHLC, optional="volume")
    return _build_bars(file, symbol, select_symbol(rows, columns, symbol), columns, interval)


def load_alpaca_bars(path: str | Path, symbol: str, *, interval: str | None = None) -> list[Bar]:
    """Load Alpaca bars saved as CSV (``timestamp, open, high, low, close, volume,
    trade_count, vwap``; ISO times ending in ``Z``; an optional ``symbol`` column selects
    rows). ``trade_count`` and ``vwap`` are checked for presence and otherwise ignored.

    Raises:
        ConfigError: not an Alpaca bars file, or see :func:`load_bars`.
    """
    file = str(path)
    header, rows = csv_rows(path)
    missing = [name for name in _ALPACA_COLUMNS if name not in lower(header)]
    if missing:
        raise ConfigError(
            f"{file}: not an Alpaca bars file: missing column(s) {', '.join(missing)}",
            source=file,
            field=missing[0],
            rule="Alpaca bar columns " + ", ".join(_ALPACA_COLUMNS),
        )
    columns = find_columns(file, header, _OHLC, optional="volume")
    return _build_bars(file, symbol, select_symbol(rows, columns, symbol), columns, interval)


def load_binance_klines(path: str | Path, symbol: str) -> list[Bar]:
    """Load a Binance kline CSV (data.binance.vision): 12 columns, no header or the newer
    ``open_time,...`` header. Open and close times are epoch ms, or µs in files from 2025
    on (told apart by magnitude); the bar length is ``close_time - open_time + 1 unit``.

    Raises:
        ConfigError: see :func:`load_bars`.
    """
    file = str(path)
    checker = RowChecker(file, unique_ts=True)
    bars: list[Bar] = []
    for row, cells in raw_rows(path):
        if cells[0].strip().lower() == "open_time":
            continue
        if len(cells) != _BINANCE_WIDTH:
            checker.add(row, "*", f"{len(cells)} columns", f"{_BINANCE_WIDTH} columns")
            continue
        try:
            open_raw, close_raw = int(cells[0]), int(cells[6])
        except ValueError:
            checker.add(row, "open_time", cells[0], "epoch integer open_time, close_time")
            continue
        unit = epoch_unit_ns(open_raw)
        ts, length = open_raw * unit, (close_raw + 1) * unit - open_raw * unit
        values = cell_decimals(checker, row, cells, (1, 2, 3, 4, 5), _BINANCE_NAMES)
        checker.check_ts(row, "open_time", ts, cells[0])
        if length <= 0:
            checker.add(row, "close_time", close_raw, "close_time > open_time")
        if values is None:
            continue
        o, h, lo, c, v = values
        if checker.check_bar(row, o, h, lo, c, v) and length > 0:
            bars.append(Bar(symbol, ts, length, o, h, lo, c, v))
    checker.raise_if_any()
    return bars


def load_bars_parquet(path: str | Path, symbol: str, *, interval: str | None = None) -> list[Bar]:
    """Load bars from Parquet (same column rules as :func:`load_bars_csv`).

    Timestamp columns may be Arrow timestamps (any unit; tz-aware or naive = UTC), dates,
    epoch integers or ISO strings. Float prices are read through their shortest ``repr``.
    Row numbers in issues are 1-based row indexes.

    Raises:
        ConfigError: not a readable Parquet file, or see :func:`load_bars`.
    """
    file = str(path)
    import pyarrow as pa  # imported on first use: about 0.1 s
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file)
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(
            f"{file}: cannot read Parquet file: {exc}", source=file, rule="readable Parquet"
        ) from exc
    columns = find_columns(file, table.column_names, _OHLC, optional="volume")
    data: list[list[Any]] = []
    time_unit = columns.time_unit
    for index, column in enumerate(table.columns):
        if index == columns.time and pa.types.is_timestamp(column.type):
            time_unit = {"s": NS_PER_S, "ms": NS_PER_MS, "us": NS_PER_US}.get(column.type.unit, 1)
            column = column.cast(pa.int64())
        data.append(column.to_pylist())
    columns = columns._replace(time_unit=time_unit)
    rows = ((i + 1, cells) for i, cells in enumerate(zip(*data, strict=True)))
    return _build_bars(file, symbol, select_symbol(rows, columns, symbol), columns, interval)


def load_trades_csv(path: str | Path, symbol: str) -> list[Trade]:
    """Load trades (ticks) from a CSV with a header: a time column (see
    :data:`TIME_COLUMNS`; ``ts_ms`` etc. fix the unit), ``price``, and a size column
    (``size``, ``qty``, ``quantity``, ``volume`` or ``amount``).

    Trades may share a timestamp but must not go back in time.

    Returns:
        Trades in file order, ``ts_ns`` UTC ns, price and size as Decimal.

    Raises:
        ConfigError: missing file or columns, or bad rows (all listed, ``.issues``).
    """
    file = str(path)
    header, rows = csv_rows(path)
    size_name = next((n for n in SIZE_COLUMNS if n in lower(header)), SIZE_COLUMNS[0])
    columns = find_columns(file, header, ("price", size_name), optional=None)
    ti, (pi, si) = columns.time, columns.values
    unit = columns.time_unit
    checker = RowChecker(file, unique_ts=False)
    trades: list[Trade] = []
    prev = -(2**63)
    for row, cells in rows:
        try:  # fast path for a good row with an integer epoch in a known unit
            ts = int(cells[ti]) * unit  # type: ignore[operator]
            price, size = Decimal(cells[pi]), Decimal(cells[si])
            if ts >= prev and price.is_finite() and price > 0 and size.is_finite() and size >= 0:
                prev = ts
                trades.append(Trade(symbol, ts, price, size))
                continue
        except (IndexError, ValueError, TypeError, InvalidOperation):
            pass
        checker.prev_ts = prev
        _check_trade_row(checker, row, cells, columns, symbol, trades)
        prev = prev if checker.prev_ts is None else checker.prev_ts
    checker.raise_if_any()
    return trades


def _check_trade_row(
    checker: RowChecker,
    row: int,
    cells: Sequence[str],
    columns: Columns,
    symbol: str,
    out: list[Trade],
) -> None:
    ti, (pi, si) = columns.time, columns.values
    if len(cells) <= max(ti, pi, si):
        checker.add(row, "*", f"{len(cells)} columns", RULE_COLUMNS)
        return
    ts = cell_ts(checker, row, columns.time_name, cells[ti], columns.time_unit)
    values = cell_decimals(checker, row, cells, (pi, si), ("price", "size"))
    if ts is None or values is None:
        return
    checker.check_ts(row, columns.time_name, ts, _time_text(cells[ti]))
    price, size = values
    if checker.check_trade(row, price, size):
        out.append(Trade(symbol, ts, price, size))


# --- shared row handling ---------------------------------------------------------------------


def _build_bars(
    file: str, symbol: str, rows: Iterable[Row], columns: Columns, interval: str | None
) -> list[Bar]:
    spec = None if interval is None else _parse_interval(file, interval)
    checker = RowChecker(file, unique_ts=True)
    good: list[tuple[int, Decimal, Decimal, Decimal, Decimal, Decimal]] = []
    width = max(columns.time, *columns.values, columns.optional or 0) + 1
    time_name = columns.time_name
    for row, cells in rows:
        if len(cells) < width:
            checker.add(row, "*", f"{len(cells)} columns", RULE_COLUMNS)
            continue
        ts = cell_ts(checker, row, time_name, cells[columns.time], columns.time_unit)
        values = cell_decimals(checker, row, cells, columns.values, _OHLC)
        volume = Decimal(0)
        if columns.optional is not None:
            parsed = cell_decimals(checker, row, cells, (columns.optional,), ("volume",))
            volume = parsed[0] if parsed else volume
        if ts is None or values is None:
            continue
        checker.check_ts(row, time_name, ts, _time_text(cells[columns.time]))
        o, h, lo, c = values
        if checker.check_bar(row, o, h, lo, c, volume):
            good.append((ts, o, h, lo, c, volume))
    checker.raise_if_any()
    if spec is None:
        spec = infer_interval(file, [item[0] for item in good])
    return [Bar(symbol, ts, spec.length_at(ts), o, h, lo, c, v) for ts, o, h, lo, c, v in good]


def _time_text(cell: object) -> str | None:
    """A time cell as the file wrote it; ``None`` (shown as ISO) for typed Parquet cells."""
    return cell if isinstance(cell, str) else None


def _parse_interval(file: str, text: str) -> Interval:
    try:
        return parse_interval(text)
    except ValueError as exc:
        raise ConfigError(
            str(exc), source=file, field="interval", value=text, rule="e.g. 1m, 1h, 1d, 1mo"
        ) from exc


def infer_interval(file: str, stamps: Sequence[int]) -> Interval:
    """Guess the bar interval from sorted open times (UTC ns): calendar months when every
    bar opens at 00:00 on the 1st and bars are 28-31 days apart, else the smallest gap.

    Raises:
        ConfigError: fewer than two bars (pass the interval explicitly).
    """
    gaps = [b - a for a, b in itertools.pairwise(stamps) if b > a]
    if not gaps:
        raise ConfigError(
            f"{file}: cannot infer the bar interval from {len(stamps)} bar(s); pass interval=",
            source=file,
            field="interval",
            rule="at least 2 bars to infer the interval",
        )
    smallest = min(gaps)
    day = 86400 * NS_PER_S
    if smallest >= 28 * day and all(_is_month_start(ts) for ts in stamps):
        return Interval(months=max(1, round(smallest / (30.44 * day))))
    return Interval(fixed_ns=smallest)


def _is_month_start(ts_ns: int) -> bool:
    return ts_ns % (86400 * NS_PER_S) == 0 and ns_to_datetime(ts_ns).day == 1


# --- file reading ----------------------------------------------------------------------------


def _detect_layout(path: Path) -> Layout:
    if path.suffix.lower() == ".parquet":
        return "parquet"
    cells = first_row(path)
    names = lower(cells)
    if "open_time" in names and "close_time" in names:
        return "binance"
    if len(cells) == _BINANCE_WIDTH and cells[0].strip().isdigit():
        return "binance"
    return "ohlcv"
