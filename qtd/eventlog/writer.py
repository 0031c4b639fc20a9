"""The store's background writer process: commits batches of pre-sequenced events to one
store file, off the caller's interpreter.

:class:`~qtd.store.BulkAppender` (the backtest's write-behind store) starts it as
``python -m qtd.eventlog PATH LAST_SEQ HEAD_HEX`` and talks to it over its stdin and
stdout: each message is a 4-byte big-endian length and a msgpack :class:`WriteBatch`; each
batch is answered with a :class:`BatchDone`. The process reads each batch's rows straight
from the message (:func:`~qtd.eventlog.rows.payload_rows`: the events are not decoded), seals
them (CRC and hash chain, :mod:`qtd.eventlog.integrity`, continuing the chain from
``HEAD_HEX``), commits them in one transaction (:func:`~qtd.eventlog.rows.commit_rows`) and
answers with the new last seq and chain head, or with the error that rolled the batch back,
after which it exits (the store refuses further writes until it is reopened). It exits when
its stdin closes.

Why a process: SQLite releases the GIL while it runs, but sealing a batch and binding its
rows do not, and a thread doing them in the caller's interpreter takes the GIL from a
backtest that never sleeps (the two ping-pong on the interpreter's 5 ms switch interval).
"""

from __future__ import annotations

import signal
import sqlite3
import sys
from typing import IO, Final

import msgspec

from qtd.eventlog import integrity
from qtd.eventlog.rows import commit_rows, payload_rows
from qtd.events import AnyEvent


class WriteBatch(msgspec.Struct, frozen=True):
    """A batch for the writer: events carrying their seq, contiguous after the last one it
    committed; ``sync``: fsync the WAL at commit."""

    events: list[AnyEvent]
    sync: bool


class BatchDone(msgspec.Struct, frozen=True):
    """The writer's answer to one :class:`WriteBatch`: the last seq committed and the chain
    of that row (after the batch, or before it when it failed); ``error`` is empty on
    success, else what rolled the batch back, and ``sqlite`` says whether SQLite raised it
    (the disk, the file) rather than the batch itself."""

    last_seq: int
    head: bytes
    error: str = ""
    sqlite: bool = False


class _Sync(msgspec.Struct, frozen=True):
    sync: bool


LENGTH: Final = 4  # bytes of each message's length prefix (big-endian)


def send(out: IO[bytes], message: msgspec.Struct) -> None:
    """Write one length-prefixed msgpack message to ``out`` and flush it."""
    data = msgspec.msgpack.encode(message)
    out.write(len(data).to_bytes(LENGTH, "big"))
    out.write(data)
    out.flush()


def receive(inp: IO[bytes]) -> bytes | None:
    """Read one message written by :func:`send`; None at end of stream.

    Raises:
        EOFError: the stream ended inside a message.
    """
    head = inp.read(LENGTH)
    if not head:
        return None
    data = inp.read(int.from_bytes(head, "big")) if len(head) == LENGTH else b""
    if len(head) < LENGTH or len(data) < int.from_bytes(head, "big"):
        raise EOFError("the stream ended inside a message")
    return data


def serve(path: str, last_seq: int, head: bytes, inp: IO[bytes], out: IO[bytes]) -> int:
    """Commit the batches read from ``inp`` to the store at ``path`` (its last row is
    ``last_seq`` with chain ``head``), answering each on ``out``. Returns the exit status:
    0 at the end of ``inp``, 1 after a failed batch."""
    con = sqlite3.connect(path, isolation_level=None)
    sync_of = msgspec.msgpack.Decoder(_Sync)
    try:
        con.execute("PRAGMA busy_timeout=5000")
        while (data := receive(inp)) is not None:
            try:
                rows = payload_rows(data)
                if not rows or rows[0][0] != last_seq + 1 or (
                        rows[-1][0] - rows[0][0] + 1 != len(rows)):
                    raise ValueError(f"batch of {len(rows)} events does not follow seq "
                                     f"{last_seq} contiguously")
                sealed, new_head = integrity.seal(rows, head)
                commit_rows(con, sealed, sync=sync_of.decode(data).sync)
            except (sqlite3.Error, ValueError, msgspec.DecodeError) as exc:
                send(out, BatchDone(last_seq, head, error=str(exc),
                                    sqlite=isinstance(exc, sqlite3.Error)))
                return 1
            last_seq, head = rows[-1][0], new_head
            send(out, BatchDone(last_seq, head))
    finally:
        con.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m qtd.eventlog PATH LAST_SEQ HEAD_HEX`` (started by
    :class:`~qtd.store.BulkAppender`, not by hand)."""
    args = sys.argv[1:] if argv is None else argv
    # Ctrl-C reaches the whole process group: the caller stops this process by closing its
    # stdin once its own shutdown has committed what it holds
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        path, last, head = args[0], int(args[1]), bytes.fromhex(args[2])
        return serve(path, last, head, sys.stdin.buffer, sys.stdout.buffer)
    except (IndexError, ValueError) as exc:
        print(f"python -m qtd.eventlog: usage: PATH LAST_SEQ HEAD_HEX ({exc})", file=sys.stderr)
        return 2
    except (OSError, EOFError, sqlite3.Error) as exc:  # the parent went away, or the file
        print(f"python -m qtd.eventlog: {args[0]}: {exc}", file=sys.stderr)
        return 1
