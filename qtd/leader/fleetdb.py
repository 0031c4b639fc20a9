"""fleet.db: the leader's SQLite record of every event it consumed, idempotent on origin.

Each agent event is named by its origin ``(node, incarnation, seq)`` (the JetStream
``Nats-Msg-Id``). Table ``origins`` keeps a high-water mark per ``(node, incarnation)``;
table ``events`` has a unique index on the origin. One :meth:`FleetDB.ingest` call inserts a
batch, moves the marks and records the stream sequence of the batch's last message **in one
transaction**, so after a crash either all of it or none of it is there, and the caller acks
the JetStream messages only after it returned. An event at or below its mark is looked up by
its origin (a re-send, or a redelivery after a gap) and counted once; its payload is compared
with the stored one, and a *different* event under a stored origin (a store that went
backwards and reused its seqs, or a forger) is kept out, counted in ``conflicts`` and named
to the caller, who alerts: the first event stays the record.

The leader's own events (kill switch, breaches, alerts) are stored with origin
``("leader", <fleet.db incarnation>, n)``. Rows are kept in ingest order (``id``), so a
rebuild by :meth:`FleetDB.replay_batches` applies events exactly as they were applied live.

All SQLite work runs on one dedicated thread (sqlite3, batched), never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, NamedTuple, TypeVar

import msgspec

from qtd.errors import StoreError
from qtd.events import AnyEvent, Event, decode, decode_many, encode
from qtd.quality.event_files import FLEET_APP_ID

APPLICATION_ID: Final = FLEET_APP_ID  # "qtdf" (qtd.quality.event_files tells the files apart)
SCHEMA_VERSION: Final = 1
LEADER_NODE: Final = "leader"
_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY, node TEXT NOT NULL, incarnation TEXT NOT NULL,
        seq INTEGER NOT NULL, ts INTEGER NOT NULL, kind TEXT NOT NULL, bot TEXT NOT NULL,
        stream_seq INTEGER NOT NULL, payload BLOB NOT NULL)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS events_origin ON events (node, incarnation, seq)",
    "CREATE INDEX IF NOT EXISTS events_bot ON events (node, bot, id)",
    """CREATE TABLE IF NOT EXISTS origins (node TEXT NOT NULL, incarnation TEXT NOT NULL,
        hwm INTEGER NOT NULL, gaps INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (node, incarnation))""",
)
_INSERT: Final = (
    "INSERT INTO events (node, incarnation, seq, ts, kind, bot, stream_seq, payload) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_T = TypeVar("_T")


class Origin(NamedTuple):
    """Where an event was born: its node, the node store's incarnation, its seq there."""

    node: str
    incarnation: str
    seq: int


def parse_msg_id(msg_id: str | None, event: Event) -> Origin:
    """The origin named by a ``Nats-Msg-Id`` header (``node:incarnation:seq``).

    Without a parseable header the event's own ``node`` and ``seq`` are used with an empty
    incarnation (still idempotent for that node). An incarnation ``<inc>~<random>`` names
    incarnation ``<inc>``: the agent re-published an event whose id another publisher had
    taken (:mod:`qtd.outbox_ids`).
    """
    if msg_id:
        parts = msg_id.rsplit(":", 2)
        if len(parts) == 3 and parts[2].isdigit():
            return Origin(parts[0], parts[1].partition("~")[0], int(parts[2]))
    return Origin(event.node, "", event.seq)


class Conflict(NamedTuple):
    """A different event arrived under an origin fleet.db already holds (kept: the stored
    one). ``stored_kind``/``got_kind`` are the two events' kinds."""

    origin: Origin
    stored_kind: str
    got_kind: str


