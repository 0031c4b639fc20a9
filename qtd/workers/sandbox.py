"""The rules strategy code runs under, wherever it runs: admission's child process
(:mod:`qtd.admit.child`) and every strategy worker (:mod:`qtd.workers.host`).

* :func:`isolate_network` — leave the host's network (a new, empty network namespace);
* :class:`Guard` — a ``sys.addaudithook`` hook (PEP 578: it cannot be removed) refusing
  network use, starting processes, loading native code with ctypes, changing resource limits
  and, in a worker, opening any path under the agent's protected directories (its state
  directory with the event store, its credentials, its kill file). Each refusal raises
  ``PermissionError`` and is kept in :attr:`Guard.violations`, so strategy code that catches
  the error is refused all the same.

Audit hooks see what Python code does; C extension code can bypass them. They keep an
honest operator's mistake (a strategy opening the store, a stray HTTP call) from reaching
the controls, alongside the process boundary, the network namespace and the rlimits.
"""

from __future__ import annotations

import ctypes
import inspect
import os
import socket
from collections.abc import Sequence
from types import FrameType
from typing import Any, Final

import msgspec

from qtd.files import excerpt

CLONE_NEWUSER: Final = 0x10000000  # linux/sched.h
CLONE_NEWNET: Final = 0x40000000
PR_SET_DUMPABLE: Final = 4  # linux/prctl.h
REFUSED: Final = "sandbox: strategy code may not"
MAX_VIOLATIONS: Final = 20  # reported; a loop of refused calls is refused all the same

# Audit events (https://docs.python.org/3/library/audit_events.html) refused in the child.
NETWORK: Final = frozenset({
    "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
    "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo", "socket.sendto",
    "socket.sendmsg"})
PROCESSES: Final = frozenset({
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
    "os.forkpty", "os.startfile"})
NATIVE: Final = frozenset({"ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle"})
LIMITS: Final = frozenset({"resource.setrlimit", "resource.prlimit"})
OPEN: Final = "open"
WHAT: Final = {**dict.fromkeys(NETWORK, "use the network"),
               OPEN: "open the agent's own files",
               **dict.fromkeys(LIMITS, "change its resource limits"),
               **dict.fromkeys(PROCESSES, "start processes"),
               **dict.fromkeys(NATIVE, "load native code with ctypes")}


class Violation(msgspec.Struct, frozen=True):
    """One refused audit event: what, with which arguments, where in strategy code."""

    event: str
    detail: str
    file: str
    line: int

    @property
    def rule(self) -> str:
        """What was refused, e.g. ``"sandbox: strategy code may not use the network"``."""
        return f"{REFUSED} {WHAT[self.event]}"


class Guard:
    """Audit hook refusing :data:`NETWORK` (but AF_UNIX sockets: asyncio's own self-pipe),
    :data:`PROCESSES`, :data:`NATIVE` and :data:`LIMITS` events, and opening a path under
    one of ``protected``; each refusal is kept in :attr:`violations` (strategy code that
    catches the ``PermissionError`` is still refused) with the innermost frame of
    ``user_file`` when it is on the stack.

    Args:
        protected: directories or files no strategy may open (resolved to real paths).
    """

    def __init__(self, protected: Sequence[str] = ()) -> None:
        self.user_file = ""
        self.violations: list[Violation] = []
        self._protected = tuple(os.path.realpath(p) for p in protected if p)

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if event == OPEN:
            if not self._protected or not isinstance(args[0], str | bytes):
                return
            path = os.path.realpath(os.fsdecode(args[0]))
            if not any(path == p or path.startswith(p + os.sep) for p in self._protected):
                return
        elif event not in WHAT or (event == "socket.__new__" and args[1] == socket.AF_UNIX):
            return
        file, line = self._where()
        shown = [a for a in args if not isinstance(a, socket.socket)]
        detail = excerpt(", ".join(repr(a) for a in shown), 120)
        if len(self.violations) < MAX_VIOLATIONS:
            self.violations.append(Violation(event, detail, file, line))
        raise PermissionError(f"{REFUSED} {WHAT[event]} ({event})")

    def _where(self) -> tuple[str, int]:
        here = inspect.currentframe()  # _where <- audit hook <- the audited call
        first = here.f_back.f_back if here is not None and here.f_back is not None else None
        frame: FrameType | None = first
        while frame is not None:
            if frame.f_code.co_filename == self.user_file:
                return self.user_file, frame.f_lineno
            frame = frame.f_back
        return (first.f_code.co_filename, first.f_lineno) if first else ("<unknown>", 0)

def isolate_network() -> str:
    """Leave the host's network: a new, empty network namespace (``unshare(2)``;
    CLONE_NEWNET alone needs CAP_SYS_ADMIN, else with a new user namespace mapping our own
    uid/gid). Must run while single-threaded. Returns what was achieved."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) == 0:
        return "network namespace"
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        libc.prctl(PR_SET_DUMPABLE, 1)  # /proc/self/*_map writable by us (after a setuid too)
        try:  # unmapped, we could create no file at all: fail, clearly
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                               ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        except OSError as exc:
            raise RuntimeError(f"new user namespace, but cannot map uid/gid: {exc}") from exc
        return "user and network namespace"
    return f"audit hook only (unshare: {os.strerror(ctypes.get_errno())})"


