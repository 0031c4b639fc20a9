"""Read-only queries on either kind of qtd SQLite file, for ``qtd events``.

* an agent's **events.db** (:class:`~qtd.store.EventStore`, opened read-only): a row's
  position is the event's ``seq``;
* the leader's **fleet.db** (:mod:`qtd.leader.fleetdb`): every event the leader consumed,
  from every node, plus its own; a row's position is its ingest ``id`` (events keep the
  ``node`` and ``seq`` of the store they were born in).

:func:`open_reader` tells the two apart by ``PRAGMA application_id``
(:func:`qtd.quality.event_files.db_kind`). Both are safe while the agent or leader writes.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Final, Protocol

from qtd.events import AnyEvent, decode
from qtd.quality.event_files import db_kind
from qtd.store import EventStore

PAGE: Final = 5000
Row = tuple[int, AnyEvent]
"""``(position, event)``: seq in an events.db, ingest id in a fleet.db."""


class Filters(Protocol):
    bot: str | None
    kind: list[str] | None
    symbol: str | None
    cid: str | None
    since: int | None
    until: int | None


class Reader(Protocol):
    """What ``qtd events`` needs of a store."""

    fleet: bool

    async def query(self, f: Filters, *, after: int = 0, limit: int | None = None,
                    newest_first: bool = False) -> list[Row]: ...

    async def last_position(self) -> int: ...

    async def close(self) -> None: ...


class EventsReader:
    """An agent's events.db (positions are seqs)."""

    fleet = False

    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def query(self, f: Filters, *, after: int = 0, limit: int | None = None,
                    newest_first: bool = False) -> list[Row]:
        events = await self.store.query(
            bot=f.bot, kind=f.kind, symbol=f.symbol, client_order_id=f.cid,
            since_ns=f.since, until_ns=f.until, after_seq=after, limit=limit,
            newest_first=newest_first)
        return [(e.seq, e) for e in events]

    async def last_position(self) -> int:
        tail = await self.store.query(limit=1, newest_first=True)
        return tail[0].seq if tail else 0

    async def close(self) -> None:
        await self.store.close()


class FleetReader:
    """The leader's fleet.db through a ``mode=ro`` connection (positions are ingest ids).
    ``bot``, ``kind`` and the time range are filtered in SQL; ``symbol`` and
    ``client_order_id`` (inside the payload) on the decoded events."""

    fleet = True

    def __init__(self, path: Path) -> None:
        self.uri = f"{path.resolve().as_uri()}?mode=ro"

    async def query(self, f: Filters, *, after: int = 0, limit: int | None = None,
                    newest_first: bool = False) -> list[Row]:
        out: list[Row] = []
        cursor = after if not newest_first else None
        while limit is None or len(out) < limit:
            page = await asyncio.to_thread(self._page, f, after, cursor, newest_first)
            if not page:
                break
            cursor = page[-1][0]
            out += [(i, e) for i, e in page if _payload_match(e, f)]
        return out if limit is None else out[:limit]

    def _page(self, f: Filters, after: int, cursor: int | None,
              newest_first: bool) -> list[Row]:
        where: list[str] = ["id > ?"]
        args: list[object] = [after]
        if cursor is not None:
            where.append("id < ?" if newest_first else "id > ?")
            args.append(cursor)
        for column, value in (("bot", f.bot), ("ts >=", f.since), ("ts <", f.until)):
            if value is not None:
                where.append(f"{column} ?" if " " in column else f"{column} = ?")
                args.append(value)
        if f.kind:
            where.append(f"kind IN ({', '.join('?' * len(f.kind))})")
            args += f.kind
        sql = (f"SELECT id, payload FROM events WHERE {' AND '.join(where)} "
               f"ORDER BY id {'DESC' if newest_first else 'ASC'} LIMIT {PAGE}")
        conn = sqlite3.connect(self.uri, uri=True)
        try:
            rows = conn.execute(sql, args).fetchall()
        finally:
            conn.close()
        return [(i, decode(p)) for i, p in rows]

    async def last_position(self) -> int:
        def work() -> int:
            conn = sqlite3.connect(self.uri, uri=True)
            try:
                return int(conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0])
            finally:
                conn.close()

        return await asyncio.to_thread(work)

    async def close(self) -> None:
        return None


def _payload_match(e: AnyEvent, f: Filters) -> bool:
    return ((f.symbol is None or getattr(e, "symbol", None) == f.symbol)
            and (f.cid is None or getattr(e, "client_order_id", None) == f.cid))


async def open_reader(path: str | Path) -> Reader:
    """A reader of ``path``, an events.db or a fleet.db (module docstring).

    Raises:
        StoreError: missing file, not a qtd store, or an events.db that cannot be opened.
    """
    if Path(path).exists() and db_kind(path) == "fleet":
        return FleetReader(Path(path))
    return EventsReader(await EventStore.open(path, readonly=True))
