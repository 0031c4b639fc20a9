"""Tamper evidence for the event store: a checksum per event and a hash chain over ``seq``.

Every row of ``events`` carries two columns computed from its payload when it is appended
(in memory, from the previous row's link: no extra SQLite round trip in the order path):

* ``crc`` — CRC-32 (:func:`zlib.crc32`) of the payload: a flipped bit or a torn record is
  named at its own seq even where the chain is also broken.
* ``chain`` — BLAKE2b with a 16-byte digest (:func:`hashlib.blake2b`) of
  ``previous row's chain || seq (8 bytes, big-endian) || payload``. The link before seq 1
  is the store's genesis, BLAKE2b of ``"qtd-events/" + incarnation``, so rows copied from
  another store do not verify either.

Why these: BLAKE2b is in the standard library and fast in CPython (about 0.7 µs for a
200-byte event, CRC-32 0.2 µs, on this project's CI-class machine; SHA-256 is as fast only
where the CPU has SHA extensions), and its 128-bit digest puts an accidental match, or a
forged record that keeps the same link, out of reach (2^-128 per attempt at a second
preimage). CRC-32 alone would be forgeable (it is linear), which is why the chain
hashes the payload itself, not the CRC. BLAKE2b takes a ``key`` argument, so turning the
chain into a MAC later is a one-argument change.

What it detects: corruption of any stored record, any edit of a record (with or without
its ``crc``) by someone who does not rewrite every later row's ``chain`` too, a deleted or
reordered row, a row moved from another store. What it does not: **an unkeyed chain does
not stop someone who rewrites a record and every later link** (anyone with write access to
the file can), nor the loss of the newest rows (a truncated tail is a valid shorter chain).
Both need an anchor held elsewhere: every event the agent published is in JetStream and at
the leader, which can recompute the chain from the stream; :attr:`EventStore.head` gives the
``(seq, chain)`` to publish as such an anchor.

Checked by :meth:`EventStore.open` (SQLite's ``PRAGMA quick_check`` of every page, then
the whole chain, in a thread on a read-only connection of its own: :func:`check_file`) and
by every replay (each row read against the one before it); a mismatch raises
:class:`~qtd.errors.StoreCorrupt` naming the file, the first bad seq and what mismatched.
"""

from __future__ import annotations

import hashlib
import sqlite3
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from qtd.errors import StoreCorrupt

DIGEST_SIZE: Final = 16
VERIFY_SQL: Final = "SELECT seq, payload, crc, chain FROM events WHERE seq > ? ORDER BY seq"

# (seq, payload, crc, chain) as read back for verification
StoredRow = tuple[int, bytes, int, bytes]


def genesis(incarnation: str) -> bytes:
    """The link before seq 1 of the store with this incarnation."""
    return hashlib.blake2b(f"qtd-events/{incarnation}".encode(), digest_size=DIGEST_SIZE).digest()


# an empty BLAKE2b state with the chain's parameters: copying it is cheaper than building
# one from keyword arguments (this runs once per stored event)
_EMPTY: Final = hashlib.blake2b(digest_size=DIGEST_SIZE)


def link(prev: bytes, seq: int, payload: bytes) -> bytes:
    """The ``chain`` of the row ``seq`` with ``payload`` after the row whose chain is ``prev``."""
    h = _EMPTY.copy()
    h.update(prev + seq.to_bytes(8, "big") + payload)
    return h.digest()


def checksum(payload: bytes) -> int:
    """The ``crc`` of a payload (CRC-32, unsigned)."""
    return zlib.crc32(payload)


def corrupt(path: Path, seq: int, what: str) -> StoreCorrupt:
    """The one-line refusal for a store that failed verification at ``seq``."""
    return StoreCorrupt(
        f"{path}: event store failed verification at seq {seq}: {what}. qtd will not trade "
        "on it or modify it: restore it from backup (the leader holds every published event) "
        "or move it aside",
        path=str(path), seq=seq, what=what,
    )


def unreadable(path: Path, after_seq: int, exc: sqlite3.Error) -> StoreCorrupt:
    """The refusal for a page SQLite cannot read (first seq not verified: ``after_seq + 1``)."""
    return corrupt(path, after_seq + 1, f"unreadable SQLite page ({exc})")


