"""The catalog's month files: bars to and from Parquet (imported on first use: pyarrow
and numpy take about 0.2 s to import).

One Parquet file holds one set's bars of one calendar month: ``ts`` (bar open time,
``timestamp[ns, UTC]``) and ``open, high, low, close, volume`` as **decimal strings**,
exactly as the venue (or the imported file) wrote them, dictionary-encoded.

Why strings and not Parquet ``decimal128``: a decimal column has one scale for the whole
column, so ``"0.10"`` would come back as ``"0.1"`` or ``"0.10000000"`` and a venue's
per-symbol tick size would have to be known before writing; strings keep each price as
written. Reading stays fast because prices repeat (a bar's open is usually the last
close, and prices revisit levels): the distinct strings of a read become one
:class:`~decimal.Decimal` each, and bars index into them (benchmarks/data.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from decimal import Decimal
from itertools import repeat
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qtd.feeds.bars import Bar

PRICE_COLUMNS = ("open", "high", "low", "close", "volume")
TS_TYPE = pa.timestamp("ns", tz="UTC")
SCHEMA = pa.schema(
    [pa.field("ts", TS_TYPE, nullable=False)]
    + [pa.field(name, pa.string(), nullable=False) for name in PRICE_COLUMNS]
)


def bars_to_table(bars: Sequence[Bar]) -> pa.Table:
    """Arrow table (:data:`SCHEMA`) of ``bars``, in the given order."""
    return pa.table(
        {
            "ts": pa.array([bar.ts_ns for bar in bars], type=pa.int64()).cast(TS_TYPE),
            "open": pa.array([str(bar.open) for bar in bars], type=pa.string()),
            "high": pa.array([str(bar.high) for bar in bars], type=pa.string()),
            "low": pa.array([str(bar.low) for bar in bars], type=pa.string()),
            "close": pa.array([str(bar.close) for bar in bars], type=pa.string()),
            "volume": pa.array([str(bar.volume) for bar in bars], type=pa.string()),
        },
        schema=SCHEMA,
    )


def table_ts(table: pa.Table) -> list[int]:
    """The ``ts`` column as UTC ns integers."""
    return table.column("ts").cast(pa.int64()).to_pylist()  # type: ignore[no-any-return]


def table_to_bars(table: pa.Table, symbol: str, interval_ns: int) -> list[Bar]:
    """Bars of ``table`` (:data:`SCHEMA`; price columns plain or dictionary strings).

    Each distinct price text becomes one :class:`~decimal.Decimal`, shared by every bar
    that has it: the four price columns share one dictionary, volume has its own.
    """
    rows = table.num_rows
    if rows == 0:
        return []
    prices = _decimals([table.column(name) for name in PRICE_COLUMNS[:4]])
    o, h, lo, c = (prices[k * rows : (k + 1) * rows].tolist() for k in range(4))
    volume = _decimals([table.column("volume")]).tolist()
    stamps = table_ts(table)
    return list(map(Bar, repeat(symbol), stamps, repeat(interval_ns), o, h, lo, c, volume))


def _decimals(columns: list[pa.ChunkedArray]) -> npt.NDArray[np.object_]:
    """The columns' values end to end, as an object array of shared Decimals."""
    chunks = [
        chunk if pa.types.is_dictionary(chunk.type) else chunk.dictionary_encode()
        for column in columns
        for chunk in column.chunks
    ]
    unified = pa.chunked_array(chunks).unify_dictionaries()
    words = unified.chunk(0).dictionary.to_pylist()
    values = np.empty(len(words), dtype=object)
    values[:] = list(map(Decimal, words))
    indices = np.concatenate([chunk.indices.to_numpy() for chunk in unified.chunks])
    return values[indices]  # type: ignore[no-any-return]


def read_months(
    paths: Sequence[Path], symbol: str, interval_ns: int, start_ns: int | None, end_ns: int | None
) -> list[Bar]:
    """Bars of the month files ``paths`` (in order) with ``start_ns <= ts_ns < end_ns``."""
    tables = [pq.read_table(p, read_dictionary=list(PRICE_COLUMNS)) for p in paths]
    table = pa.concat_tables(tables)
    ts = table.column("ts").cast(pa.int64())
    mask = None
    if start_ns is not None:
        mask = pc.greater_equal(ts, start_ns)
    if end_ns is not None:
        below = pc.less(ts, end_ns)
        mask = below if mask is None else pc.and_(mask, below)
    return table_to_bars(table if mask is None else table.filter(mask), symbol, interval_ns)


def first_last(first: Path, last: Path) -> tuple[int, int]:
    """Open time of the first bar of file ``first`` and the last bar of file ``last``."""
    head = table_ts(pq.read_table(first, columns=["ts"]))
    tail = table_ts(pq.read_table(last, columns=["ts"]))
    return head[0], tail[-1]


def num_rows(path: Path) -> int:
    """Bars in a month file (from its metadata)."""
    return int(pq.read_metadata(path).num_rows)


def merge_month(path: Path, bars: Sequence[Bar]) -> int:
    """Add the bars whose open time ``path`` lacks (the first of equal times wins), rewrite
    it through a temporary file and an atomic rename; returns bars added."""
    existing = pq.read_table(path).cast(SCHEMA) if path.exists() else SCHEMA.empty_table()
    seen = set(table_ts(existing))
    fresh: list[Bar] = []
    for bar in bars:
        if bar.ts_ns not in seen:
            seen.add(bar.ts_ns)
            fresh.append(bar)
    if not fresh:
        return 0
    merged = pa.concat_tables([existing, bars_to_table(fresh)]).sort_by("ts")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(merged, tmp, compression="zstd")
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return len(fresh)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
