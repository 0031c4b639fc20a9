"""The SQLite file under an event store: header check, writer lock, atomic creation,
identity (``application_id``, node, incarnation), schema migrations, and SQLite errors
turned into :class:`~qtd.errors.StoreError` naming the file and what to do.

Used by :class:`qtd.store.EventStore` only; nothing here reads or writes events.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Final

import aiosqlite

from qtd import __version__
from qtd.errors import StoreError
from qtd.eventlog import integrity
from qtd.eventlog.rows import ADD_KEYS

SCHEMA_VERSION: Final = 3
APPLICATION_ID: Final = 0x71746431  # "qtd1" in the SQLite header (PRAGMA application_id)
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
WAL_AUTOCHECKPOINT_PAGES: Final = 16_384
"""The automatic WAL checkpoint threshold of an :class:`~qtd.store.EventStore` that writes,
pages (64 MiB of 4 KiB pages; SQLite's default is 1,000). SQLite runs that checkpoint inside
the commit that crosses it, and one of a 4 MB WAL put 5-10 ms into one market-open burst in
a hundred. The agent checkpoints once its store is quiet, at the latest every 5 s
(:meth:`qtd.store.EventStore.checkpoint`, :mod:`qtd.agent.loops`); this threshold is the
backstop for a store that is never quiet. Other writers (a sweep, ``qtd recover``, an
admission smoke run) checkpoint when they close the store. The backtest's writer process
(:mod:`qtd.eventlog.writer`) has its own connection and keeps SQLite's default."""

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
    # the checksum and hash chain (qtd.eventlog.integrity); rows already stored are chained by
    # _chain_existing in the same transaction
    2: (
        "ALTER TABLE events ADD COLUMN crc INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE events ADD COLUMN chain BLOB NOT NULL DEFAULT x''",
    ),
    # lookups by bot, symbol and client_order_id through event_keys, brought up to date
    # after the commits (qtd.eventlog.rows); the keys of the rows already stored are added by
    # _migrate in the same transaction
    3: (
        """CREATE TABLE event_keys (
            field INTEGER NOT NULL,
            key TEXT NOT NULL,
            seq INTEGER NOT NULL,
            PRIMARY KEY (field, key, seq)
        ) WITHOUT ROWID""",
        "DROP INDEX events_bot",
        "DROP INDEX events_symbol",
        "DROP INDEX events_cid",
        "INSERT INTO meta (key, value) VALUES ('keys_seq', '0')",
    ),
}



def check_header(p: Path) -> None:
    """Refuse a file that is unreadable, zero-length or not SQLite (read-only check)."""
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


def lock_writer(p: Path) -> int:
    """Take the single-writer lock ``<file>.lock`` (holding our pid); returns its fd.

    :func:`unlock` removes the lock file (a closed store leaves nothing beside it), so a
    lock taken on a file that was removed meanwhile is dropped and taken again on the path's
    current file: two writers can never hold locks on two different files of one path.
    """
    lock_path = p.with_name(p.name + ".lock")
    if not p.parent.is_dir():
        raise StoreError(f"{p}: directory {p.parent} does not exist; create it or fix the "
                         "configured path", path=str(p))
    while True:
        fd = _open_lock(p, lock_path)
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
        if _same_file(fd, lock_path):
            break
        os.close(fd)  # the holder removed it as we opened it: lock the current file
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _open_lock(p: Path, lock_path: Path) -> int:
    try:
        return os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(
            f"{p}: cannot create lock file {lock_path} ({exc.strerror}); "
            "is the disk read-only or full?",
            path=str(p),
        ) from exc


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


async def create(p: Path, node: str | None) -> None:
    """Create a new store at ``p`` atomically: built and checkpointed beside it, then renamed
    into place, so ``p`` is a whole store or absent (never a zero-length file). Called with
    the writer lock held."""
    if node is None:
        raise StoreError(f"{p}: a new store needs its node name", path=str(p))
    tmp = p.with_name(p.name + ".new")
    for leftover in (tmp, *(tmp.with_name(tmp.name + x) for x in ("-wal", "-shm"))):
        leftover.unlink(missing_ok=True)  # an earlier creation that died half-way
    db = await connect(tmp, readonly=False)
    try:
        await prepare(db, tmp, node, readonly=False, new=True)
        await db.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        raise write_error(tmp, exc, None) from exc
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


def read_error(p: Path, exc: sqlite3.DatabaseError) -> StoreError:
    """The error for a read SQLite could not do (corrupt page, I/O error)."""
    return StoreError(f"{p}: cannot read the event store ({exc}); the file may be corrupt: "
                      "restore it from backup or move it aside; qtd will not modify it",
                      path=str(p))


def unlock(fd: int | None, p: Path | None = None) -> None:
    """Release :func:`lock_writer`'s lock (``None``: nothing held); given the store's path
    ``p``, first remove its ``<file>.lock`` (while still holding it, and only if it is
    still the file we locked)."""
    if fd is None:
        return
    if p is not None:
        lock_path = p.with_name(p.name + ".lock")
        if _same_file(fd, lock_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock_path)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


async def connect(p: Path, readonly: bool) -> aiosqlite.Connection:
    """An aiosqlite connection to the file, read-only or read-write-create."""
    mode = "ro" if readonly else "rwc"
    try:
        db = await aiosqlite.connect(f"file:{p}?mode={mode}", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(
            f"{p}: cannot open ({exc}); check the directory exists and is writable",
            path=str(p),
        ) from exc
    return db


async def prepare(
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
            await db.execute_fetchall(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            if version < SCHEMA_VERSION:
                await _migrate(db, p, version, node)
        elif version < SCHEMA_VERSION:
            raise StoreError(
                f"{p}: schema version {version} needs a migration; open it once read-write",
                path=str(p),
            )
        meta = {str(k): str(v) for k, v in await db.execute_fetchall("SELECT key, value FROM meta")}
    except sqlite3.DatabaseError as exc:
        raise write_error(p, exc, None) from exc
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
        if 1 <= version < 3:
            last = await _scalar(db, "SELECT coalesce(max(seq), 0) FROM events")
            for statement in ADD_KEYS:
                await db.execute_fetchall(statement, (last,))
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
        await rollback(db)
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


async def rollback(db: aiosqlite.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already."""
    with contextlib.suppress(sqlite3.Error):  # no transaction open: SQLite rolled back itself
        await db.execute_fetchall("ROLLBACK")


async def _scalar(db: aiosqlite.Connection, sql: str) -> Any:
    rows = list(await db.execute_fetchall(sql))
    return rows[0][0] if rows else None


def write_error(p: Path, exc: sqlite3.Error, last_seq: int | None) -> StoreError:
    """The error for a failed write, with what the operator must do."""
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
