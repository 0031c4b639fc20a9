"""Outbox: publish the event store to JetStream, in seq order, advancing the watermark on ack.

The SQLite store is the system of record; JetStream is transport. Each event goes to
``<prefix>.evt.<node>.<bot>.<kind>`` as msgspec JSON with header
``Nats-Msg-Id: <node>:<incarnation>:<seq>``. Publishes are pipelined with nats-py's
``publish_async`` (written to the connection in seq order, acks awaited together); the
watermark moves to the highest seq of the *contiguous* acked prefix only, so after a crash,
a timeout or a NATS outage the publisher re-sends from the watermark. A re-sent event inside
JetStream's duplicate window is dropped by the server (PubAck ``duplicate: true``); outside
it the leader is idempotent on ``(node, incarnation, seq)``.
"""

from __future__ import annotations

import asyncio
import logging
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

    def notify(self) -> None:
        """Wake :meth:`run` (call after appending events)."""
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
        while True:
            wm = await self.store.watermark(self.WATERMARK)
            events = await self.store.query(after_seq=wm, limit=self.batch)
            if not events:
                return done
            acked = await self._publish_round(events)
            if acked:
                await self.store.set_watermark(events[acked - 1].seq, self.WATERMARK)
                done += acked
            if acked < len(events):
                raise TemporaryError(
                    f"outbox: JetStream acknowledged {acked} of {len(events)} events after seq "
                    f"{wm}; will re-send from seq {wm + acked + 1}",
                    acked=acked, watermark=wm + acked,
                )

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
