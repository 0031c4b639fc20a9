"""Run admission in a child process: strategy code never runs in the caller.

Admission imports strategy files and backtests them, so it runs strategy code — module
bodies and hooks. :func:`admit_in_child` runs the rules (:func:`qtd.admit.rules.check_bot`)
in a fresh interpreter, ``python -P -m qtd.admit.child`` (:mod:`qtd.admit.child`), which

- works in a scratch directory (a new temporary directory, removed afterwards);
- has no network: its own empty network namespace where the kernel allows it (unshare), and
  always an audit hook, installed before any strategy code is imported, that refuses and
  reports sockets (connect, bind, name lookups, sendto), starting processes and loading
  native code with ctypes (:class:`qtd.admit.child.Guard`);
- runs under rlimits (CPU seconds, address space, file size, no core files) and a wall-time
  limit, after which it is killed (:class:`Limits`);
- sends back a :class:`Reply` (msgpack) on a pipe, read with a size cap; what strategy code
  prints goes to the child's stderr, of which only the tail is kept for errors.

The caller awaits the child without blocking its event loop. Every way the child can fail
(killed at a limit, crashed, undecodable reply) is a :class:`~qtd.admit.Problem` naming the
bot config and the limit, never an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
from pathlib import Path
from typing import Final

import msgspec

from qtd.admit.problems import Problem
from qtd.admit.rules import Verdict
from qtd.files import excerpt
from qtd.proc import child_env, python_argv

CHILD_MODULE: Final = "qtd.admit.child"
REPLY_MAX_BYTES: Final = 16 * 1024 * 1024
STDERR_TAIL_BYTES: Final = 4096
STALL_FILE: Final = "stall.txt"
"""Where the child's dead-man switch writes the stuck frames, in its scratch directory."""
STALL_MAX_BYTES: Final = 64 * 1024


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Limits of one admission child.

    Attributes:
        wall_s: wall time, seconds, from start to reply; then it is killed (SIGKILL).
        cpu_s: CPU time, seconds (RLIMIT_CPU: SIGXCPU, then SIGKILL a second later).
        memory_mb: address space, MiB (RLIMIT_AS: allocations beyond fail, MemoryError).
        file_mb: largest file it may write, MiB (RLIMIT_FSIZE).
        stall_s: longest one native call may hold the interpreter, seconds — a strategy's
            module body or smoke hook stuck in C code (``sum(range(3 * 10**9))``), which the
            hook budget cannot interrupt: past it the child dumps where it is stuck and
            exits (:func:`qtd.admit.child.dead_man`), and the problem names the line.
    """

    wall_s: float = 120.0
    cpu_s: int = 60
    memory_mb: int = 2048
    file_mb: int = 512
    stall_s: float = 5.0


class Request(msgspec.Struct, frozen=True, kw_only=True):
    """What the caller (pid ``parent``) asks the child: admit ``path`` (absolute), shown as
    ``shown``."""

    path: str
    shown: str
    smoke: bool
    limits: Limits
    parent: int


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """The child's answer: the verdict and the network isolation it achieved
    (e.g. ``"network namespace"``, or ``"audit hook only (unshare: Operation not
    permitted)"``)."""

    verdict: Verdict
    isolation: str


def _refused(shown: str, rule: str, value: object = None) -> Reply:
    return Reply(verdict=Verdict(problems=[Problem(file=shown, field="<admission>",
                                                   value=value, rule=rule)]),
                 isolation="")


async def _read_capped(stream: asyncio.StreamReader, limit: int) -> bytes:
    out = bytearray()
    while chunk := await stream.read(65536):
        if len(out) <= limit:
            out += chunk
    return bytes(out)


async def _read_tail(stream: asyncio.StreamReader, keep: int) -> bytes:
    tail = b""
    while chunk := await stream.read(65536):
        tail = (tail + chunk)[-keep:]
    return tail


async def _talk(proc: asyncio.subprocess.Process, request: bytes) -> tuple[bytes, bytes]:
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write(request)
    with contextlib.suppress(ConnectionError):
        await proc.stdin.drain()
    proc.stdin.close()
    out, err, _ = await asyncio.gather(_read_capped(proc.stdout, REPLY_MAX_BYTES),
                                       _read_tail(proc.stderr, STDERR_TAIL_BYTES), proc.wait())
    return out, err


