"""Strategy worker processes, as the agent sees them (see :mod:`qtd.workers`).

:class:`WorkerPool` forks workers from one template process (:mod:`qtd.workers.template`,
preloaded with :mod:`qtd.workers.host` and the configured modules),
groups bots into workers (one per bot, or one per account: :class:`WorkerLimits.group`), and
hands each runner a :class:`RemoteBot`. Every request has a deadline: a reply later than the
hook budget gets the worker SIGTERM, then SIGKILL after ``kill_grace_s``, and the call raises
:class:`HookOverrun`; a worker that dies (memory limit, crash, killed) makes every call of
its bots raise :class:`WorkerGone` with the reason. The agent's event loop never waits on
strategy code for longer than one budget, and never runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from qtd.aio import TaskSet
from qtd.events import Fill
from qtd.feeds.bars import Bar, Trade
from qtd.proc import child_env, python_argv
from qtd.strategy import StrategyContext
from qtd.workers.protocol import (
    MEMORY_EXIT,
    Call,
    CtxState,
    Drop,
    Failure,
    Load,
    PositionState,
    Reply,
    Request,
    Spawn,
    StrategyRef,
    Swap,
    WorkerLimits,
    frame,
    frame_length,
)

log = logging.getLogger("qtd.agent.workers")
TEMPLATE_MODULE: Final = "qtd.workers.template"
SPAWN_TIMEOUT_S: Final = 30.0
# A strategy's numeric libraries run single-threaded in a worker: a worker is one bot's CPU
# (or one account's), and BLAS thread pools reserve address space the memory cap counts.
WORKER_ENV: Final = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                     "MKL_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
DROP_TIMEOUT_S: Final = 1.0
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


class HookOverrun(Exception):
    """A worker did not reply within the budget; it is being killed."""


class WorkerGone(Exception):
    """The worker hosting the bot is dead (the message says why)."""


class LoadFailed(Exception):
    """The worker could not import the admitted strategy (:attr:`failure` says why)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.error_type}: {failure.message}")
        self.failure = failure


class WorkerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One worker for status and benchmarks.

    Attributes:
        key: its group key (bot name, or account name).
        pid: its process id.
        bots: the bots it hosts.
        unique_bytes: memory only this process uses (USS: private clean + private dirty
            pages of ``/proc/PID/smaps_rollup``), bytes; 0 when unreadable.
        rss_bytes: resident set size, bytes (shared template pages included).
        sandbox: the limits it achieved (nice, memory cap, network isolation).
    """

    key: str
    pid: int
    bots: tuple[str, ...]
    unique_bytes: int
    rss_bytes: int
    sandbox: str = ""


def memory_of(pid: int) -> tuple[int, int]:
    """(unique bytes, resident bytes) of process ``pid`` from ``/proc/PID/smaps_rollup``
    (Linux ≥ 4.14; ``man 5 proc``); (0, 0) when unreadable."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB":
                    fields[name] = int(parts[0]) * 1024
    except OSError:
        return 0, 0
    return fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0), fields.get("Rss", 0)


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