class FleetDB:
    """The leader's fleet.db (use :meth:`open`).

    Attributes:
        path: the database file.
        incarnation: random id of this file (origin of the leader's own events).
        stream_seq: JetStream sequence of the last committed message (0 = none).
        duplicates: events dropped as already ingested, since open.
        gaps: origins seen jumping ahead of their mark (a missing seq), since open.
        conflicts: events dropped because a *different* event is stored under their origin,
            since open (see the module docstring).
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, pool: ThreadPoolExecutor) -> None:
        self._conn = conn
        self._pool = pool
        self.path = path
        self.incarnation = ""
        self.stream_seq = 0
        self.duplicates = 0
        self.gaps = 0
        self.conflicts = 0
        self._hwm: dict[tuple[str, str], int] = {}

    @classmethod
    async def open(cls, path: str | Path, *, fsync: bool = True) -> FleetDB:
        """Open or create fleet.db at ``path`` (its directory is created).

        Args:
            path: database file.
            fsync: ``synchronous=FULL`` (True) or ``NORMAL``.

        Raises:
            StoreError: not a fleet.db, newer schema, or cannot be opened/written.
        """
        p = Path(path)
        pool = ThreadPoolExecutor(1, thread_name_prefix="qtd-fleetdb")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(pool, _connect, p, fsync)
        except BaseException:
            pool.shutdown(wait=False)
            raise
        db = cls(conn, p, pool)
        await db._run(db._load)
        return db

    async def close(self) -> None:
        """Checkpoint and close; the thread ends."""
        try:
            await self._run(self._close)
        finally:
            self._pool.shutdown(wait=True)

    def _close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._conn.close()

    async def _run(self, fn: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _load(self) -> None:
        rows = self._conn.execute("SELECT key, value FROM meta").fetchall()
        meta = {str(k): str(v) for k, v in rows}
        self.incarnation = meta["incarnation"]
        self.stream_seq = int(meta.get("stream_seq", "0"))
        for node, inc, hwm in self._conn.execute("SELECT node, incarnation, hwm FROM origins"):
            self._hwm[(node, inc)] = int(hwm)

    # --- writing -------------------------------------------------------------------------

    async def ingest(
        self, items: Sequence[tuple[Origin, AnyEvent]], stream_seq: int,
        conflicts: list[Conflict] | None = None,
    ) -> list[AnyEvent]:
        """Store the events not seen before, move the marks and ``stream_seq``; one commit.

        Args:
            items: ``(origin, event)`` in stream order.
            stream_seq: JetStream sequence of the batch's last message.
            conflicts: if given, each event dropped because a different event is stored
                under its origin is appended here (the caller alerts).

        Returns:
            The new events, in order (duplicates left out).

        Raises:
            StoreError: the write failed; nothing of the batch was stored.
        """
        return await self._run(self._ingest, items, stream_seq, conflicts)

    def _ingest(self, items: Sequence[tuple[Origin, AnyEvent]], stream_seq: int,
                conflicts: list[Conflict] | None = None) -> list[AnyEvent]:
        fresh: list[AnyEvent] = []
        rows: list[tuple[object, ...]] = []
        marks: dict[tuple[str, str], int] = {}
        seen: dict[Origin, bytes] = {}
        for origin, ev in items:
            key = (origin.node, origin.incarnation)
            hwm = marks.get(key, self._hwm.get(key, 0))
            payload = encode(ev)
            stored = (seen.get(origin) or self._stored(origin)) if origin.seq <= hwm else None
            if stored is not None:
                if stored == payload:
                    self.duplicates += 1
                else:
                    self.conflicts += 1
                    if conflicts is not None:
                        conflicts.append(Conflict(origin, type(decode(stored)).__name__,
                                                  type(ev).__name__))
                continue
            if origin.seq > hwm + 1 and hwm:
                self.gaps += 1
            seen[origin] = payload
            marks[key] = max(hwm, origin.seq)
            fresh.append(ev)
            rows.append((origin.node, origin.incarnation, origin.seq, ev.ts_event,
                         type(ev).__name__, ev.bot, stream_seq, payload))
        self._commit(rows, marks, stream_seq)
        self._hwm.update(marks)
        self.stream_seq = max(self.stream_seq, stream_seq)
        return fresh

    def _stored(self, origin: Origin) -> bytes | None:
        """The stored payload under ``origin`` (None: not stored)."""
        row = self._conn.execute(
            "SELECT payload FROM events WHERE node = ? AND incarnation = ? AND seq = ?", origin
        ).fetchone()
        return None if row is None else bytes(row[0])

    def _commit(self, rows: list[tuple[object, ...]], marks: dict[tuple[str, str], int],
                stream_seq: int) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_INSERT, rows)
                conn.executemany(
                    "INSERT INTO origins (node, incarnation, hwm) VALUES (?, ?, ?) "
                    "ON CONFLICT (node, incarnation) DO UPDATE SET hwm = excluded.hwm",
                    [(n, i, h) for (n, i), h in marks.items()],
                )
                if stream_seq > self.stream_seq:
                    conn.execute("INSERT OR REPLACE INTO meta VALUES ('stream_seq', ?)",
                                 (str(stream_seq),))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: write failed ({exc}); check the disk, then "
                             "restart the leader", path=str(self.path)) from exc

    async def append_local(self, events: Sequence[Event]) -> list[AnyEvent]:
        """Store the leader's own events (origin ``("leader", incarnation, n)``), durably.

        Returns:
            The events with ``seq`` set (the leader's own sequence).

        Raises:
            StoreError: the write failed.
        """
        key = (LEADER_NODE, self.incarnation)

        def work() -> list[AnyEvent]:
            first = self._hwm.get(key, 0) + 1
            stored = [msgspec.structs.replace(e, seq=first + i) for i, e in enumerate(events)]
            items = [(Origin(LEADER_NODE, self.incarnation, e.seq), e) for e in stored]
            return self._ingest(items, 0)  # type: ignore[arg-type]

        return await self._run(work)

    async def set_meta(self, key: str, value: str) -> None:
        """Store a small value (e.g. the fleet's peak equity) in ``meta``."""
        def work() -> None:
            with self._conn:
                self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

        await self._run(work)

    # --- reading -------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        """A value stored with :meth:`set_meta` (None if absent)."""
        def work() -> str | None:
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._run(work)

    def marks(self) -> dict[tuple[str, str], int]:
        """``(node, incarnation) -> highest seq ingested`` (a copy)."""
        return dict(self._hwm)

    async def count(self, node: str | None = None) -> int:
        """Events stored (of one node, or all)."""
        if node is None:
            return int((await self._run(self._fetch, "SELECT count(*) FROM events", ()))[0][0])
        sql, args = "SELECT count(*) FROM events WHERE node = ?", (node,)
        return int((await self._run(self._fetch, sql, args))[0][0])

    def _fetch(self, sql: str, args: tuple[object, ...]) -> list[Any]:
        return self._conn.execute(sql, args).fetchall()

    async def recent(self, node: str, bot: str, limit: int) -> list[AnyEvent]:
        """The last ``limit`` events of one bot, newest first."""
        def work() -> list[AnyEvent]:
            rows = self._conn.execute(
                "SELECT payload FROM events WHERE node = ? AND bot = ? ORDER BY id DESC LIMIT ?",
                (node, bot, limit),
            ).fetchall()
            return [decode(r[0]) for r in rows]

        return await self._run(work)

    async def replay_all(self, batch: int = 5000) -> AsyncIterator[list[AnyEvent]]:
        """Every stored event, the leader's own included (audit), in ingest order."""
        last = 0
        sql = "SELECT id, payload FROM events WHERE id > ? ORDER BY id LIMIT ?"
        while True:
            rows = await self._run(self._fetch, sql, (last, batch))
            if not rows:
                return
            last = rows[-1][0]
            yield decode_many([r[1] for r in rows])

    async def local_events(self, kind: str) -> list[AnyEvent]:
        """The leader's own stored events of ``kind`` (node ``"leader"``, this file's
        incarnation), in order: what it rebuilds besides the view (e.g. cap overrides)."""
        sql = ("SELECT payload FROM events WHERE node = ? AND bot = '' AND incarnation = ? "
               "AND kind = ? ORDER BY id")
        rows = await self._run(self._fetch, sql, (LEADER_NODE, self.incarnation, kind))
        return decode_many([r[0] for r in rows]) if rows else []

    async def replay_batches(self, batch: int = 5000) -> AsyncIterator[list[AnyEvent]]:
        """Every consumed agent event in ingest order (the leader's own events left out),
        in lists of up to ``batch``."""
        last = 0
        sql = "SELECT id, payload FROM events WHERE id > ? AND incarnation != ? ORDER BY id LIMIT ?"
        while True:
            rows = await self._run(self._fetch, sql, (last, self.incarnation, batch))
            if not rows:
                return
            last = rows[-1][0]
            yield decode_many([r[1] for r in rows])


def _connect(p: Path, fsync: bool) -> sqlite3.Connection:
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(p, isolation_level=None, check_same_thread=False)
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"{p}: cannot open fleet.db ({exc})", path=str(p)) from exc
    if app_id != APPLICATION_ID and (app_id != 0 or objects > 0):
        conn.close()
        raise StoreError(f"{p}: not a qtd fleet.db (application_id={app_id:#x}); qtd will "
                         "not touch it: point fleet_db at another path", path=str(p))
    if version > SCHEMA_VERSION:
        conn.close()
        raise StoreError(f"{p}: fleet.db schema {version} is newer than this qtd supports",
                         path=str(p))
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        with conn:
            for stmt in _SCHEMA:
                conn.execute(stmt)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('incarnation', ?)",
                         (uuid.uuid4().hex[:16],))
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"{p}: cannot prepare fleet.db ({exc})", path=str(p)) from exc
    return conn
