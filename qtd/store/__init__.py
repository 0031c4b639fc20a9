"""SQLite event store: the system of record of one qtd process.

One append-only table ``events``; ``seq`` is strictly increasing (assigned here, under one
lock, so there are no gaps on failure); the payload is the msgspec-msgpack encoding of the
event; ``ts`` (= ``ts_event``, UTC ns), ``kind``, ``bot``, ``symbol`` and
``client_order_id`` are indexed columns for queries. The outbox watermark (last seq
acknowledged by JetStream) lives in table ``outbox`` of the same file. Each file has a random
``incarnation`` created with it, so ``(node, incarnation, seq)`` names an event uniquely even
if a store is ever recreated.

Durability (SQLite WAL, ``synchronous=FULL``; see https://sqlite.org/pragma.html#pragma_synchronous
and https://sqlite.org/wal.html):

=============================  ==============================  ===============================
event kind                     lost by ``kill -9``             lost by power loss
=============================  ==============================  ===============================
OrderIntent, Fill, acks,       nothing that :meth:`append`     nothing that :meth:`append`
risk and control events        returned for (each commit       returned for
(:meth:`append`, durable)      fsyncs the WAL)
PnLSnapshot, Heartbeat         only what the caller still      additionally the batches
(:meth:`append_many` with      holds in memory (not yet        committed with ``sync=False``
``sync=False``)                handed to the store)            since the last synced commit
=============================  ==============================  ===============================

A synced commit also makes every earlier unsynced commit durable (one WAL, written in order).

Tamper evidence (:mod:`qtd.store.integrity`): every row carries a CRC-32 of its payload and a
BLAKE2b hash chain over seq; :meth:`EventStore.open` verifies the whole chain and every
replay verifies what it reads, so a flipped bit, an edited or deleted record raise
:class:`~qtd.errors.StoreCorrupt` naming the file, the first bad seq and what mismatched.
The chain has no key: it does not stop someone who rewrites every later row too, nor show
a lost tail (see the module's docstring for the anchor that does).

Bad files never get overwritten: a foreign, zero-length or corrupt file, a newer schema, a
read-only or full disk raise :class:`~qtd.errors.StoreError` naming the file and what to do.
Only a path where no file exists creates a new store, and atomically (the file appears
fully initialised or not at all), so a zero-length ``events.db`` is never taken as new.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import functools
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, cast

import aiosqlite
import msgspec

from qtd import __version__
from qtd.errors import StoreCorrupt, StoreError
from qtd.events import AnyEvent, Event, OrderIntent, decode, decode_many, encode
from qtd.store import integrity

SCHEMA_VERSION: Final = 2
APPLICATION_ID: Final = 0x71746431  # "qtd1" in the SQLite header (PRAGMA application_id)
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"

# Forward migrations: version N is reached by running MIGRATIONS[N] on a version N-1 file.
MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            ts INTEGER NOT NULL,
            kind TEXT NOT NULL,
            node TEXT NOT NULL,
            bot TEXT NOT NULL,
            symbol TEXT,
            client_order_id TEXT,
            payload BLOB NOT NULL
        )""",
        "CREATE INDEX events_ts ON events (ts)",
        "CREATE INDEX events_kind ON events (kind, seq)",
        "CREATE INDEX events_bot ON events (bot, seq)",
        "CREATE INDEX events_symbol ON events (symbol) WHERE symbol IS NOT NULL",
        "CREATE INDEX events_cid ON events (client_order_id) WHERE client_order_id IS NOT NULL",
        "CREATE TABLE outbox (name TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
    ),
    # the checksum and hash chain (qtd.store.integrity); rows already stored are chained by
    # _chain_existing in the same transaction
    2: (
        "ALTER TABLE events ADD COLUMN crc INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE events ADD COLUMN chain BLOB NOT NULL DEFAULT x''",
    ),
}

