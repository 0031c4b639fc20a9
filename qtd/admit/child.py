"""The admission child process: ``python -P -m qtd.admit.child`` (see :mod:`qtd.admit.sandbox`).

Reads one :class:`~qtd.admit.sandbox.Request` (msgpack) on stdin, then, before any
strategy code is imported: moves stdout aside (the reply goes to a private copy of it;
whatever strategy code prints goes to stderr), leaves the network (:func:`isolate_network`),
sets its rlimits (:func:`apply_limits`) and installs a :class:`Guard` audit hook (audit
hooks cannot be removed, PEP 578). Then it runs the admission rules and writes a
:class:`~qtd.admit.sandbox.Reply` (msgpack) and exits at once (``os._exit``: a strategy
thread that never ends does not keep it alive).
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import os
import resource
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import Any, Final

import msgspec

from qtd.admit.config import load_bot_config
from qtd.admit.problems import Problem
from qtd.admit.rules import Verdict, check_bot
from qtd.admit.sandbox import Limits, Reply, Request
from qtd.files import excerpt
from qtd.proc import term_with_parent

CLONE_NEWUSER: Final = 0x10000000  # linux/sched.h
CLONE_NEWNET: Final = 0x40000000
PR_SET_DUMPABLE: Final = 4  # linux/prctl.h
REQUEST_MAX_BYTES: Final = 1024 * 1024
REFUSED: Final = "admission sandbox: strategy code may not"
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
WHAT: Final = {**dict.fromkeys(NETWORK, "use the network"),
               **dict.fromkeys(LIMITS, "change its resource limits"),
               **dict.fromkeys(PROCESSES, "start processes"),
               **dict.fromkeys(NATIVE, "load native code with ctypes")}


class Violation(msgspec.Struct, frozen=True):
    """One refused audit event: what, with which arguments, where in strategy code."""

    event: str
    detail: str
    file: str
    line: int


class Guard:
    """Audit hook refusing :data:`NETWORK` (but AF_UNIX sockets: asyncio's own self-pipe),
    :data:`PROCESSES`, :data:`NATIVE` and :data:`LIMITS` events; each refusal is kept in
    :attr:`violations` (strategy code that catches the ``PermissionError`` is still
    refused) with the innermost frame of ``user_file`` when it is on the stack."""

    def __init__(self) -> None:
        self.user_file = ""
        self.violations: list[Violation] = []

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if event not in WHAT or (event == "socket.__new__" and args[1] == socket.AF_UNIX):
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

    def problems(self) -> list[Problem]:
        return [Problem(file=v.file, field="<source>", value=f"{v.event} {v.detail}",
                        line=v.line, rule=f"{REFUSED} {WHAT[v.event]} (refused {v.event})")
                for v in self.violations]


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


def apply_limits(limits: Limits) -> None:
    """Set RLIMIT_CPU (SIGXCPU at the limit), RLIMIT_AS, RLIMIT_FSIZE and no core files,
    soft and hard (so they cannot be raised again without privilege; the :class:`Guard`
    refuses ``setrlimit`` too), never above the hard limits this process inherited."""
    mib = 1024 * 1024
    for which, soft in ((resource.RLIMIT_CPU, limits.cpu_s),
                        (resource.RLIMIT_AS, limits.memory_mb * mib),
                        (resource.RLIMIT_FSIZE, limits.file_mb * mib),
                        (resource.RLIMIT_CORE, 0)):
        hard = resource.getrlimit(which)[1]
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        # CPU: SIGXCPU at the soft limit, SIGKILL a second later
        lid = soft + 1 if which == resource.RLIMIT_CPU else soft
        resource.setrlimit(which, (soft, lid if hard == resource.RLIM_INFINITY
                                   else min(lid, hard)))


def _memory_note(problems: list[Problem], limits: Limits) -> list[Problem]:
    note = f" (over the admission memory limit: {limits.memory_mb} MiB of address space)"
    return [msgspec.structs.replace(p, rule=p.rule + note) if "MemoryError" in p.rule else p
            for p in problems]


async def _admit(req: Request, guard: Guard) -> Verdict:
    path = Path(req.path)
    bot, _ = load_bot_config(path)  # plain TOML: no strategy code runs here
    guard.user_file = str(bot.strategy_path) if bot is not None else ""
    try:
        verdict = await check_bot(path, smoke=req.smoke)
    except Exception as exc:  # a defect, or a strategy that broke qtd's own objects
        verdict = Verdict(problems=[Problem(file=req.shown, field="<admission>", value=None,
                                            rule=f"admission failed: {type(exc).__name__}: "
                                                 f"{excerpt(str(exc))}")])
    # the PermissionError the Guard raised, as seen by the rules, is said better by the Guard
    problems = [msgspec.structs.replace(p, file=req.shown) if p.file == req.path else p
                for p in verdict.problems if REFUSED not in p.rule] + guard.problems()
    verdict.problems = _memory_note(problems, req.limits)
    if verdict.problems:  # refused: no hashes
        verdict = Verdict(bot=verdict.bot, strategy=verdict.strategy,
                          strategy_file=verdict.strategy_file, problems=verdict.problems,
                          smoke=verdict.smoke)
    return verdict


def main() -> None:
    term_with_parent()  # SIGTERM when the caller dies; a caller already gone: exit below
    reply = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # print() in strategy code goes to stderr, never into the reply
    req = msgspec.msgpack.decode(sys.stdin.buffer.read(REQUEST_MAX_BYTES), type=Request)
    if os.getppid() != req.parent:
        os._exit(1)
    isolation = isolate_network()
    apply_limits(req.limits)
    guard = Guard()
    sys.addaudithook(guard)
    verdict = asyncio.run(_admit(req, guard))
    reply.write(msgspec.msgpack.encode(Reply(verdict=verdict, isolation=isolation)))
    reply.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
