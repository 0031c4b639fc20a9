"""Bars to and from Arrow tables: the catalog's file format, kept apart from file handling.

One Parquet file holds one set's bars of one calendar month: ``ts`` (bar open time,
``timestamp[ns, UTC]``) and ``open, high, low, close, volume`` as **decimal strings**,
exactly as the venue (or the imported file) wrote them, dictionary-encoded.

Why strings and not Parquet ``decimal128``: a decimal column has one scale for the whole
column, so ``"0.10"`` would come back as ``"0.1"`` or ``"0.10000000"`` and a venue's
per-symbol tick size would have to be known before writing; strings keep each price as
written. Reading stays fast because prices repeat (a bar's open is usually the last
close): each file's dictionary of distinct strings is turned into :class:`~decimal.Decimal`
once, and bars index into it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from decimal import Decimal
from itertools import repeat

import pyarrow as pa

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
    """Bars of ``table`` (:data:`SCHEMA`, price columns plain or dictionary strings).

    Every distinct price text becomes one shared :class:`~decimal.Decimal`.
    """
    cache: dict[str, Decimal] = {}
    columns = [list(_decimals(table.column(name), cache)) for name in PRICE_COLUMNS]
    return list(map(Bar, repeat(symbol), table_ts(table), repeat(interval_ns), *columns))


def _decimals(column: pa.ChunkedArray, cache: dict[str, Decimal]) -> Iterator[Decimal]:
    for chunk in column.chunks:
        if pa.types.is_dictionary(chunk.type):
            words = chunk.dictionary.to_pylist()
            values = [_decimal(cache, word) for word in words]
            yield from map(values.__getitem__, chunk.indices.to_pylist())
        else:
            yield from (_decimal(cache, word) for word in chunk.to_pylist())


def _decimal(cache: dict[str, Decimal], text: str) -> Decimal:
    value = cache.get(text)
    if value is None:
        value = cache[text] = Decimal(text)
    return value
