"""Read events for the quality reports from either kind of qtd SQLite file.

* an agent's **events.db** (:mod:`qtd.store`, ``PRAGMA application_id`` ``"qtd1"``), opened
  read-only through :class:`~qtd.store.EventStore`;
* the leader's **fleet.db** (:mod:`qtd.leader.fleetdb`, ``"qtdf"``), every event the leader
  consumed plus its own (alerts, breaches, kill switch), read through a ``mode=ro`` SQLite
  connection in ingest order.

Both are safe to read while the agent or leader writes (WAL readers never block writers).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from qtd.errors import StoreError
from qtd.events import AnyEvent, decode_many
from qtd.store import APPLICATION_ID as STORE_APP_ID
from qtd.store import EventStore

BATCH: Final = 5000
FLEET_APP_ID: Final = 0x71746466
"""The leader's fleet.db in the SQLite header (``PRAGMA application_id``, ``"qtdf"``)."""


def db_kind(path: str | Path) -> str:
    """``"events"`` (an agent's events.db) or ``"fleet"`` (the leader's fleet.db).

    Raises:
        StoreError: the file is missing or is not a qtd store (names the file and the id).
    """
    p = Path(path)
    if not p.is_file():
        raise StoreError(f"{p}: no such file (give --db an events.db or fleet.db)", path=str(p))
    try:
        conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True)
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"{p}: not a readable SQLite file ({exc})", path=str(p)) from exc
    if app_id == STORE_APP_ID:
        return "events"
    if app_id == FLEET_APP_ID:
        return "fleet"
    raise StoreError(f"{p}: application_id={app_id:#x} is neither a qtd events.db nor a "
                     "fleet.db", path=str(p), application_id=app_id)


async def read_events(path: str | Path, since_ns: int | None = None,
                      until_ns: int | None = None) -> AsyncIterator[list[AnyEvent]]:
    """Events of ``path`` with ``since_ns <= ts_event < until_ns`` (UTC ns, either bound
    optional), in store order (seq for events.db, ingest order for fleet.db), in batches.

    Raises:
        StoreError: as :func:`db_kind`, or the store cannot be opened.
    """
    if db_kind(path) == "events":
        async with await EventStore.open(path, readonly=True) as store:
            async for batch in store.replay_batches():
                yield [e for e in batch if _inside(e.ts_event, since_ns, until_ns)]
        return
    uri = f"{Path(path).resolve().as_uri()}?mode=ro"
    last = 0
    while True:
        rows = await asyncio.to_thread(_fleet_rows, uri, last, since_ns, until_ns)
        if not rows:
            return
        last = rows[-1][0]
        yield decode_many([r[1] for r in rows])


def _inside(ts: int, since_ns: int | None, until_ns: int | None) -> bool:
    return (since_ns is None or ts >= since_ns) and (until_ns is None or ts < until_ns)


def _fleet_rows(uri: str, after_id: int, since_ns: int | None, until_ns: int | None
                ) -> list[tuple[int, bytes]]:
    sql = "SELECT id, payload FROM events WHERE id > ?"
    args: list[object] = [after_id]
    if since_ns is not None:
        sql += " AND ts >= ?"
        args.append(since_ns)
    if until_ns is not None:
        sql += " AND ts < ?"
        args.append(until_ns)
    conn = sqlite3.connect(uri, uri=True)
    try:
        return conn.execute(sql + " ORDER BY id LIMIT ?", (*args, BATCH)).fetchall()
    finally:
        conn.close()