class Worker:
    """One worker process and the agent's end of its socket; one request at a time."""

    def __init__(self, key: str, pid: int, template: Template, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, limits: WorkerLimits) -> None:
        self.key, self.pid, self.limits = key, pid, limits
        self._template = template
        self._reader, self._writer = reader, writer
        self._lock = asyncio.Lock()
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(Reply).decode
        self.bots: dict[str, str] = {}
        self.sandbox = ""
        """The limits the worker achieved (:func:`qtd.workers.host.confine`)."""
        """attachment id (``bot#n``, unique per runner) → bot name."""
        self.dead = ""

    @property
    def exitcode(self) -> int | None:
        """Its exit status once it ended (``-signal`` when killed), else None."""
        return self._template.exits.get(self.pid)

    async def request(self, msg: Request, timeout_s: float, what: str) -> Reply:
        """Send ``msg`` and return the reply.

        Raises:
            HookOverrun: no reply within ``timeout_s`` seconds (``what`` names the call in
                the kill reason); the worker is killed.
            WorkerGone: the worker is (or just became) dead.
        """
        async with self._lock:
            if self.dead:
                raise WorkerGone(self.dead)
            try:
                async with asyncio.timeout(timeout_s):
                    self._writer.write(frame(self._encode(msg)))
                    await self._writer.drain()
                    header = await self._reader.readexactly(4)
                    body = await self._reader.readexactly(frame_length(header))
            except TimeoutError:
                self.kill(f"{what} did not return within {timeout_s} s")
                raise HookOverrun(f"did not return within {timeout_s} s (budget); "
                                  f"worker pid {self.pid} killed") from None
            except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
                why = await self._exit_reason()
                self.kill(why)
                raise WorkerGone(why) from exc
            return self._decode(body)

    async def _exit_reason(self) -> str:
        for _ in range(50):  # the template reports the exit status right after the EOF
            code = self.exitcode
            if code is not None:
                break
            await asyncio.sleep(0.01)
        else:
            return f"worker pid {self.pid} closed its link"
        if code == MEMORY_EXIT:
            return (f"worker pid {self.pid} ran out of its memory limit "
                    f"(workers.memory_mb = {self.limits.memory_mb} MiB)")
        if code < 0:
            return f"worker pid {self.pid} was killed by {signal.Signals(-code).name}"
        return f"worker pid {self.pid} exited with status {code}"

    def kill(self, reason: str) -> None:
        """SIGTERM now, SIGKILL after ``kill_grace_s``; later calls raise :class:`WorkerGone`
        naming ``reason``."""
        if self.dead:
            return
        self.dead = f"worker of {self.key!r} (pid {self.pid}) stopped: {reason}"
        self._template.signal(self.pid, signal.SIGTERM)
        asyncio.get_running_loop().call_later(self.limits.kill_grace_s, self._template.signal,
                                              self.pid, signal.SIGKILL)
        self._writer.close()

    async def stop(self) -> None:
        """Close the link (the worker exits on EOF), then make sure it is gone."""
        if not self.dead:
            self.dead = f"worker of {self.key!r} (pid {self.pid}) stopped"
            self._writer.close()
        for _ in range(int(max(self.limits.kill_grace_s, 0.2) / 0.01)):
            if self.exitcode is not None:
                return
            await asyncio.sleep(0.01)
        self._template.signal(self.pid, signal.SIGKILL)


def _position_state(ctx: StrategyContext) -> tuple[PositionState, ...]:
    return tuple(PositionState(p.symbol, p.currency, p.qty, p.cost, p.realized, p.fees,
                               p.other_fees, p.last_price, p.fills)
                 for p in ctx.positions.values())


class RemoteBot:
    """One bot's strategy in a worker, as its runner calls it.

    Args:
        worker: the worker hosting it.
        bot: the bot (runner) name.
        handle: its attachment id in the worker (``bot#n``: a restarted bot's new runner
            never shares state with the old one, even in the same worker).
        budget_s: wall-time budget of one hook call, seconds.
        has_on_fill: whether the strategy overrides ``on_fill``.
    """

    def __init__(self, worker: Worker, bot: str, handle: str, budget_s: float,
                 has_on_fill: bool) -> None:
        self.worker, self.bot, self.handle, self.budget_s = worker, bot, handle, budget_s
        self.has_on_fill = has_on_fill
        self._sent: tuple[Any, ...] | None = None
        self._marks_sent = False

    async def call(self, hook: str, ctx: StrategyContext, now_ns: int, *,
                   bar: Bar | None = None, trade: Trade | None = None,
                   fill: Fill | None = None) -> Failure | None:
        """Run ``hook`` in the worker with the context state, then apply what the hook did
        to ``ctx`` (queued requests, in-flight quantities, targets).

        Returns:
            the hook's failure, or None.

        Raises:
            HookOverrun: the hook overran its budget (the worker is being killed).
            WorkerGone: the worker died.
        """
        positions = _position_state(ctx)
        key = (positions, tuple(ctx.inflight.items()), ctx.share, ctx.lot)
        state = None
        if key != self._sent or not self._marks_sent:
            state = CtxState(positions, dict(ctx.inflight), ctx.share, ctx.lot, dict(ctx.marks))
            self._marks_sent = True
        reply = await self.worker.request(
            Call(self.handle, hook, now_ns, state, bar, trade, fill), self.budget_s,
            f"{self.bot}: {hook}")
        for out in reply.outbox:
            ctx.outbox.append(out.order if out.order is not None else out.cancel)  # type: ignore[arg-type]
        if reply.inflight != ctx.inflight:
            ctx.inflight.clear()
            ctx.inflight.update(reply.inflight)
        if reply.targets:
            ctx.targets.update(reply.targets)
        self._sent = (positions, tuple(ctx.inflight.items()), ctx.share, ctx.lot)
        return reply.failure

    async def swap(self, params: dict[str, Any]) -> Failure | None:
        """New params for the strategy (hot reload); its failure to convert them, or None."""
        reply = await self.worker.request(Swap(self.handle, params), self.budget_s,
                                          f"{self.bot}: params swap")
        return reply.failure