_INSERT: Final = (
    "INSERT INTO events (seq, ts, kind, node, bot, symbol, client_order_id, payload, crc, "
    "chain) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_COLUMNS: Final = 10

Row = tuple[int, int, str, str, str, str | None, str | None, bytes]


class StoreInfo(msgspec.Struct, frozen=True):
    """What ``qtd events --info`` shows about a store file."""

    path: str
    node: str
    incarnation: str
    schema_version: int
    created_ns: int
    last_seq: int


def event_row(event: Event) -> Row:
    """The table row for an event that already carries its ``seq``."""
    return (
        event.seq,
        event.ts_event,
        type(event).__name__,
        event.node,
        event.bot,
        getattr(event, "symbol", None) or None,
        getattr(event, "client_order_id", None) or None,
        encode(event),
    )


class EventStore:
    """Append-only event store on one SQLite file (use :meth:`open`, not the constructor).

    Attributes:
        path: the database file.
        node: the node this store belongs to (fixed when the file is created).
        incarnation: random id created with the file (16 hex chars).
        last_seq: the highest seq appended so far (0 for an empty store).
    """

    def __init__(
        self, db: aiosqlite.Connection, path: Path, node: str, incarnation: str, last_seq: int,
        *, readonly: bool, lock_fd: int | None, created_ns: int = 0, head: bytes = b"",
    ) -> None:
        self._db = db
        self.path = path
        self.node = node
        self.incarnation = incarnation
        self.last_seq = last_seq
        self._head = head or integrity.genesis(incarnation)  # chain of the row last_seq
        self.readonly = readonly
        self._lock_fd = lock_fd
        self._write_lock = asyncio.Lock()
        self._failed: StoreError | None = None
        self._created_ns = created_ns

    # --- opening -------------------------------------------------------------------------

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, node: str | None = None, readonly: bool = False
    ) -> EventStore:
        """Open (or, unless ``readonly``, create) the store at ``path``.

        Args:
            path: database file; its directory must exist.
            node: the owning node. Required to create a store; when given for an existing
                store it must match the node the store was created for.
            readonly: open for queries only (no lock, no writes, no creation).

        Every page (``PRAGMA quick_check``) and the whole hash chain are checked
        (:mod:`qtd.store.integrity`; about 3 s per million events, in a thread) before this
        returns.

        Raises:
            StoreCorrupt: a record fails its checksum or the hash chain, a seq is missing,
                or a page cannot be read (names the file, the first bad seq and what
                mismatched).
            StoreError: the file is not a qtd store (foreign, zero-length or corrupt), has a
                newer schema, belongs to another node, is locked by another writer, or cannot
                be opened (permissions, read-only disk). The file is never modified in these
                cases.
        """
        p = Path(path)
        if p.exists():
            _check_header(p)
        elif readonly:
            raise StoreError(f"{p}: no event store here (nothing to read)", path=str(p))
        lock_fd = None if readonly else _lock_writer(p)
        try:
            if not readonly and not p.exists():
                await _create(p, node)
            db = await _connect(p, readonly)
        except BaseException:
            _unlock(lock_fd)
            raise
        try:
            node_, inc, created = await _prepare(db, p, node, readonly)
            last, head = await asyncio.to_thread(integrity.check_file, p, inc)
        except BaseException:
            await db.close()
            _unlock(lock_fd)
            raise
        return cls(db, p, node_, inc, last, readonly=readonly, lock_fd=lock_fd,
                   created_ns=created, head=head)

    async def close(self) -> None:
        """Checkpoint the WAL into the main file (writers only) and close."""
        try:
            if not self.readonly and self._failed is None:
                await self._db.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # the WAL stays; the next open replays it
        finally:
            await self._db.close()
            _unlock(self._lock_fd)
            self._lock_fd = None

    async def __aenter__(self) -> EventStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def head(self) -> tuple[int, str]:
        """``(last_seq, hex chain of that row)``: the anchor of everything stored so far (the
        genesis link for an empty store); see :mod:`qtd.store.integrity`."""
        return self.last_seq, self._head.hex()

    def info(self) -> StoreInfo:
        """Identity of this store (path, node, incarnation, schema, last seq)."""
        return StoreInfo(
            str(self.path), self.node, self.incarnation, SCHEMA_VERSION, self._created_ns,
            self.last_seq,
        )

    # --- writing -------------------------------------------------------------------------

    async def append(self, event: Event) -> AnyEvent:
        """Append one event durably: the WAL is fsynced before this returns.

        Use it for order intents (before the broker call), fills, acks, risk and control
        events.

        Returns:
            The event with its ``seq`` set.

        Raises:
            StoreError: the write failed (disk full, read-only, I/O error); nothing was
                written and the store refuses further writes until reopened.
        """
        async with self._write_lock:
            self._check_writable()
            stored = msgspec.structs.replace(event, seq=self.last_seq + 1)
            rows, head = integrity.seal((event_row(stored),), self._head)
            try:
                await self._db.execute_fetchall(_INSERT, rows[0])
            except sqlite3.Error as exc:
                raise self._fail(exc) from exc
            except asyncio.CancelledError:
                await self._resync_after_cancel()
                raise
            self.last_seq, self._head = stored.seq, head
        return stored  # type: ignore[return-value]

    async def append_many(self, events: Sequence[Event], *, sync: bool = True) -> list[AnyEvent]:
        """Append events in one transaction (all or nothing), in the given order.

        Args:
            events: events to store; their ``seq`` is assigned here.
            sync: fsync the WAL at commit (default). ``False`` is for high-volume,
                reconstructible events (PnL snapshots, heartbeats): such a batch survives
                ``kill -9`` but a power loss may take it back unless a later synced commit
                happened (see the module docstring).

        Returns:
            The events with ``seq`` set.

        Raises:
            StoreError: as for :meth:`append`; the whole batch was rolled back.
        """
        if not events:
            return []
        async with self._write_lock:
            self._check_writable()
            first = self.last_seq + 1
            stored = [msgspec.structs.replace(e, seq=first + i) for i, e in enumerate(events)]
            rows, head = integrity.seal([event_row(e) for e in stored], self._head)
            db = self._db
            try:
                if not sync:
                    await db.execute_fetchall("PRAGMA synchronous=NORMAL")
                await db.execute_fetchall("BEGIN IMMEDIATE")
                try:
                    await db.executemany(_INSERT, rows)
                    await db.execute_fetchall("COMMIT")
                except BaseException:
                    await _rollback(db)
                    raise
                finally:
                    if not sync:
                        await db.execute_fetchall("PRAGMA synchronous=FULL")
            except sqlite3.Error as exc:
                raise self._fail(exc) from exc
            except asyncio.CancelledError:
                await self._resync_after_cancel()
                raise
            self.last_seq, self._head = stored[-1].seq, head
        return stored  # type: ignore[return-value]

    async def _resync_after_cancel(self) -> None:
        """The writing task was cancelled while its SQL was already queued to SQLite's
        thread, which runs it anyway (a COMMIT may land, a ROLLBACK may undo the batch).
        Wait for that thread to get through it (it runs requests in order) and take
        ``last_seq`` from the file: giving up instead would leave a committed event that
        ``last_seq`` does not count, the next append would reuse its seq and fail, and the
        store would refuse every write after it. Called with the write lock held."""
        while True:
            try:
                rows = list(await self._db.execute_fetchall(
                    "SELECT seq, chain FROM events ORDER BY seq DESC LIMIT 1"))
            except asyncio.CancelledError:
                continue  # cancelled again: ask again (the thread still runs in order)
            except sqlite3.Error as exc:
                self._fail(exc)  # unknown state: refuse writes until reopened
                return
            if rows:
                self.last_seq, self._head = int(rows[0][0]), bytes(rows[0][1])
            else:
                self.last_seq, self._head = 0, integrity.genesis(self.incarnation)
            return

    async def set_watermark(self, seq: int, name: str = "jetstream") -> None:
        """Record that every event up to ``seq`` was acknowledged by ``name`` (the outbox).

        Raises:
            StoreError: the write failed, or ``seq`` is beyond the last appended seq.
        """
        if seq > self.last_seq:
            raise StoreError(
                f"{self.path}: watermark {seq} is beyond the last event {self.last_seq}",
                path=str(self.path), seq=seq,
            )
        async with self._write_lock:
            self._check_writable()
            try:
                await self._db.execute_fetchall(
                    "INSERT INTO outbox (name, seq) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET seq = max(seq, excluded.seq)",
                    (name, seq),
                )
            except sqlite3.Error as exc:
                raise self._fail(exc) from exc

    async def replace_after(self, seq: int, events: Sequence[Event]) -> list[AnyEvent]:
        """Operator recovery only (``qtd recover``, :mod:`qtd.recovery`): in one
        transaction, remove the events after ``seq``, append ``events`` from ``seq + 1`` on
        and lower the outbox watermarks to ``seq``. Never called by a running agent.

        Raises:
            StoreError: the write failed; nothing changed.
        """
        async with self._write_lock:
            self._check_writable()
            stored = [msgspec.structs.replace(e, seq=seq + 1 + i) for i, e in enumerate(events)]
            db = self._db
            try:
                await db.execute_fetchall("BEGIN IMMEDIATE")
                try:
                    await db.execute_fetchall("DELETE FROM events WHERE seq > ?", (seq,))
                    await db.execute_fetchall("UPDATE outbox SET seq = min(seq, ?)", (seq,))
                    await db.executemany(_INSERT, [event_row(e) for e in stored])
                    await db.execute_fetchall("COMMIT")
                except BaseException:
                    await _rollback(db)
                    raise
            except sqlite3.Error as exc:
                raise self._fail(exc) from exc
            self.last_seq = stored[-1].seq if stored else seq
        return stored  # type: ignore[return-value]

    def bulk_appender(self) -> BulkAppender:
        """A :class:`BulkAppender` on this store (the caller becomes its only writer until
        the appender is closed)."""
        self._check_writable()
        return BulkAppender(self)

    def _check_writable(self) -> None:
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only", path=str(self.path))
        if self._failed is not None:
            raise self._failed

    def _fail(self, exc: sqlite3.Error) -> StoreError:
        self._failed = _write_error(self.path, exc, self.last_seq)
        return self._failed

    # --- reading -------------------------------------------------------------------------

    async def watermark(self, name: str = "jetstream") -> int:
        """Last seq acknowledged by ``name`` (0 if none)."""
        rows = await self._read("SELECT seq FROM outbox WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else 0

    async def query(
        self,
        *,
        bot: str | None = None,
        kind: str | Iterable[str] | None = None,
        symbol: str | None = None,
        client_order_id: str | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        after_seq: int = 0,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[AnyEvent]:
        """Events matching every given filter, in seq order (or newest first).

        Args:
            bot, kind, symbol, client_order_id: exact matches (``kind`` may be several).
            since_ns, until_ns: ``ts_event`` range, UTC ns, ``since <= ts < until``.
            after_seq: only events with ``seq > after_seq``.
            limit: at most this many events.
            newest_first: order by seq descending (with ``limit``: the tail).

        Raises:
            StoreCorrupt: a record read fails its checksum.
            StoreError: SQLite cannot read the file (corrupt page).
        """
        where, params = _where(bot, kind, symbol, client_order_id, since_ns, until_ns, after_seq)
        sql = (f"SELECT seq, payload, crc FROM events{where} "
               f"ORDER BY seq {'DESC' if newest_first else 'ASC'}")
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        rows = await self._read(sql, params)
        return [decode(p) for p in integrity.checked_payloads(self.path, rows)]

    async def replay(self, after_seq: int = 0, batch: int = 5000) -> AsyncIterator[AnyEvent]:
        """Every event with ``seq > after_seq`` in seq order (see :meth:`replay_batches`)."""
        async for events in self.replay_batches(after_seq, batch):
            for ev in events:
                yield ev

    async def replay_batches(
        self, after_seq: int = 0, batch: int = 5000
    ) -> AsyncIterator[list[AnyEvent]]:
        """Events with ``seq > after_seq`` in seq order, as lists of up to ``batch``, each
        row verified against its checksum and the hash chain from row ``after_seq`` on.

        The next batch is read in the store's thread while this one is verified and decoded,
        and a batch is decoded in one call (the payloads framed as one msgpack array).

        Raises:
            StoreCorrupt: the first row that is missing or fails its checksum or link, or a
                page SQLite cannot read; the store then refuses writes until reopened.
        """
        sql = f"{integrity.VERIFY_SQL} LIMIT ?"
        link = await self._link_at(after_seq, sql)
        if link is None:
            return
        prev_seq, prev = link
        pending = asyncio.ensure_future(self._db.execute_fetchall(sql, (after_seq, batch)))
        try:
            while True:
                try:
                    rows = cast("list[integrity.StoredRow]", list(await pending))
                except sqlite3.DatabaseError as exc:
                    raise self._corrupt(integrity.unreadable(self.path, prev_seq, exc)) from exc
                if len(rows) == batch:
                    pending = asyncio.ensure_future(
                        self._db.execute_fetchall(sql, (rows[-1][0], batch)))
                try:
                    prev = integrity.verify(self.path, rows, prev_seq, prev)
                except StoreCorrupt as exc:
                    raise self._corrupt(exc) from None
                if rows:
                    prev_seq = rows[-1][0]
                    yield decode_many([r[1] for r in rows])
                if len(rows) < batch:
                    return
        finally:
            if not pending.done():
                pending.cancel()

    async def _link_at(self, seq: int, sql: str) -> tuple[int, bytes] | None:
        """``(seq, chain)`` of the row a replay after ``seq`` follows on from; ``None`` when
        there is no row from ``seq`` on (nothing to replay)."""
        if seq <= 0:
            return 0, integrity.genesis(self.incarnation)
        rows = await self._read(sql, (seq - 1, 1))
        if not rows:
            return None
        if rows[0][0] != seq:
            raise self._corrupt(integrity.missing(self.path, seq, rows[0][0]))
        return seq, bytes(rows[0][3])

    async def last_cid_counter(self, bot: str) -> int:
        """The ``cid_counter`` of the bot's latest OrderIntent (0 if it never ordered)."""
        rows = await self._read(
            "SELECT seq, payload, crc FROM events WHERE bot = ? AND kind = 'OrderIntent' "
            "ORDER BY seq DESC LIMIT 1",
            (bot,),
        )
        if not rows:
            return 0
        intent = decode(integrity.checked_payloads(self.path, rows)[0])
        assert isinstance(intent, OrderIntent)
        return intent.cid_counter

    async def count(self) -> int:
        """Number of events stored."""
        rows = await self._read("SELECT count(*) FROM events")
        return int(rows[0][0])

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return list(await self._db.execute_fetchall(sql, params))
        except sqlite3.DatabaseError as exc:
            raise _read_error(self.path, exc) from exc

    def _corrupt(self, exc: StoreCorrupt) -> StoreCorrupt:
        """Refuse writes (and the checkpoint at close) on a store found corrupt."""
        if not self.readonly:
            self._failed = exc
        return exc


# --- helpers -------------------------------------------------------------------------------


class BulkAppender:
    """Appends pre-sequenced batches of events from a thread of its own, so the caller never
    waits on SQLite: :meth:`hand_over` starts writing a batch at once and returns a future.

    For a single high-volume writer (the backtest's write-behind front) that owns the store
    for a while: batches are committed strictly in the order handed over (one thread, one
    plain ``sqlite3`` connection to the store's file). Each batch is one transaction of
    multi-row ``INSERT`` statements (up to 1,024 rows each), so the GIL is taken a few
    times per batch, not once per row, and SQLite's B-tree work runs on another core while
    the caller goes on. Durability is :meth:`EventStore.append_many`'s: ``sync=False``
    batches are not fsynced, a ``sync=True`` batch makes every earlier one durable.

    The store's ``last_seq`` follows the committed batches (read it after a batch's future
    is done). A failed batch is rolled back; the store refuses further writes (as after a
    failed :meth:`EventStore.append`), and this batch's and every later future raise
    :class:`~qtd.errors.StoreError`.

    Args:
        store: the open, writable store; nothing else may write to it until :meth:`close`.
    """

    ROWS_PER_INSERT: Final = 1024  # x 10 parameters, under SQLite's 32,766 (since 3.32)

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._next = store.last_seq + 1  # the seq the next batch must start at
        self._pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"qtd-store-bulk-{store.node}")
        self._con: sqlite3.Connection | None = None  # opened (and used) in the thread only

    def hand_over(self, events: Sequence[Event], *, sync: bool) -> asyncio.Future[None]:
        """Start writing ``events`` (non-empty, seqs contiguous from the store's next seq)
        after the batches handed over before; call it in the event loop.

        Raises:
            ValueError: the batch is empty or its seqs are not the next ones.
        """
        first, last = (events[0].seq, events[-1].seq) if events else (0, -1)
        if not events or first != self._next or last - first + 1 != len(events):
            raise ValueError(f"{self.store.path}: batch of {len(events)} events with seq "
                             f"{first}..{last}: must be non-empty and start at {self._next}")
        self._next = last + 1
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._pool, self._write, list(events), sync)

    async def close(self) -> None:
        """Wait for the batches handed over, then close the connection and the thread."""
        await asyncio.get_running_loop().run_in_executor(self._pool, self._close)
        self._pool.shutdown(wait=True)

    def _close(self) -> None:  # in the appender's thread
        if self._con is not None:
            self._con.close()
            self._con = None

    def _write(self, events: list[Event], sync: bool) -> None:  # in the appender's thread
        store = self.store
        store._check_writable()
        rows, head = integrity.seal([event_row(e) for e in events], store._head)
        try:
            con = self._con
            if con is None:
                con = self._con = sqlite3.connect(store.path, isolation_level=None)
                con.execute("PRAGMA busy_timeout=5000")
            con.execute(f"PRAGMA synchronous={'FULL' if sync else 'NORMAL'}")
            con.execute("BEGIN IMMEDIATE")
            try:
                step = self.ROWS_PER_INSERT
                for i in range(0, len(rows), step):
                    chunk = rows[i:i + step]
                    con.execute(_insert_rows(len(chunk)), [v for row in chunk for v in row])
                con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise store._fail(exc) from exc
        store.last_seq, store._head = events[-1].seq, head


