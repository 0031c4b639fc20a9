"""A JetStream pull consumer that hands over whole batches (the leader's ingest transport).

nats-py's ``PullSubscription.fetch`` awaits every message through ``next_msg`` (a task and a
timer per message); on this project's 2-core reference machine that caps a pull consumer at
about a third of what the same connection delivers (``benchmarks/leader_ingest.py`` prints
both). :class:`BatchPuller` speaks the same JetStream wire protocol through one core-NATS
subscription whose callback appends to a list:

* a pull request is a publish to ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`` with body
  ``{"batch": n, "expires": ns}`` and the puller's inbox as reply subject; the server sends
  what is available at once, then waits up to ``expires`` for the rest;
* a request ends when ``n`` messages were delivered, or with a status message (no payload,
  header ``Status``): ``404`` no messages, ``408`` request expired, ``409`` conflict (e.g.
  consumer deleted, leadership change): see the JetStream pull consumer design (nats-server
  ADR-13, "Pull Subscribe internals").

One request is open at a time, for at most ``batch`` minus what is buffered, so the buffer
never holds more than about ``2 × batch`` messages. :meth:`BatchPuller.fetch` returns as soon
as anything is buffered: under load each call takes what piled up while the previous batch
was being committed (large batches), when quiet the first message is handed over at once
(low latency). Deliveries stay in order (one inbox). A request lost to a reconnect is given
up after ``expires`` + 1 s and re-sent; a delivery lost with it is caught by the ingestor's
delivery-sequence check (:class:`qtd.leader.ingest.DeliveryGap`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

_STATUS = "Status"
_DESCRIPTION = "Description"
_GUARD_S = 1.0


class PullRequest(msgspec.Struct, kw_only=True):
    """Body of a JetStream pull request (``expires`` in ns)."""

    batch: int
    expires: int


class PullError(nats.errors.Error):
    """The server refused a pull request for good (e.g. the consumer was deleted)."""


class BatchPuller:
    """Pull consumer ``consumer`` of ``stream`` (see the module docstring).

    Args:
        nc: a connected client.
        stream: stream name.
        consumer: durable consumer name (must exist; pull mode).
        api_prefix: JetStream API prefix.

    Attributes:
        requests: pull requests sent; ``expired``: requests given up client-side.
    """

    def __init__(self, nc: Client, stream: str, consumer: str,
                 api_prefix: str = "$JS.API") -> None:
        self.nc = nc
        self.subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.inbox = nc.new_inbox()
        self.requests = 0
        self.expired = 0
        self._buf: list[Msg] = []
        self._wake = asyncio.Event()
        self._open = 0  # messages still due on the open request (0: none open)
        self._open_until = 0.0
        self._error: PullError | None = None
        self._sub: Subscription | None = None

    async def start(self) -> BatchPuller:
        """Subscribe the inbox (call once, before :meth:`fetch`)."""
        self._sub = await self.nc.subscribe(self.inbox, cb=self._on_msg,
                                            pending_msgs_limit=-1, pending_bytes_limit=-1)
        return self

    async def unsubscribe(self) -> None:
        """Stop receiving (an open request's remaining deliveries are dropped: unacked,
        so JetStream redelivers them)."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.unsubscribe()

    async def _on_msg(self, msg: Msg) -> None:
        hdrs = msg.headers
        if hdrs is not None and _STATUS in hdrs and not msg.data:
            status = hdrs[_STATUS]
            if status == "100":
                return  # idle heartbeat (never requested here)
            self._open = 0  # 404/408/409: the request is over
            desc = hdrs.get(_DESCRIPTION, "")
            if status == "409" and "Deleted" in desc:
                self._error = PullError(f"pull consumer: {status} {desc}")
            elif status not in ("404", "408", "409"):
                self._error = PullError(f"pull request refused: {status} {desc}")
            self._wake.set()
            return
        self._buf.append(msg)
        if self._open:
            self._open -= 1
        self._wake.set()

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """Up to ``batch`` messages, in delivery order; waits up to ``timeout`` seconds for
        the first.

        Raises:
            TimeoutError: nothing arrived within ``timeout``.
            PullError: the server ended the request for good (consumer deleted, ...).
            nats.errors.Error: the request could not be sent.
        """
        deadline = time.monotonic() + timeout
        while not self._buf:
            self._raise_error()
            self._wake.clear()  # before any await: a delivery from now on sets it
            await self._request(batch, timeout)
            if self._buf:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, max(0.0, self._open_until -
                                                         time.monotonic()) + 0.001)):
                    await self._wake.wait()
        out, self._buf = self._buf[:batch], self._buf[batch:]
        if len(self._buf) < batch:
            await self._request(batch, timeout)  # keep the next batch coming meanwhile
        return out

    async def _request(self, batch: int, timeout: float) -> None:
        now = time.monotonic()
        if self._open and now < self._open_until:
            return
        if self._open:
            self.expired += 1  # no end of request seen (a reconnect?): give it up
        want = batch - len(self._buf)
        if want <= 0:
            return
        body = msgspec.json.encode(PullRequest(batch=want, expires=int(timeout * 1e9)))
        self._open, self._open_until = want, now + timeout + _GUARD_S
        self.requests += 1
        await self.nc.publish(self.subject, body, reply=self.inbox)

    def _raise_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err
