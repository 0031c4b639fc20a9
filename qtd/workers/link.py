"""One strategy worker as the agent sees it: its socket, one request at a time, a deadline
per request, and what killed it.

The socket is read by an :class:`asyncio.Protocol` that hands each whole reply frame to the
request waiting for it (one wake-up per reply); a reply later than the deadline gets the
worker SIGTERM, then SIGKILL after ``kill_grace_s`` (through the template, which signals
only a worker it has not reaped yet).
"""

from __future__ import annotations

import asyncio
import signal
import socket
from typing import Final

import msgspec

from qtd.workers.forker import Template
from qtd.workers.protocol import (
    HEADER,
    MEMORY_EXIT,
    Reply,
    Request,
    WorkerLimits,
    frame,
    frame_length,
)

EXIT_WAIT_S: Final = 0.5
"""How long a request that lost its worker waits for the template's exit status."""


class HookOverrun(Exception):
    """A worker did not reply within the budget; it is being killed."""


class WorkerGone(Exception):
    """The worker hosting the bot is dead (the message says why)."""


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


class _Link(asyncio.Protocol):
    """The agent's end of one worker's socket: buffers what arrives and resolves the
    waiting request's future with each whole frame body."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[bytes] | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        waiter = self.waiter
        if waiter is None or waiter.done() or len(buf) < HEADER.size:
            return
        try:
            n = frame_length(bytes(buf[:HEADER.size]))
        except ValueError as exc:
            waiter.set_exception(exc)
            return
        end = HEADER.size + n
        if len(buf) >= end:
            body = bytes(buf[HEADER.size:end])
            del buf[:end]
            self.waiter = None
            waiter.set_result(body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionError("the worker closed its link")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)


def _expire(fut: asyncio.Future[bytes]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class Worker:
    """One worker process and the agent's end of its socket; one request at a time.

    Build it with :meth:`connect`.
    """

    def __init__(self, key: str, pid: int, template: Template, link: _Link,
                 limits: WorkerLimits) -> None:
        self.key, self.pid, self.limits = key, pid, limits
        self._template, self._link = template, link
        self._lock = asyncio.Lock()
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(Reply).decode
        self.bots: dict[str, str] = {}
        """attachment id (``bot#n``, unique per runner) → bot name."""
        self.sandbox = ""
        """The limits the worker achieved (:func:`qtd.workers.host.confine`)."""
        self.dead = ""

    @classmethod
    async def connect(cls, key: str, pid: int, template: Template, sock: socket.socket,
                      limits: WorkerLimits) -> Worker:
        """The worker ``pid`` serving the other end of ``sock``."""
        _, link = await asyncio.get_running_loop().create_unix_connection(_Link, sock=sock)
        return cls(key, pid, template, link, limits)

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
            link = self._link
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[bytes] = loop.create_future()
            deadline = loop.call_later(timeout_s, _expire, fut)
            try:
                if link.lost is not None or link.transport is None:
                    raise ConnectionError("the worker closed its link")
                link.waiter = fut
                link.transport.write(frame(self._encode(msg)))
                body = await fut
            except TimeoutError:
                self.kill(f"{what} did not return within {timeout_s} s")
                raise HookOverrun(f"did not return within {timeout_s} s (budget); "
                                  f"worker pid {self.pid} killed") from None
            except (ConnectionError, OSError, ValueError) as exc:
                why = await self._exit_reason()
                self.kill(why)
                raise WorkerGone(why) from exc
            finally:
                deadline.cancel()
                link.waiter = None
            return self._decode(body)

    async def _exit_reason(self) -> str:
        for _ in range(int(EXIT_WAIT_S / 0.01)):  # the template reports it right after the EOF
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
        self._close()

    def _close(self) -> None:
        if self._link.transport is not None:
            self._link.transport.close()

    async def stop(self) -> None:
        """Close the link (the worker exits on EOF), then make sure it is gone."""
        if not self.dead:
            self.dead = f"worker of {self.key!r} (pid {self.pid}) stopped"
            self._close()
        for _ in range(int(max(self.limits.kill_grace_s, 0.2) / 0.01)):
            if self.exitcode is not None:
                return
            await asyncio.sleep(0.01)
        self._template.signal(self.pid, signal.SIGKILL)