def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the child's process group (its own session: the child and anything it
    started), while the child still runs, so the group id is still ours."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def _stuck_at(lines: list[str]) -> str | None:
    """Where the child's dead-man switch found the interpreter stuck (faulthandler's dump:
    ``Timeout (h:mm:ss)!`` then frames, most recent first): the innermost frame outside
    qtd and the standard library, else the innermost one; None without a dump."""
    start = next((i for i, line in enumerate(lines) if line.startswith("Timeout (")), None)
    if start is None:
        return None
    frames = [line.strip() for line in lines[start:] if line.strip().startswith("File ")]
    own = [f for f in frames if f"{os.sep}qtd{os.sep}" not in f and "/lib/python" not in f]
    return excerpt((own or frames or ["an unknown place"])[0], 200)


def _outcome(shown: str, limits: Limits, code: int | None, out: bytes, err: bytes,
             stall: str = "") -> Reply:
    lines = err.decode("utf-8", "replace").strip().splitlines()
    said = excerpt(lines[-1]) if lines else None  # the last line: the error, if it raised
    stuck = _stuck_at(stall.splitlines()) if code == 1 else None
    if stuck is not None:
        return _refused(shown, f"strategy code held the interpreter for over {limits.stall_s} s "
                        "in one native call, which no hook budget can interrupt, and "
                        f"admission was stopped; stuck at {stuck}", said)
    if code == -signal.SIGXCPU:
        return _refused(shown, f"admission used more than the CPU limit ({limits.cpu_s} s) "
                        "and was killed: a strategy module body or hook that never ends?", said)
    if code is not None and code < 0:
        return _refused(shown, f"admission process was killed by {signal.Signals(-code).name}"
                        " (by strategy code, or out of memory)", said)
    if code != 0 or not out:
        return _refused(shown, f"admission process failed (exit status {code}); its last "
                        "output is the value", said)
    if len(out) > REPLY_MAX_BYTES:
        return _refused(shown, f"admission reply over {REPLY_MAX_BYTES:,} bytes")
    try:
        return msgspec.msgpack.decode(out, type=Reply)
    except msgspec.DecodeError as exc:
        return _refused(shown, f"admission reply undecodable: {exc}", said)


async def admit_in_child(path: Path, *, smoke: bool = True, limits: Limits | None = None
                         ) -> Reply:
    """Admit bot config ``path`` in a child process (module docstring).

    Args:
        path: the bot config, as given (problems name it so).
        smoke: run the smoke backtest.
        limits: the child's limits (default :class:`Limits`).

    Returns:
        The child's :class:`Reply`; a child that overran a limit, crashed or answered
        nonsense gives a reply with one problem saying so.
    """
    limits = limits or Limits()
    request = msgspec.msgpack.encode(Request(path=str(path.absolute()), shown=str(path),
                                             smoke=smoke, limits=limits, parent=os.getpid()))
    with tempfile.TemporaryDirectory(prefix="qtd-admit-", ignore_cleanup_errors=True) as tmp:
        try:  # no preexec_fn: a busy agent's loop is not stalled by fork (vfork is used)
            proc = await asyncio.create_subprocess_exec(
                *python_argv(CHILD_MODULE), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp,
                env=child_env(), start_new_session=True)
        except OSError as exc:
            return _refused(str(path), f"cannot start the admission process: {exc}")
        try:
            out, err = await asyncio.wait_for(_talk(proc, request), limits.wall_s)
        except TimeoutError:
            return _refused(str(path), f"admission did not finish within the wall-time limit "
                            f"({limits.wall_s} s) and was killed")
        finally:
            _kill(proc)
            await proc.wait()
        stall = _read_stall(Path(tmp) / STALL_FILE)
    return _outcome(str(path), limits, proc.returncode, out, err, stall)


def _read_stall(path: Path) -> str:
    try:
        with path.open("rb") as f:
            return f.read(STALL_MAX_BYTES).decode("utf-8", "replace")
    except OSError:
        return ""
