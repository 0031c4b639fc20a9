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
import faulthandler
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Final

import msgspec

from qtd.admit.config import load_bot_config
from qtd.admit.problems import Problem
from qtd.admit.rules import Verdict, check_bot
from qtd.admit.sandbox import STALL_FILE, Limits, Reply, Request
from qtd.files import excerpt
from qtd.proc import term_with_parent
from qtd.workers.sandbox import REFUSED, Guard, isolate_network

REQUEST_MAX_BYTES: Final = 1024 * 1024


def _problems(guard: Guard) -> list[Problem]:
    return [Problem(file=v.file, field="<source>", value=f"{v.event} {v.detail}",
                    line=v.line, rule=f"{v.rule} (refused {v.event})")
            for v in guard.violations]


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
                for p in verdict.problems if REFUSED not in p.rule] + _problems(guard)
    verdict.problems = _memory_note(problems, req.limits)
    if verdict.problems:  # refused: no hashes
        verdict = Verdict(bot=verdict.bot, strategy=verdict.strategy,
                          strategy_file=verdict.strategy_file, problems=verdict.problems,
                          smoke=verdict.smoke)
    return verdict


def dead_man(stall_s: float) -> None:
    """Stop this process if the interpreter is held for ``stall_s`` seconds by one native
    call: a thread re-arms :func:`faulthandler.dump_traceback_later` (a C watchdog that needs
    no GIL) every quarter of it, and cannot while strategy code sits in C holding the GIL;
    the watchdog then writes every thread's frames to :data:`~qtd.admit.sandbox.STALL_FILE`
    in the scratch directory and exits (status 1)."""
    dump = open(STALL_FILE, "w")  # noqa: SIM115 - open for the life of the process

    def rearm() -> None:
        while True:
            faulthandler.dump_traceback_later(stall_s, exit=True, file=dump)
            time.sleep(stall_s / 4)

    threading.Thread(target=rearm, name="qtd-dead-man", daemon=True).start()


def main() -> None:
    term_with_parent()  # SIGTERM when the caller dies; a caller already gone: exit below
    reply = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # print() in strategy code goes to stderr, never into the reply
    req = msgspec.msgpack.decode(sys.stdin.buffer.read(REQUEST_MAX_BYTES), type=Request)
    if os.getppid() != req.parent:
        os._exit(1)
    isolation = isolate_network()
    apply_limits(req.limits)
    dead_man(req.limits.stall_s)
    guard = Guard()
    sys.addaudithook(guard)
    verdict = asyncio.run(_admit(req, guard))
    reply.write(msgspec.msgpack.encode(Reply(verdict=verdict, isolation=isolation)))
    reply.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
