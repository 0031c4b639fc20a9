"""The worker template: ``python -P -m qtd.workers.template FD MODULE...`` (a fork server).

Started once per agent by :class:`qtd.workers.pool.WorkerPool`. It imports
:mod:`qtd.workers.host` and the preload modules given as arguments, then serves requests on
the Unix socket it inherited as file descriptor ``FD`` (one JSON object per line; a read
may hold several lines, or part of one):

* ``{"spawn": {...}}`` (a :class:`~qtd.workers.protocol.Spawn`) with one file descriptor
  (``SCM_RIGHTS``): fork a worker that serves that socket (:func:`qtd.workers.host.serve`);
  answered ``{"spawned": pid}``. Forked
  from a process that already imported everything, workers share those pages copy-on-write:
  50 bots do not cost 50 interpreters.
* ``{"kill": pid, "sig": n}``: signal a worker of this template, only while it is not yet
  reaped (so a pid the kernel reused is never signalled).

Every worker that ends is reaped at once and reported ``{"exited": pid, "code": c}`` (the
exit status, or ``-signal``). The template ends when the agent closes the socket, and the
kernel ends it when the agent dies (``PR_SET_PDEATHSIG``); its workers die with it the same
way. Unlike ``multiprocessing``'s forkserver it never imports the agent's ``__main__``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import socket
import sys
from collections import deque
from typing import Final

import msgspec

from qtd.workers import host
from qtd.workers.protocol import Spawn

MAX_MESSAGE: Final = 256 * 1024
MAX_FDS: Final = 16


def _reap(ctl: socket.socket, live: set[int]) -> None:
    while live:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        live.discard(pid)
        code = os.waitstatus_to_exitcode(status)
        ctl.sendall(json.dumps({"exited": pid, "code": code}).encode() + b"\n")


def _spawn(ctl: socket.socket, wake: socket.socket, fd: int, how: Spawn) -> int:
    pid = os.fork()
    if pid == 0:  # the worker
        try:
            ctl.close()
            wake.close()
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            host.serve(socket.socket(fileno=fd), how)
        finally:
            os._exit(1)
    os.close(fd)
    return pid


def main(argv: list[str]) -> int:
    host.die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent decides when workers stop
    ctl = socket.socket(fileno=int(argv[0]))
    for module in argv[1:]:
        importlib.import_module(module)
    wake_r, wake_w = socket.socketpair()
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    signal.signal(signal.SIGCHLD, lambda *_: None)
    live: set[int] = set()
    buf, passed = b"", deque[int]()
    while True:
        ready, _, _ = select.select([ctl, wake_r], [], [])
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                wake_r.recv(4096)
            _reap(ctl, live)
        if ctl not in ready:
            continue
        data, fds, _, _ = socket.recv_fds(ctl, MAX_MESSAGE, MAX_FDS)
        if not data:
            return 0
        passed.extend(fds)
        buf += data
        while b"\n" in buf:  # one request per line: a read may hold several, or part of one
            line, buf = buf.split(b"\n", 1)
            _handle(line, ctl, wake_r, live, passed)
        _reap(ctl, live)


def _handle(line: bytes, ctl: socket.socket, wake: socket.socket, live: set[int],
            passed: deque[int]) -> None:
    try:
        req = json.loads(line)
        if "spawn" in req:
            how = msgspec.convert(req["spawn"], Spawn)
            if not passed:
                raise ValueError("spawn request without a socket")
            pid = _spawn(ctl, wake, passed.popleft(), how)
            live.add(pid)
            ctl.sendall(json.dumps({"spawned": pid}).encode() + b"\n")
        elif "kill" in req and int(req["kill"]) in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(req["kill"]), int(req["sig"]))
    except (ValueError, TypeError, KeyError, msgspec.ValidationError) as exc:
        print(f"qtd worker template: request refused: {exc}: {line[:200]!r}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