def damaged(path: Path, problems: Sequence[str]) -> StoreCorrupt:
    """The refusal for a file whose pages fail SQLite's ``quick_check`` (its report made one
    line: it may hold several lines per row)."""
    problems = [ln.strip() for text in problems for ln in text.splitlines()
                if ln.strip() and not ln.startswith("*** in database")]
    shown = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3
                                       else "")
    return StoreCorrupt(
        f"{path}: the SQLite file is damaged (quick_check: {shown}). qtd will not trade on it "
        "or modify it: restore it from backup (the leader holds every published event) or "
        "move it aside",
        path=str(path), seq=None, what=f"quick_check: {shown}",
    )


def verify(path: Path, rows: Iterable[StoredRow], prev_seq: int, prev: bytes) -> bytes:
    """Check rows read in seq order against each other and the link before them.

    Args:
        path: the store file (for the error).
        rows: ``(seq, payload, crc, chain)`` in ascending seq, the first one ``prev_seq + 1``.
        prev_seq, prev: seq and chain of the row before (0 and the genesis for seq 1).

    Returns:
        The chain of the last row (``prev`` when there is none).

    Raises:
        StoreCorrupt: the first row that is missing, fails its checksum or its link.
    """
    for seq, payload, crc, chain in rows:
        if seq != prev_seq + 1:
            raise missing(path, prev_seq + 1, seq)
        if checksum(payload) != crc:
            raise _crc_mismatch(path, seq, crc, payload)
        want = link(prev, seq, payload)
        if want != chain:
            raise corrupt(path, seq, f"hash chain mismatch (stored {bytes(chain).hex()}, "
                          f"computed {want.hex()}): this record was rewritten with its "
                          "checksum, or the store's incarnation was changed")
        prev_seq, prev = seq, chain
    return prev


def check_file(path: Path, incarnation: str, batch: int = 20_000) -> tuple[int, bytes]:
    """Check every page of a store file (``PRAGMA quick_check``), then its whole chain, on a
    read-only connection of its own (run it in a thread: it reads the file once or twice).

    Returns:
        ``(last seq, its chain)``; ``(0, genesis)`` for an empty store.

    Raises:
        StoreCorrupt: a damaged page, or a bad record (see :func:`verify`).
    """
    seq, prev = 0, genesis(incarnation)
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        try:
            problems = [str(r[0]) for r in con.execute("PRAGMA quick_check")]
        except sqlite3.DatabaseError as exc:
            problems = [str(exc)]
        if problems != ["ok"]:
            raise damaged(path, problems)
        cur = con.execute(VERIFY_SQL, (0,))
        while rows := cur.fetchmany(batch):
            prev = verify(path, rows, seq, prev)
            seq = rows[-1][0]
    except sqlite3.DatabaseError as exc:
        raise unreadable(path, seq, exc) from exc
    finally:
        con.close()
    return seq, prev


def seal(rows: Sequence[tuple[int, int, str, str, str, str | None, str | None, bytes]],
         prev: bytes) -> tuple[list[tuple[object, ...]], bytes]:
    """Rows from :func:`~qtd.eventlog.rows.event_row` (in seq order, after the row whose chain is
    ``prev``) with their ``crc`` and ``chain`` appended; returns them and the last chain."""
    out: list[tuple[object, ...]] = []
    append, copy, crc = out.append, _EMPTY.copy, zlib.crc32
    for row in rows:  # link() and checksum() inlined: once per stored event
        payload = row[7]
        h = copy()
        h.update(prev + row[0].to_bytes(8, "big") + payload)
        prev = h.digest()
        append((*row, crc(payload), prev))
    return out, prev


def checked_payloads(path: Path, rows: Iterable[tuple[int, bytes, int]]) -> list[bytes]:
    """The payloads of ``(seq, payload, crc)`` rows read out of order (a query), each checked
    against its checksum (the chain needs the rows before: :func:`verify`).

    Raises:
        StoreCorrupt: the first row whose payload fails its checksum.
    """
    out = []
    for seq, payload, crc in rows:
        if checksum(payload) != crc:
            raise _crc_mismatch(path, seq, crc, payload)
        out.append(payload)
    return out


def missing(path: Path, seq: int, found: int) -> StoreCorrupt:
    """The refusal for a gap: ``seq`` absent, ``found`` the next seq present."""
    return corrupt(path, seq, f"seq {seq} missing (the next row is seq {found}): a record "
                   "was deleted")


def _crc_mismatch(path: Path, seq: int, crc: int, payload: bytes) -> StoreCorrupt:
    return corrupt(path, seq, f"payload checksum mismatch (crc32 stored {crc:#010x}, computed "
                   f"{checksum(payload):#010x}): the record was altered or corrupted")
