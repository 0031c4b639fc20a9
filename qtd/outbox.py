"""Outbox: publish the event store to JetStream, in seq order, advancing the watermark on ack.

The SQLite store is the system of record; JetStream is transport. Each event goes to
``<prefix>.evt.<node>.<bot>.<kind>`` as msgspec JSON with header
``Nats-Msg-Id: <node>:<incarnation>:<seq>``. Publishes are pipelined with nats-py's
``publish_async`` (written to the connection in seq order, acks awaited together); the
watermark moves to the highest seq of the *contiguous* acked prefix only, so after a crash,
a timeout or a NATS outage the publisher re-sends from the watermark. A re-sent event inside
JetStream's duplicate window is dropped by the server (PubAck ``duplicate: true``); outside
it the leader is idempotent on ``(node, incarnation, seq)``.

Hot path: a writer that hands freshly stored events to :meth:`Outbox.offer` has them
published from memory (no store read); the outbox falls back to reading the store whenever
its in-memory tail does not continue the watermark (start-up, a gap, an overflow). The
watermark is cached (only the outbox writes it) and its durable write for one round overlaps
the next round's publishes; :meth:`Outbox.flush` returns only once it is written.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from typing import Final

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck

from qtd.bus import Subjects, msg_id
from qtd.errors import TemporaryError
from qtd.events import AnyEvent, to_json
from qtd.store import EventStore

log = logging.getLogger("qtd.outbox")

DEFAULT_BATCH: Final = 256
MAX_TAIL: Final = 100_000  # events kept in memory for publishing; beyond: read the store
_NATS_ERRORS = (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError, OSError)


class Outbox:
    """Publishes one store's events to the ``QTD_EVENTS`` stream.

    Args:
        store: the event store (its watermark ``"jetstream"`` records progress).
        js: a JetStream context.
        subjects: subject builder (prefix).
        batch: events per pipelined round.
        ack_timeout_s: seconds to wait for a round's acks before giving up (retry later).
    """

    WATERMARK = "jetstream"

    def __init__(
        self, store: EventStore, js: JetStreamContext, subjects: Subjects, *,
        batch: int = DEFAULT_BATCH, ack_timeout_s: float = 5.0,
    ) -> None:
        self.store = store
        self.js = js
        self.subjects = subjects
        self.batch = batch
        self.ack_timeout_s = ack_timeout_s
        self.published = 0
        self.duplicates = 0
        self._wake = asyncio.Event()
        self._tail: deque[AnyEvent] = deque()
        self._wm: int | None = None
        self._wm_write: asyncio.Future[None] | None = None

    def notify(self) -> None:
        """Wake :meth:`run` (call after appending events)."""
        self._wake.set()

    def offer(self, events: Sequence[AnyEvent]) -> None:
        """Hand just-stored events (with their seq, in seq order) to the outbox and wake it;
        they are published from memory instead of being read back from the store."""
        if len(self._tail) + len(events) > MAX_TAIL:
            self._tail.clear()  # too far behind (NATS away): the store has them all
        else:
            self._tail.extend(events)
        self._wake.set()

    async def pending(self) -> int:
        """Events stored but not yet acknowledged by JetStream."""
        return self.store.last_seq - await self.store.watermark(self.WATERMARK)

    async def flush(self) -> int:
        """Publish everything pending now.

        Returns:
            The number of events acknowledged in this call.

        Raises:
            TemporaryError: NATS or JetStream did not acknowledge (the watermark stays at the
                last contiguous ack; call again later).
        """
        done = 0
        try:
            while True:
                wm = await self._watermark()
                events = await self._next_batch(wm)
                if not events:
                    return done
                acked = await self._publish_round(events)
                if acked:
                    await self._commit(events[acked - 1].seq)
                    done += acked
                if acked < len(events):
                    raise TemporaryError(
                        f"outbox: JetStream acknowledged {acked} of {len(events)} events "
                        f"after seq {wm}; will re-send from seq {wm + acked + 1}",
                        acked=acked, watermark=wm + acked,
                    )
        finally:
            await self._committed()

    async def _watermark(self) -> int:
        if self._wm is None:
            self._wm = await self.store.watermark(self.WATERMARK)
        return self._wm

    async def _next_batch(self, wm: int) -> list[AnyEvent]:
        """Up to ``batch`` events after ``wm``: from the in-memory tail when it continues
        the watermark without a gap, else from the store."""
        tail = self._tail
        while tail and tail[0].seq <= wm:
            tail.popleft()
        out: list[AnyEvent] = []
        expect = wm + 1
        for ev in tail:
            if ev.seq != expect or len(out) == self.batch:
                break
            out.append(ev)
            expect += 1
        if out:
            return out
        return await self.store.query(after_seq=wm, limit=self.batch)

    async def _commit(self, seq: int) -> None:
        """Move the watermark to ``seq``: the durable write runs while the next round is
        published (one write in flight at a time, always forward)."""
        await self._committed()
        self._wm = seq
        self._wm_write = asyncio.ensure_future(self.store.set_watermark(seq, self.WATERMARK))

    async def _committed(self) -> None:
        pending, self._wm_write = self._wm_write, None
        if pending is not None:
            try:
                await pending
            except BaseException:
                self._wm = None  # re-read: the write may not have happened
                raise

    async def _publish_round(self, events: Sequence[AnyEvent]) -> int:
        """Publish in order; return the length of the acknowledged prefix."""
        store = self.store
        futures: list[asyncio.Future[PubAck]] = []
        try:
            for ev in events:
                subject = self.subjects.evt(ev.node, ev.bot, type(ev).__name__)
                headers = {"Nats-Msg-Id": msg_id(ev.node, store.incarnation, ev.seq)}
                futures.append(await self.js.publish_async(subject, to_json(ev), headers=headers))
        except _NATS_ERRORS as exc:
            log.warning("outbox publish failed after %d of %d: %r", len(futures), len(events), exc)
        if not futures:
            return 0
        done, _ = await asyncio.wait(futures, timeout=self.ack_timeout_s)
        acked = 0
        for fut in futures:
            if fut not in done or fut.cancelled() or fut.exception() is not None:
                break
            acked += 1
            if fut.result().duplicate:
                self.duplicates += 1
        for fut in futures[acked:]:
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: no "exception never retrieved" noise
            else:
                fut.cancel()
        self.published += acked
        return acked

    async def run(self, stop: asyncio.Event, *, idle_s: float = 0.25, max_backoff_s: float = 5.0
                  ) -> None:
        """Publish until ``stop`` is set; back off (doubling, capped) while NATS is away.

        Local trading never waits for this loop: events stay in the store until acked.
        """
        backoff = idle_s
        while not stop.is_set():
            try:
                await self.flush()
                backoff = idle_s
            except TemporaryError as exc:
                log.warning("%s (retry in %.2fs)", exc, backoff)
                backoff = min(backoff * 2, max_backoff_s)
            self._wake.clear()
            waiters = [asyncio.ensure_future(self._wake.wait()),
                       asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waiters, timeout=backoff, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
