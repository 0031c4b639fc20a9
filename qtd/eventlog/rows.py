"""The ``events`` table row of an event, and committing a batch of sealed rows on a plain
``sqlite3`` connection (the store's background writer, :mod:`qtd.eventlog.writer`); the
store's own appends (:class:`~qtd.store.EventStore`) use the same rows and statement."""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Sequence
from typing import Final

import msgspec

from qtd.events import Event, encode

INSERT: Final = (
    "INSERT INTO events (seq, ts, kind, node, bot, symbol, client_order_id, payload, crc, "
    "chain) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
COLUMNS: Final = 10
ROWS_PER_INSERT: Final = 1024  # x 10 parameters, under SQLite's 32,766 (since 3.32)

# --- lookups by bot, symbol and client_order_id: the event_keys table ----------------------
# Those columns are not indexed on ``events``: a commit of events from N bots would write
# into N places of each such index (N leaf pages each, once the index is large: ~2.5 ms a
# commit for 100 bots, against ~1 ms without). ``event_keys`` holds (field, key, seq) for
# every event up to the watermark ``meta.keys_seq``; the rows above it (the newest few) are
# read from ``events`` directly. It is brought up to date after the commits, off the order
# path (EventStore.index_keys) or by the bulk writer in its own transaction.

KEY_FIELDS: Final = ("bot", "symbol", "client_order_id")
"""The ``events`` columns looked up through ``event_keys``; a field's code there is its
index in this tuple."""

KEYS_SEQ: Final = "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'keys_seq'"
"""The watermark: every event up to it has its keys in ``event_keys``."""

INDEX_KEYS: Final = "INSERT OR IGNORE INTO event_keys (field, key, seq) " + " UNION ALL ".join(
    f"SELECT {code}, {column}, seq FROM events WHERE seq > ({KEYS_SEQ}) AND seq <= ?1 "
    f"AND {column} IS NOT NULL" for code, column in enumerate(KEY_FIELDS))
"""Add the keys of the events after the watermark up to seq ``?1`` (run it with
:data:`SET_KEYS_SEQ` in one transaction: :data:`ADD_KEYS`)."""

SET_KEYS_SEQ: Final = "UPDATE meta SET value = CAST(?1 AS TEXT) WHERE key = 'keys_seq'"
"""Move the watermark to seq ``?1``."""

ADD_KEYS: Final = (INDEX_KEYS, SET_KEYS_SEQ)
"""Bring ``event_keys`` up to seq ``?1``: each statement run with ``(seq,)``, in order, in
one transaction."""

LOWER_KEYS_SEQ: Final = ("UPDATE meta SET value = CAST(min(CAST(value AS INTEGER), ?1) AS TEXT) "
                         "WHERE key = 'keys_seq'")
"""Move the watermark down to seq ``?1`` if it is above (the events after ``?1`` were
removed, with their keys)."""

Row = tuple[int, int, str, str, str, str | None, str | None, bytes]
"""(seq, ts = ts_event in UTC ns, kind, node, bot, symbol, client_order_id, payload)."""


def event_row(event: Event) -> Row:
    """The table row for an event that already carries its ``seq``."""
    kind = type(event)
    shape = _ROW_SHAPES.get(kind)
    if shape is None:  # once per event class: which of the query columns it has
        shape = _ROW_SHAPES[kind] = (kind.__name__, hasattr(kind, "symbol"),
                                     hasattr(kind, "client_order_id"))
    name, has_symbol, has_cid = shape
    return (
        event.seq,
        event.ts_event,
        name,
        event.node,
        event.bot,
        (event.symbol or None) if has_symbol else None,  # type: ignore[attr-defined]
        (event.client_order_id or None) if has_cid else None,  # type: ignore[attr-defined]
        encode(event),
    )


# event class -> (kind column, has a symbol field, has a client_order_id field)
_ROW_SHAPES: dict[type[Event], tuple[str, bool, bool]] = {}


class RowHead(msgspec.Struct, frozen=True, gc=False):
    """The query columns of a row, read from an event's encoded payload (unknown fields
    ignored) without decoding the event itself."""

    kind: str
    seq: int
    ts_event: int
    node: str
    bot: str = ""
    symbol: str | None = None
    client_order_id: str | None = None


class _Heads(msgspec.Struct, frozen=True):
    events: list[RowHead]


class _Payloads(msgspec.Struct, frozen=True):
    events: list[msgspec.Raw]


def payload_rows(message: bytes) -> list[Row]:
    """The rows of the events of a msgpack message whose ``events`` field is a list of
    events (:class:`~qtd.eventlog.writer.WriteBatch`): what :func:`event_row` gives for each
    (the payload is the event's bytes as they are in the message, which are what
    :func:`~qtd.events.encode` gives), at a fraction of decoding the events.

    Raises:
        msgspec.DecodeError, msgspec.ValidationError: not such a message.
    """
    heads = msgspec.msgpack.decode(message, type=_Heads).events
    payloads = msgspec.msgpack.decode(message, type=_Payloads).events
    return [(h.seq, h.ts_event, h.kind, h.node, h.bot, h.symbol or None,
             h.client_order_id or None, bytes(p)) for h, p in zip(heads, payloads, strict=True)]


def commit_rows(con: sqlite3.Connection, rows: Sequence[tuple[object, ...]], *,
                sync: bool) -> None:
    """Insert sealed rows (``event_row`` + crc + chain) in one transaction on ``con``
    (opened with ``isolation_level=None``): multi-row ``INSERT`` statements of up to
    :data:`ROWS_PER_INSERT` rows, so Python binds a few statements per batch, not one per
    row; the same transaction adds their keys to ``event_keys`` (:data:`INDEX_KEYS`) and
    moves the watermark past them (:data:`ADD_KEYS`). ``sync``: fsync the WAL at commit
    (``synchronous=FULL``), else ``NORMAL`` (see :mod:`qtd.store` for what each survives).

    Raises:
        sqlite3.Error: nothing of the batch was written (rolled back).
    """
    con.execute(f"PRAGMA synchronous={'FULL' if sync else 'NORMAL'}")
    con.execute("BEGIN IMMEDIATE")
    try:
        for i in range(0, len(rows), ROWS_PER_INSERT):
            chunk = rows[i:i + ROWS_PER_INSERT]
            con.execute(insert_rows(len(chunk)), [v for row in chunk for v in row])
        if rows:
            for statement in ADD_KEYS:
                con.execute(statement, (rows[-1][0],))
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            con.execute("ROLLBACK")
        raise


@functools.lru_cache(maxsize=8)
def insert_rows(n: int) -> str:
    """:data:`INSERT` for ``n`` rows in one statement."""
    return INSERT + f", ({', '.join('?' * COLUMNS)})" * (n - 1)