@functools.lru_cache(maxsize=8)
def _insert_rows(n: int) -> str:
    """``_INSERT`` for ``n`` rows in one statement."""
    return _INSERT + f", ({', '.join('?' * _COLUMNS)})" * (n - 1)


def _where(
    bot: str | None, kind: str | Iterable[str] | None, symbol: str | None,
    cid: str | None, since_ns: int | None, until_ns: int | None, after_seq: int,
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for col, val in (("bot", bot), ("symbol", symbol), ("client_order_id", cid)):
        if val is not None:
            clauses.append(f"{col} = ?")
            params.append(val)
    if kind is not None:
        kinds = [kind] if isinstance(kind, str) else list(kind)
        clauses.append(f"kind IN ({', '.join('?' * len(kinds))})")
        params.extend(kinds)
    if since_ns is not None:
        clauses.append("ts >= ?")
        params.append(since_ns)
    if until_ns is not None:
        clauses.append("ts < ?")
        params.append(until_ns)
    if after_seq:
        clauses.append("seq > ?")
        params.append(after_seq)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _check_header(p: Path) -> None:
    try:
        with p.open("rb") as f:
            head = f.read(16)
    except OSError as exc:
        msg = f"{p}: cannot read ({exc.strerror}); check permissions"
        raise StoreError(msg, path=str(p)) from exc
    if not head:
        raise StoreError(
            f"{p}: zero-length file, not an event store (a store is never empty: a truncated "
            "file or an interrupted copy?). qtd will not take it as a new store (new "
            "incarnation, flat positions): restore the store, or delete the file to start a "
            "new one.",
            path=str(p),
        )
    if head != _SQLITE_MAGIC:
        raise StoreError(
            f"{p}: not a SQLite database (foreign or corrupt file); qtd will not touch it. "
            "Move it aside or point the config at another path.",
            path=str(p),
        )


def _lock_writer(p: Path) -> int:
    lock_path = p.with_name(p.name + ".lock")
    if not p.parent.is_dir():
        raise StoreError(f"{p}: directory {p.parent} does not exist; create it or fix the "
                         "configured path", path=str(p))
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(
            f"{p}: cannot create lock file {lock_path} ({exc.strerror}); "
            "is the disk read-only or full?",
            path=str(p),
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StoreError(
            f"{p}: another process (pid {holder}) is writing this store; "
            "stop it first or open read-only",
            path=str(p), pid=holder,
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


async def _create(p: Path, node: str | None) -> None:
    """Create a new store at ``p`` atomically: built and checkpointed beside it, then renamed
    into place, so ``p`` is a whole store or absent (never a zero-length file). Called with
    the writer lock held."""
    if node is None:
        raise StoreError(f"{p}: a new store needs its node name", path=str(p))
    tmp = p.with_name(p.name + ".new")
    for leftover in (tmp, *(tmp.with_name(tmp.name + x) for x in ("-wal", "-shm"))):
        leftover.unlink(missing_ok=True)  # an earlier creation that died half-way
    db = await _connect(tmp, readonly=False)
    try:
        await _prepare(db, tmp, node, readonly=False, new=True)
        await db.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        raise _write_error(tmp, exc, None) from exc
    finally:
        await db.close()
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, p)
        dfd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        raise StoreError(f"{p}: cannot create the store ({exc.strerror}); is the disk "
                         "read-only or full?", path=str(p)) from exc


def _read_error(p: Path, exc: sqlite3.DatabaseError) -> StoreError:
    return StoreError(f"{p}: cannot read the event store ({exc}); the file may be corrupt: "
                      "restore it from backup or move it aside; qtd will not modify it",
                      path=str(p))


def _unlock(fd: int | None) -> None:
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


async def _connect(p: Path, readonly: bool) -> aiosqlite.Connection:
    mode = "ro" if readonly else "rwc"
    try:
        db = await aiosqlite.connect(f"file:{p}?mode={mode}", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(
            f"{p}: cannot open ({exc}); check the directory exists and is writable",
            path=str(p),
        ) from exc
    return db


async def _prepare(
    db: aiosqlite.Connection, p: Path, node: str | None, readonly: bool, *, new: bool = False
) -> tuple[str, str, int]:
    """Check identity and schema, migrate (``new``: create the schema), set pragmas; return
    (node, incarnation, created_ns)."""
    try:
        app_id = (await _scalar(db, "PRAGMA application_id")) or 0
        version = (await _scalar(db, "PRAGMA user_version")) or 0
        tables = await _scalar(db, "SELECT count(*) FROM sqlite_master") or 0
    except sqlite3.DatabaseError as exc:
        raise StoreError(
            f"{p}: unreadable SQLite file ({exc}); it may be corrupt. qtd will not modify it: "
            "restore from backup or move it aside.",
            path=str(p),
        ) from exc
    if app_id != APPLICATION_ID and (app_id != 0 or tables > 0):
        raise StoreError(
            f"{p}: SQLite file of another application (application_id={app_id:#x}, "
            f"{tables} objects); qtd will not touch it. Point the config at another path.",
            path=str(p), application_id=app_id,
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{p}: schema version {version} is newer than this qtd ({__version__}) supports "
            f"({SCHEMA_VERSION}); upgrade qtd, do not downgrade the store.",
            path=str(p), schema_version=version,
        )
    if version == 0 and not new:
        raise StoreError(
            f"{p}: SQLite file without a qtd store in it (schema version 0); qtd creates a "
            "store only where no file exists. Delete it to start a new store, or point the "
            "config at the right path.",
            path=str(p),
        )
    try:
        if not readonly:
            await db.execute_fetchall("PRAGMA journal_mode=WAL")
            await db.execute_fetchall("PRAGMA synchronous=FULL")
            await db.execute_fetchall("PRAGMA busy_timeout=5000")
            if version < SCHEMA_VERSION:
                await _migrate(db, p, version, node)
        elif version < SCHEMA_VERSION:
            raise StoreError(
                f"{p}: schema version {version} needs a migration; open it once read-write",
                path=str(p),
            )
        meta = {str(k): str(v) for k, v in await db.execute_fetchall("SELECT key, value FROM meta")}
    except sqlite3.DatabaseError as exc:
        raise _write_error(p, exc, None) from exc
    owner = str(meta["node"])
    if node is not None and node != owner:
        raise StoreError(
            f"{p}: store belongs to node {owner!r}, not {node!r}; each node keeps its own store",
            path=str(p), owner=owner, node=node,
        )
    return owner, str(meta["incarnation"]), int(meta.get("created_ns", 0))


async def _migrate(db: aiosqlite.Connection, p: Path, version: int, node: str | None) -> None:
    if version == 0 and node is None:
        raise StoreError(f"{p}: a new store needs its node name", path=str(p))
    await db.execute_fetchall("BEGIN IMMEDIATE")
    try:
        for v in range(version + 1, SCHEMA_VERSION + 1):
            for stmt in MIGRATIONS[v]:
                await db.execute_fetchall(stmt)
        if 1 <= version < 2:
            await _chain_existing(db, p)
        if version == 0:
            await db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("node", str(node)),
                    ("incarnation", uuid.uuid4().hex[:16]),
                    ("created_ns", str(time.time_ns())),
                    ("created_by", f"qtd {__version__}"),
                ],
            )
        await db.execute_fetchall(f"PRAGMA application_id={APPLICATION_ID}")
        await db.execute_fetchall(f"PRAGMA user_version={SCHEMA_VERSION}")
        await db.execute_fetchall("COMMIT")
    except BaseException:
        await _rollback(db)
        raise


async def _chain_existing(db: aiosqlite.Connection, p: Path, batch: int = 20_000) -> None:
    """Migration to schema 2: compute ``crc`` and ``chain`` for the rows already stored
    (trusted as they are: schema 1 had nothing to check them against), in the migration's
    transaction.

    Raises:
        StoreCorrupt: a seq is missing (schema 1 never leaves a gap).
    """
    inc = await _scalar(db, "SELECT value FROM meta WHERE key = 'incarnation'")
    seq, prev = 0, integrity.genesis(str(inc))
    while rows := list(await db.execute_fetchall(
            "SELECT seq, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, batch))):
        if rows[-1][0] - seq != len(rows):
            at = next(i for i, r in enumerate(rows, seq + 1) if r[0] != i)
            raise integrity.missing(p, at, next(r[0] for r in rows if r[0] > at))
        update = []
        for s, payload in rows:
            prev = integrity.link(prev, s, payload)
            update.append((integrity.checksum(payload), prev, s))
        await db.executemany("UPDATE events SET crc = ?, chain = ? WHERE seq = ?", update)
        seq = rows[-1][0]


async def _rollback(db: aiosqlite.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):  # no transaction open: SQLite rolled back itself
        await db.execute_fetchall("ROLLBACK")


async def _scalar(db: aiosqlite.Connection, sql: str) -> Any:
    rows = list(await db.execute_fetchall(sql))
    return rows[0][0] if rows else None


def _write_error(p: Path, exc: sqlite3.Error, last_seq: int | None) -> StoreError:
    text = str(exc)
    after = f" Nothing after seq {last_seq} was written." if last_seq is not None else ""
    if "full" in text:
        hint = "the disk is full: free space, then restart (trading halts until then)"
    elif "readonly" in text or "read-only" in text:
        hint = "the store is read-only: fix the mount or permissions, then restart"
    elif isinstance(exc, sqlite3.DatabaseError) and "malformed" in text:
        hint = "the file is corrupt: restore from backup; qtd will not modify it"
    else:
        hint = "I/O error: check the disk, then restart"
    return StoreError(f"{p}: write failed ({text}); {hint}.{after}", path=str(p), sqlite=text)
