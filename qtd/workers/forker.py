"""The agent's end of the worker template (:mod:`qtd.workers.template`): start it with a
reduced environment, ask it to fork workers and to signal them, learn their exit statuses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
from collections import deque
from collections.abc import Sequence
from typing import Final

import msgspec

from qtd.aio import TaskSet
from qtd.proc import child_env, python_argv
from qtd.workers.protocol import Spawn

log = logging.getLogger("qtd.agent.workers")
TEMPLATE_MODULE: Final = "qtd.workers.template"
SPAWN_TIMEOUT_S: Final = 30.0
# A strategy's numeric libraries run single-threaded in a worker: a worker is one bot's CPU
# (or one account's), and BLAS thread pools reserve address space the memory cap counts.
WORKER_ENV: Final = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                     "MKL_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
KEPT_ENV: Final = frozenset({
    "PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM", "USER", "LOGNAME",
    "PYTHONPATH", "PYTHONSAFEPATH", "PYTHONHASHSEED", "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE", "VIRTUAL_ENV"})


def worker_env(env: dict[str, str]) -> dict[str, str]:
    """The environment of the template and its workers: ``env`` reduced to
    :data:`KEPT_ENV` and ``LC_*``, plus :data:`WORKER_ENV`. Broker keys
    (``credentials_env``), ``CREDENTIALS_DIRECTORY``, NATS secrets and every other variable
    of the agent stay out of strategy code's reach."""
    kept = {k: v for k, v in env.items() if k in KEPT_ENV or k.startswith("LC_")}
    return {**kept, **WORKER_ENV}



class Template:
    """The agent's end of the worker template (:mod:`qtd.workers.template`).

    Args:
        preload: modules the template imports before forking workers.
    """

    def __init__(self, preload: Sequence[str]) -> None:
        self.preload = tuple(preload)
        self._proc: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._stream: asyncio.StreamWriter | None = None
        self._spawned: deque[asyncio.Future[int]] = deque()
        self.exits: dict[int, int] = {}
        """pid → exit status (``-signal`` when killed) of the workers that ended."""
        self._tasks = TaskSet()
        self._lock = asyncio.Lock()

    async def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = worker_env(child_env())
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *python_argv(TEMPLATE_MODULE), str(theirs.fileno()), *self.preload,
                pass_fds=(theirs.fileno(),), env=env, start_new_session=True)
        finally:
            theirs.close()
        # the stream owns a duplicate for reading; ``ours`` sends requests with descriptors
        reader, self._stream = await asyncio.open_unix_connection(sock=ours.dup())
        self._sock = ours
        self._tasks.spawn(self._read(reader), "worker-template")
        log.info("strategy worker template started: pid %d, preloaded %s", self._proc.pid,
                 ", ".join(self.preload) or "-")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            msg = json.loads(line)
            if "spawned" in msg and self._spawned:
                self._spawned.popleft().set_result(int(msg["spawned"]))
            elif "exited" in msg:
                self.exits[int(msg["exited"])] = int(msg["code"])
        for fut in self._spawned:  # the template is gone: no spawn will be answered
            if not fut.done():
                fut.set_exception(OSError("the strategy worker template exited"))
        self._spawned.clear()

    async def spawn(self, sock: socket.socket, how: Spawn) -> int:
        """Fork a worker serving ``sock`` (closed here); returns its pid.

        Raises:
            OSError: the template could not be started or is gone.
        """
        async with self._lock:
            if self._sock is None or self._proc is None or self._proc.returncode is not None:
                await self._start()
            assert self._sock is not None
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._spawned.append(fut)
            try:
                msg = b'{"spawn":' + msgspec.json.encode(how) + b"}\n"
                socket.send_fds(self._sock, [msg], [sock.fileno()])
            finally:
                sock.close()
            return await asyncio.wait_for(fut, SPAWN_TIMEOUT_S)

    def signal(self, pid: int, sig: signal.Signals) -> None:
        """Send ``sig`` to worker ``pid`` if it has not ended."""
        if self._sock is not None and pid not in self.exits:
            with contextlib.suppress(OSError):
                self._sock.sendall(json.dumps({"kill": pid, "sig": int(sig)}).encode() + b"\n")

    async def close(self) -> None:
        """End the template (its workers die with it)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._proc is not None and self._proc.returncode is None:
            try:
                await asyncio.wait_for(self._proc.wait(), 2.0)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        await self._tasks.drain(1.0)