class WorkerPool:
    """The agent's strategy workers (module docstring).

    Args:
        limits: grouping, memory cap, kill grace, import budget, preloaded modules.
        protected: paths no strategy may open (the agent's store, kill file, credentials).
    """

    def __init__(self, limits: WorkerLimits | None = None, protected: Sequence[str] = ()
                 ) -> None:
        self.limits = limits or WorkerLimits()
        self._how = Spawn(memory_mb=self.limits.memory_mb, nice=self.limits.nice,
                          protected=tuple(protected))
        self._workers: dict[str, Worker] = {}
        self._spawning: dict[str, asyncio.Lock] = {}
        self._attached = 0
        self.template = Template(self.limits.preload)

    def key_for(self, bot: str, account: str) -> str:
        return bot if self.limits.group == "bot" else f"account:{account}"

    async def attach(self, *, bot: str, account: str, venue: str, symbols: Sequence[str],
                     currency: str, ref: StrategyRef, budget_s: float) -> RemoteBot:
        """Load ``ref`` for ``bot`` in its group's worker (started if needed).

        Raises:
            LoadFailed: the worker could not import the admitted strategy.
            HookOverrun: the import overran ``import_budget_s``.
            WorkerGone: the worker died while importing.
            OSError: the worker process could not be started.
        """
        key = self.key_for(bot, account)
        async with self._spawning.setdefault(key, asyncio.Lock()):
            worker = self._workers.get(key)
            if worker is None or worker.dead:
                worker = self._workers[key] = await self._spawn(key)
        self._attached += 1
        handle = f"{bot}#{self._attached}"
        reply = await worker.request(
            Load(handle, bot, account, venue, tuple(symbols), currency, ref),
            self.limits.import_budget_s, f"{bot}: import of {ref.file}")
        if reply.failure is not None:
            raise LoadFailed(reply.failure)
        worker.bots[handle] = bot
        if not worker.sandbox:
            worker.sandbox = reply.sandbox
            level = logging.WARNING if "NO memory cap" in reply.sandbox else logging.INFO
            log.log(level, "strategy worker %s (pid %d): %s", key, worker.pid, reply.sandbox,
                    extra={"worker": key, "pid": worker.pid})
        return RemoteBot(worker, bot, handle, budget_s, reply.has_on_fill)

    async def detach(self, remote: RemoteBot) -> None:
        """The bot's runner ended: drop it from its worker; stop a worker left empty."""
        worker = remote.worker
        worker.bots.pop(remote.handle, None)
        if not worker.dead and worker.bots:
            with contextlib.suppress(HookOverrun, WorkerGone):
                await worker.request(Drop(remote.handle), DROP_TIMEOUT_S,
                                     f"{remote.bot}: drop")
            return
        await worker.stop()
        if self._workers.get(worker.key) is worker:
            del self._workers[worker.key]

    async def _spawn(self, key: str) -> Worker:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = await self.template.spawn(theirs, self._how)
        except BaseException:
            ours.close()
            raise
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        log.info("strategy worker for %s started: pid %d", key, pid,
                 extra={"worker": key, "pid": pid})
        return Worker(key, pid, self.template, reader, writer, self.limits)

    def workers(self) -> list[WorkerInfo]:
        """The live workers, with their memory (reads ``/proc``)."""
        out = []
        for w in self._workers.values():
            if not w.dead:
                uss, rss = memory_of(w.pid)
                out.append(WorkerInfo(key=w.key, pid=w.pid, bots=tuple(sorted(w.bots.values())),
                                      unique_bytes=uss, rss_bytes=rss, sandbox=w.sandbox))
        return out

    async def close(self) -> None:
        """Stop every worker (agent shutdown)."""
        workers, self._workers = list(self._workers.values()), {}
        await asyncio.gather(*(w.stop() for w in workers))
        await self.template.close()


__all__ = ["HookOverrun", "LoadFailed", "RemoteBot", "WorkerGone", "WorkerInfo",
           "WorkerPool"]
