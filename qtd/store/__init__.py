"""SQLite event store: the system of record of one qtd process.

One append-only table ``events``; ``seq`` is strictly increasing (assigned here, under one
lock, so there are no gaps on failure); the payload is the msgspec-msgpack encoding of the
event; ``ts`` (= ``ts_event``, UTC ns), ``kind``, ``bot``, ``symbol`` and
``client_order_id`` are columns for queries: ``ts`` and ``kind`` indexed on ``events``, the
other three through ``event_keys`` up to its watermark (:mod:`qtd.eventlog.rows`,
:meth:`EventStore.index_keys`). The outbox watermark (last seq
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

Tamper evidence (:mod:`qtd.eventlog.integrity`): every row carries a CRC-32 of its payload and a
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
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

import aiosqlite
import msgspec

from qtd.errors import StoreCorrupt, StoreError
from qtd.eventlog import integrity
from qtd.eventlog.rows import (
    ADD_KEYS,
    KEY_FIELDS,
    KEYS_SEQ,
    LOWER_KEYS_SEQ,
    ROWS_PER_INSERT,
    Row,
    event_row,
    insert_rows,
)
from qtd.eventlog.rows import INSERT as _INSERT
from qtd.eventlog.writer import BatchDone, WriteBatch, receive, send
from qtd.events import AnyEvent, Event, OrderIntent, decode, decode_many
from qtd.store import sqlitefile
from qtd.store.sqlitefile import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION", "BulkAppender", "EventStore",
           "Row", "StoreInfo", "StoreParts", "event_row", "integrity"]



class StoreInfo(msgspec.Struct, frozen=True):
    """What ``qtd events --info`` shows about a store file."""

    path: str
    node: str
    incarnation: str
    schema_version: int
    created_ns: int
    last_seq: int




class StoreParts(NamedTuple):
    """An opened store file: the arguments of :class:`EventStore`'s constructor."""

    db: aiosqlite.Connection
    path: Path
    node: str
    incarnation: str
    last_seq: int
    readonly: bool
    lock_fd: int | None
    created_ns: int
    head: bytes


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
        readonly: bool, lock_fd: int | None, created_ns: int = 0, head: bytes = b"",
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
        (:mod:`qtd.eventlog.integrity`; 3-6 s per million events on a busy 2-core machine, in a
        thread) before this returns.

        Raises:
            StoreCorrupt: a record fails its checksum or the hash chain, a seq is missing,
                or a page cannot be read (names the file, the first bad seq and what
                mismatched).
            StoreError: the file is not a qtd store (foreign, zero-length or corrupt), has a
                newer schema, belongs to another node, is locked by another writer, or cannot
                be opened (permissions, read-only disk). The file is never modified in these
                cases.
        """
        return cls(*await cls.open_parts(path, node=node, readonly=readonly))

    @staticmethod
    async def open_parts(
        path: str | os.PathLike[str], *, node: str | None = None, readonly: bool = False
    ) -> StoreParts:
        """What :meth:`open` builds a store from (a subclass with its own constructor
        arguments calls this, then its constructor). Checks and raises as :meth:`open`."""
        p = Path(path)
        if p.exists():
            sqlitefile.check_header(p)
        elif readonly:
            raise StoreError(f"{p}: no event store here (nothing to read)", path=str(p))
        lock_fd = None if readonly else sqlitefile.lock_writer(p)
        try:
            if not readonly and not p.exists():
                await sqlitefile.create(p, node)
            db = await sqlitefile.connect(p, readonly)
        except BaseException:
            sqlitefile.unlock(lock_fd, p)
            raise
        try:
            node_, inc, created = await sqlitefile.prepare(db, p, node, readonly)
            last, head = await asyncio.to_thread(integrity.check_file, p, inc)
        except BaseException:
            await db.close()
            sqlitefile.unlock(lock_fd, p)
            raise
        return StoreParts(db, p, node_, inc, last, readonly, lock_fd, created, head)

    async def close(self) -> None:
        """Bring ``event_keys`` up to date and checkpoint the WAL into the main file
        (writers only), then close."""
        try:
            if not self.readonly and self._failed is None:
                await self.index_keys(max_events=None)
                await self._db.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
        except (sqlite3.Error, StoreError):
            pass  # the WAL stays, and the keys after the watermark are read from events
        finally:
            await self._db.close()
            sqlitefile.unlock(self._lock_fd, self.path)
            self._lock_fd = None

    async def __aenter__(self) -> EventStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def head(self) -> tuple[int, str]:
        """``(last_seq, hex chain of that row)``: the anchor of everything stored so far (the
        genesis link for an empty store); see :mod:`qtd.eventlog.integrity`."""
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
                if sync and len(rows) <= ROWS_PER_INSERT:
                    # one multi-row INSERT: a statement is atomic and, outside a
                    # transaction, its own commit: one round trip to SQLite's thread
                    await db.execute_fetchall(insert_rows(len(rows)),
                                              [v for row in rows for v in row])
                else:
                    await self._transaction(rows, sync)
            except sqlite3.Error as exc:
                raise self._fail(exc) from exc
            except asyncio.CancelledError:
                await self._resync_after_cancel()
                raise
            self.last_seq, self._head = stored[-1].seq, head
        return stored  # type: ignore[return-value]

    async def _transaction(self, rows: list[tuple[object, ...]], sync: bool) -> None:
        """Insert sealed rows in one explicit transaction (rolled back on any error)."""
        async with self._begin(sync=sync) as db:
            await db.executemany(_INSERT, rows)

    @contextlib.asynccontextmanager
    async def _begin(self, *, sync: bool = True) -> AsyncIterator[aiosqlite.Connection]:
        """One explicit write transaction on the connection: committed when the block ends,
        rolled back if it raises. ``sync=False``: no fsync at its commit (``synchronous``
        is set back to FULL afterwards; if that fails, the store refuses further writes,
        so nothing is ever appended unsynced).

        A cancellation at any statement leaves the connection as it found it: SQLite's
        thread runs the statements in the order they were queued, and each one is queued
        before its await can be cancelled, so a BEGIN in flight is followed by the ROLLBACK
        and a ``synchronous=NORMAL`` by the FULL (a COMMIT in flight lands; the caller reads
        what did). The cancellation then goes on: it is never turned into an error.

        Raises:
            sqlite3.Error: from the block, BEGIN or COMMIT (rolled back).
            StoreError: ``synchronous=FULL`` could not be restored after a commit (after an
                error or a cancellation, that one goes on and the store refuses writes).
        """
        db, done = self._db, False
        try:
            if not sync:
                await db.execute_fetchall("PRAGMA synchronous=NORMAL")
            try:
                await db.execute_fetchall("BEGIN IMMEDIATE")
                yield db
                await db.execute_fetchall("COMMIT")
            except BaseException:
                await sqlitefile.rollback(db)
                raise
            done = True
        finally:
            if not sync:
                try:
                    await db.execute_fetchall("PRAGMA synchronous=FULL")
                except sqlite3.Error as exc:
                    failure = self._fail(exc)
                    if done:
                        raise failure from exc

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

    async def index_keys(self, max_events: int | None = 1_000) -> int:
        """Add the bot, symbol and client_order_id of the events after the ``event_keys``
        watermark to it, at most ``max_events`` of them (None: all), in one transaction
        of their own, and return how many events that was (0: up to date).

        The order path's commits leave those lookups out (see :mod:`qtd.eventlog.rows`);
        the agent calls this once its store is quiet (:mod:`qtd.agent.loops`), and
        :meth:`close` once more. Queries are complete either way: the events above the
        watermark are read from ``events``.

        Returns 0 without writing on a read-only store or one that refuses writes.

        Raises:
            StoreError: the write failed (nothing of it was written; events are not
                affected, and the store stays writable), or ``synchronous=FULL`` could
                not be restored after it (the store then refuses writes: nothing is ever
                appended unsynced).
        """
        async with self._write_lock:
            if self.readonly or self._failed is not None:
                return 0  # a store that refuses writes: nothing is added
            mark = await self._keys_seq()
            upto = self.last_seq if max_events is None else min(self.last_seq,
                                                                mark + max_events)
            if upto <= mark:
                return 0
            try:  # derived rows: no fsync of their own (a power loss takes the watermark
                # with them; the next commit with an fsync makes both durable)
                async with self._begin(sync=False) as db:
                    for statement in ADD_KEYS:
                        await db.execute_fetchall(statement, (upto,))
            except sqlite3.Error as exc:
                raise sqlitefile.write_error(self.path, exc, None) from exc
            return upto - mark

    async def checkpoint(self) -> int:
        """Copy the WAL's committed pages into the main file (a ``PASSIVE`` checkpoint: it
        does not wait for readers), under the write lock so no commit waits inside it; the
        agent calls it once the store is quiet (:mod:`qtd.agent.loops`) instead of SQLite
        running it inside a commit (:data:`~qtd.store.sqlitefile.WAL_AUTOCHECKPOINT_PAGES`).

        Returns:
            The WAL's frames now in the main file, counted since the WAL last started over
            (the third column of ``PRAGMA wal_checkpoint``: a second call with nothing new
            returns the same number); 0 on a read-only store or one that refuses writes.

        Raises:
            StoreError: the checkpoint failed (the WAL keeps every page; the events are not
                affected and the store stays writable).
        """
        async with self._write_lock:
            if self.readonly or self._failed is not None:
                return 0
            try:
                rows = await self._db.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:
                raise sqlitefile.write_error(self.path, exc, None) from exc
            return int(next(iter(rows))[2])

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
            base = await self._link_at(seq, f"{integrity.VERIFY_SQL} LIMIT ?")
            if base is None:
                raise StoreError(f"{self.path}: no event at seq {seq} to recover after",
                                 path=str(self.path), seq=seq)
            prev = base[1]
            rows, head = integrity.seal([event_row(e) for e in stored], prev)
            try:
                async with self._begin() as db:
                    await db.execute_fetchall("DELETE FROM events WHERE seq > ?", (seq,))
                    await db.execute_fetchall("DELETE FROM event_keys WHERE seq > ?", (seq,))
                    await db.execute_fetchall(LOWER_KEYS_SEQ, (seq,))
                    await db.execute_fetchall("UPDATE outbox SET seq = min(seq, ?)", (seq,))
                    await db.executemany(_INSERT, rows)
            except sqlite3.Error as exc:
                raise self._fail(exc) from exc
            self.last_seq, self._head = (stored[-1].seq, head) if stored else (seq, prev)
        return stored  # type: ignore[return-value]

    def bulk_appender(self) -> BulkAppender:
        """A :class:`BulkAppender` on this store (the caller becomes its only writer until
        the appender is closed)."""
        self._check_writable()
        return BulkAppender(self)

    def check_writable(self) -> None:
        """Raise unless the store takes writes (for :class:`BulkAppender`, whose writer
        commits the rows itself).

        Raises:
            StoreError: opened read-only, or a write failed since it was opened.
        """
        self._check_writable()

    def batch_committed(self, last_seq: int, head: bytes) -> None:
        """Record a batch committed by :class:`BulkAppender`'s writer: its last seq and the
        chain of that row."""
        self.last_seq, self._head = last_seq, head

    def write_failed(self, exc: sqlite3.Error | StoreError) -> StoreError:
        """Refuse further writes after ``exc`` (SQLite's, or a :class:`StoreError` already
        saying what happened); returns the error to raise."""
        if isinstance(exc, StoreError):
            self._failed = exc
            return exc
        return self._fail(exc)

    def clear_failure(self) -> None:
        """Take writes again after a failed write (the next write decides whether the
        failure is over; by default a failed store refuses writes until reopened)."""
        self._failed = None

    async def set_query_only(self, on: bool) -> None:
        """Switch SQLite's ``PRAGMA query_only`` on this connection (test-only read-only
        faults: a genuine ``SQLITE_READONLY`` on the next write)."""
        await self._db.execute_fetchall(f"PRAGMA query_only={'ON' if on else 'OFF'}")

    def _check_writable(self) -> None:
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only", path=str(self.path))
        if self._failed is not None:
            raise self._failed

    def _fail(self, exc: sqlite3.Error) -> StoreError:
        self._failed = sqlitefile.write_error(self.path, exc, self.last_seq)
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
        order = "DESC" if newest_first else "ASC"
        clauses, params = _where(bot, kind, symbol, client_order_id, since_ns, until_ns,
                                 after_seq)
        key = next(((KEY_FIELDS.index(f), v) for f, v in (
            ("client_order_id", client_order_id), ("bot", bot), ("symbol", symbol))
            if v is not None), None)  # the most selective one given
        if key is None:  # a scan in seq order (ts and kind are indexed on events)
            rows = await self._read(_select("events e", clauses, order, limit),
                                    params if limit is None else [*params, limit])
        else:  # through event_keys up to its watermark, then the rows above it
            rows = await self._keyed(key, clauses, params, order, limit)
        return [decode(p) for p in integrity.checked_payloads(self.path, rows)]

    async def _keyed(self, key: tuple[int, str], clauses: list[str], params: list[Any],
                     order: str, limit: int | None) -> list[Any]:
        """The rows matching ``clauses`` for a lookup by one of the key fields: those up to
        the ``event_keys`` watermark through it, those above it from ``events`` (see
        :mod:`qtd.eventlog.rows`). Rows are only ever added and the watermark only rises,
        so the two reads together miss nothing, whenever the watermark moves between them."""
        mark = await self._keys_seq()
        indexed = (_select("event_keys k CROSS JOIN events e ON e.seq = k.seq",
                           ["k.field = ?", "k.key = ?", "k.seq <= ?", *clauses], order, limit,
                           by="k.seq"), [*key, mark, *params])
        newest = (_select("events e", ["e.seq > ?", *clauses], order, limit), [mark, *params])
        out: list[Any] = []
        for sql, args in (indexed, newest) if order == "ASC" else (newest, indexed):
            want = None if limit is None else limit - len(out)
            if want == 0:
                break
            if want is not None:
                args = [*args, want]
            out.extend(await self._read(sql, args))
        return out

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
        found = await self.query(bot=bot, kind="OrderIntent", newest_first=True, limit=1)
        if not found:
            return 0
        intent = found[0]
        assert isinstance(intent, OrderIntent)
        return intent.cid_counter

    async def count(self) -> int:
        """Number of events stored."""
        rows = await self._read("SELECT count(*) FROM events")
        return int(rows[0][0])

    async def _keys_seq(self) -> int:
        """The ``event_keys`` watermark: every event up to it has its keys there."""
        rows = await self._read(KEYS_SEQ)
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return list(await self._db.execute_fetchall(sql, params))
        except sqlite3.DatabaseError as exc:
            raise sqlitefile.read_error(self.path, exc) from exc

    def _corrupt(self, exc: StoreCorrupt) -> StoreCorrupt:
        """Refuse writes (and the checkpoint at close) on a store found corrupt."""
        if not self.readonly:
            self._failed = exc
        return exc


# --- helpers -------------------------------------------------------------------------------


class BulkAppender:
    """Appends pre-sequenced batches of events through a writer process of its own
    (:mod:`qtd.eventlog.writer`), so the caller never waits on SQLite nor shares its
    interpreter with the sealing and binding of rows: :meth:`hand_over` sends a batch at
    once and returns a future.

    For a single high-volume writer (the backtest's write-behind front) that owns the store
    for a while: batches are committed strictly in the order handed over (one thread here
    sends them one at a time and reads each answer; the process holds its own ``sqlite3``
    connection to the store's file). Each batch is one transaction of multi-row ``INSERT``
    statements. Durability is :meth:`EventStore.append_many`'s: ``sync=False`` batches are
    not fsynced, a ``sync=True`` batch makes every earlier one durable.

    The store's ``last_seq`` and chain head follow the committed batches (read them after a
    batch's future is done). A failed batch is rolled back; the store refuses further writes
    (as after a failed :meth:`EventStore.append`), and this batch's and every later future
    raise :class:`~qtd.errors.StoreError`. The process is started here and stopped by
    :meth:`close` (or by the end of its stdin, should this process die first).

    Args:
        store: the open, writable store; nothing else may write to it until :meth:`close`.

    Attributes:
        pid: the writer process's pid.

    Raises:
        StoreError: the store does not take writes, or the writer could not be started.
    """

    def __init__(self, store: EventStore) -> None:
        store.check_writable()
        self.store = store
        self._next = store.last_seq + 1  # the seq the next batch must start at
        last, head = store.head
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "qtd.eventlog", str(store.path), str(last), head],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        except OSError as exc:
            raise StoreError(f"{store.path}: cannot start the store's writer process: {exc}",
                             path=str(store.path)) from exc
        self.pid = self._proc.pid
        self._pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"qtd-store-bulk-{store.node}")

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
        """Wait for the batches handed over, then stop the writer process and the thread."""
        await asyncio.get_running_loop().run_in_executor(self._pool, self._close)
        self._pool.shutdown(wait=True)

    def _close(self) -> None:  # in the appender's thread
        proc = self._proc
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def _write(self, events: list[Event], sync: bool) -> None:  # in the appender's thread
        store = self.store
        store.check_writable()
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            send(proc.stdin, WriteBatch(events, sync))  # type: ignore[arg-type]
            data = receive(proc.stdout)
        except (OSError, EOFError):
            data = None
        if data is None:  # its pipes closed: it is exiting, or gone
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            raise store.write_failed(StoreError(
                f"{store.path}: the store's writer process stopped (exit status "
                f"{proc.returncode}); nothing after seq {store.last_seq} was written",
                path=str(store.path)))
        done = msgspec.msgpack.decode(data, type=BatchDone)
        if done.error:
            raise store.write_failed(
                sqlite3.OperationalError(done.error) if done.sqlite
                else StoreError(f"{store.path}: the writer refused a batch: {done.error}",
                                path=str(store.path)))
        store.batch_committed(done.last_seq, done.head)


def _where(
    bot: str | None, kind: str | Iterable[str] | None, symbol: str | None,
    cid: str | None, since_ns: int | None, until_ns: int | None, after_seq: int,
) -> tuple[list[str], list[Any]]:
    """The filters of :meth:`EventStore.query` on ``events e``, and their parameters."""
    clauses: list[str] = []
    params: list[Any] = []
    for col, val in (("bot", bot), ("symbol", symbol), ("client_order_id", cid)):
        if val is not None:
            clauses.append(f"e.{col} = ?")
            params.append(val)
    if kind is not None:
        kinds = [kind] if isinstance(kind, str) else list(kind)
        clauses.append(f"e.kind IN ({', '.join('?' * len(kinds))})")
        params.extend(kinds)
    if since_ns is not None:
        clauses.append("e.ts >= ?")
        params.append(since_ns)
    if until_ns is not None:
        clauses.append("e.ts < ?")
        params.append(until_ns)
    if after_seq:
        clauses.append("e.seq > ?")
        params.append(after_seq)
    return clauses, params


def _select(source: str, clauses: list[str], order: str, limit: int | None, *,
            by: str = "e.seq") -> str:
    """``SELECT seq, payload, crc`` of ``events e`` (in ``source``) where every clause
    holds, ordered by ``by``; ``LIMIT ?`` (the last parameter) when ``limit`` is given."""
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    tail = "" if limit is None else " LIMIT ?"
    return f"SELECT e.seq, e.payload, e.crc FROM {source}{where} ORDER BY {by} {order}{tail}"


