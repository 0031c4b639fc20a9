"""Ingest: a durable JetStream pull consumer of ``QTD_EVENTS`` into fleet.db and the view.

One loop: fetch up to ``batch`` messages → decode → :meth:`FleetDB.ingest` (dedupe on origin,
insert, move the marks and the stream sequence, one commit) → apply the new events to the
fleet view and the caps → ack. The consumer uses ``AckPolicy.ALL``: acking the batch's last
message acks the batch, and only after the commit, so a crash anywhere before the ack makes
JetStream deliver the batch again and fleet.db drops what it already has.

**Restart.** The durable consumer resumes after its ack floor. If it has deliveries that
were never acked (the leader died between fetch and ack) it is recreated to start right after
the ack floor, so the redelivery comes first and in order rather than after ``AckWait``. If
the consumer is gone it is created to start after the stream sequence recorded in fleet.db.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from qtd.bus import EVENTS_STREAM, Subjects
from qtd.events import AnyEvent, from_json
from qtd.leader.config import IngestConfig
from qtd.leader.fleetdb import FleetDB, Origin, parse_msg_id

log = logging.getLogger("qtd.leader.ingest")
_RETRYABLE = (nats.errors.TimeoutError, nats.errors.ConnectionClosedError,
              nats.js.errors.Error, nats.errors.Error, asyncio.TimeoutError, OSError)


async def open_consumer(js: JetStreamContext, subjects: Subjects, cfg: IngestConfig,
                        db_stream_seq: int, stream: str = EVENTS_STREAM
                        ) -> JetStreamContext.PullSubscription:
    """Bind (creating or recreating as the module docstring says) the durable consumer."""
    start = db_stream_seq + 1
    try:
        info = await js.consumer_info(stream, cfg.durable)
    except nats.js.errors.NotFoundError:
        info = None
    if info is not None and info.num_ack_pending:
        start = (info.ack_floor.stream_seq if info.ack_floor else 0) + 1
        log.warning("ingest.recreate_consumer durable=%s unacked=%d start_seq=%d",
                    cfg.durable, info.num_ack_pending, start)
        await js.delete_consumer(stream, cfg.durable)
        info = None
    if info is None:
        config = ConsumerConfig(
            durable_name=cfg.durable, ack_policy=AckPolicy.ALL, ack_wait=cfg.ack_wait_s,
            max_ack_pending=cfg.max_ack_pending, filter_subject=subjects.evt_all,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start > 1 else DeliverPolicy.ALL,
            opt_start_seq=start if start > 1 else None, max_deliver=-1)
        await js.add_consumer(stream, config)
    return await js.pull_subscribe_bind(durable=cfg.durable, stream=stream,
                                        pending_msgs_limit=4 * cfg.batch)


def decode_batch(msgs: list[Msg]) -> tuple[list[tuple[Origin, AnyEvent]], int]:
    """``(origin, event)`` of each decodable message and the batch's last stream sequence.
    An undecodable message is logged and skipped (it would block the stream forever)."""
    items: list[tuple[Origin, AnyEvent]] = []
    for m in msgs:
        try:
            ev = from_json(m.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("ingest.bad_event subject=%s error=%s", m.subject, exc)
            continue
        items.append((parse_msg_id((m.headers or {}).get("Nats-Msg-Id"), ev), ev))
    return items, msgs[-1].metadata.sequence.stream


class Ingestor:
    """Consumes ``QTD_EVENTS`` (see the module docstring).

    Args:
        js: JetStream context.
        subjects: subject builder.
        cfg: consumer settings.
        db: fleet.db.
        on_events: called with each committed batch of new events, before the ack.

    Attributes:
        consumed: messages fetched; ``ingested`` new events committed; ``lag_ms``: age of
            the last batch's newest message at commit (stream time to leader time).
    """

    def __init__(self, js: JetStreamContext, subjects: Subjects, cfg: IngestConfig,
                 db: FleetDB, on_events: Callable[[list[AnyEvent]], None]) -> None:
        self.js, self.subjects, self.cfg, self.db = js, subjects, cfg, db
        self.on_events = on_events
        self.consumed = 0
        self.ingested = 0
        self.lag_ms = 0
        self.batches = 0

    def stats(self) -> dict[str, int]:
        """Counters for the status page."""
        return {"consumed": self.consumed, "ingested": self.ingested,
                "duplicates": self.db.duplicates, "gaps": self.db.gaps,
                "stream_seq": self.db.stream_seq, "lag_ms": self.lag_ms}

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; NATS trouble is retried with backoff.

        The next fetch is in flight while a batch is committed (fleet.db works in its own
        thread), so NATS and SQLite overlap; batches still commit and ack in order.
        """
        backoff = 0.1
        while not stop.is_set():
            try:
                sub = await open_consumer(self.js, self.subjects, self.cfg, self.db.stream_seq)
                try:
                    await self._pipeline(sub, stop)
                finally:
                    with contextlib.suppress(*_RETRYABLE):
                        await sub.unsubscribe()
                backoff = 0.1
            except _RETRYABLE as exc:
                log.warning("ingest.retry error=%r in=%.2fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _pipeline(self, sub: JetStreamContext.PullSubscription, stop: asyncio.Event
                        ) -> None:
        fetch = asyncio.ensure_future(self._fetch(sub))
        try:
            while not stop.is_set():
                msgs = await fetch
                fetch = asyncio.ensure_future(self._fetch(sub))
                if msgs:
                    await self.process(msgs)
        finally:
            fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError, *_RETRYABLE):
                await fetch

    async def _fetch(self, sub: JetStreamContext.PullSubscription) -> list[Msg]:
        try:
            return await sub.fetch(self.cfg.batch, timeout=self.cfg.fetch_timeout_s)
        except TimeoutError:  # idle: nothing arrived in fetch_timeout_s
            return []

    async def step(self, sub: JetStreamContext.PullSubscription) -> int:
        """Fetch, commit, apply and ack one batch; return the messages consumed.

        Raises:
            nats.errors.TimeoutError: nothing arrived within ``fetch_timeout_s``.
        """
        msgs = await sub.fetch(self.cfg.batch, timeout=self.cfg.fetch_timeout_s)
        if msgs:
            await self.process(msgs)
        return len(msgs)

    async def process(self, msgs: list[Msg]) -> None:
        """Commit one fetched batch to fleet.db, apply the new events, then ack it."""
        items, sseq = decode_batch(msgs)
        fresh = await self.db.ingest(items, sseq)
        self.on_events(fresh)
        await msgs[-1].ack()  # AckPolicy.ALL: acks the whole batch, after the commit
        self.consumed += len(msgs)
        self.ingested += len(fresh)
        self.batches += 1
        stamped = msgs[-1].metadata.timestamp.timestamp()
        self.lag_ms = max(0, int((time.time() - stamped) * 1000))
