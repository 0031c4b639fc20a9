"""Ingest: a durable JetStream pull consumer of ``QTD_EVENTS`` into fleet.db and the view.

One loop: fetch up to ``batch`` messages → decode → :meth:`FleetDB.ingest` (dedupe on origin,
insert, move the marks and the stream sequence, one commit) → apply the new events to the
fleet view and the caps → ack. The consumer uses ``AckPolicy.ALL``: acking the batch's last
message acks the batch, and only after the commit, so a crash anywhere before the ack makes
JetStream deliver the batch again and fleet.db drops what it already has.

**Lost deliveries.** With ``AckPolicy.ALL`` an ack also acks every earlier delivery, so a
delivery that never reached :meth:`Ingestor.process` (sent to a fetch request that had already
ended client-side, or in flight during a reconnect) would be acked unseen by the next batch's
ack: an event lost to the fleet view. Every delivery carries the consumer's delivery sequence,
which grows by one per delivery (redeliveries included), so :meth:`Ingestor.process` checks
that each batch continues the sequence. On a jump it commits and acks only the contiguous
prefix and raises :class:`DeliveryGap`; :meth:`Ingestor.run` rebinds at once (the consumer is
recreated right after its ack floor, below), so the missing events come next, within
milliseconds, instead of after ``ack_wait``. A lost delivery with nothing after it to reveal
the jump is redelivered after ``ack_wait`` (5 s by default; safe to keep short, because a
redelivered event is dropped by its origin in fleet.db).

**Restart.** The durable consumer resumes after its ack floor. If it has deliveries that
were never acked (the leader died between fetch and ack) it is recreated to start right after
the ack floor, so the redelivery comes first and in order rather than after ``AckWait``. If
the consumer is gone, or its ack floor is ahead of fleet.db (commits lost with ``fsync =
false`` after a power cut, a restored backup, a new file), it is (re)created to start after the
stream sequence recorded in fleet.db, so nothing the consumer acked is missing from fleet.db.
A consumer whose ``ack_wait`` differs from the config is recreated the same way (after its
ack floor), so a changed setting takes effect.

**Who may say what.** The NATS ACL lets an agent publish only under its own
``<prefix>.evt.<node>.>``, but the payload's ``node`` and the ``Nats-Msg-Id``
(``node:incarnation:seq``, the origin fleet.db dedupes on) are whatever the publisher wrote.
An event is accepted only when the subject's node token, the payload's ``node`` and the
Msg-Id's node agree (a missing Msg-Id falls back to the payload's node and seq, see
:func:`~qtd.leader.fleetdb.parse_msg_id`). Anything else is a forgery by the subject's node:
it is logged, counted (:data:`~qtd.bus.rejects.REJECTED`, per subject node and claimed node),
acked with its batch (never redelivered), never stored nor applied to the view or the caps,
and reported to ``on_suspect`` (the leader pages P1). A different event under an origin
fleet.db already holds (:class:`~qtd.leader.fleetdb.Conflict`) is reported the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import NamedTuple

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from qtd.bus import EVENTS_STREAM, Subjects
from qtd.bus.jscontext import context_api_prefix, context_client
from qtd.bus.rejects import REJECTED
from qtd.events import DECODE_ERRORS, AnyEvent, from_json
from qtd.leader.config import IngestConfig
from qtd.leader.fleetdb import Conflict, FleetDB, Origin, parse_msg_id
from qtd.leader.pull import BatchPuller

log = logging.getLogger("qtd.leader.ingest")
_RETRYABLE = (nats.errors.TimeoutError, nats.errors.ConnectionClosedError,
              nats.js.errors.Error, nats.errors.Error, asyncio.TimeoutError, OSError)


class DeliveryGap(Exception):
    """Deliveries ``expected`` .. ``got - 1`` (consumer delivery sequence) never arrived."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"deliveries {expected}..{got - 1} lost client-side")
        self.expected, self.got = expected, got


class Binding(NamedTuple):
    """A bound pull consumer (:class:`~qtd.leader.pull.BatchPuller`) and the consumer's
    delivery sequence at bind time (the next delivery it makes is ``delivered + 1``)."""

    sub: BatchPuller
    delivered: int


async def open_consumer(js: JetStreamContext, subjects: Subjects, cfg: IngestConfig,
                        db_stream_seq: int, stream: str = EVENTS_STREAM) -> Binding:
    """Bind (creating or recreating as the module docstring says) the durable consumer."""
    start = db_stream_seq + 1
    try:
        info = await js.consumer_info(stream, cfg.durable)
    except nats.js.errors.NotFoundError:
        info = None
    floor = info.ack_floor.stream_seq if info is not None and info.ack_floor else 0
    why = ""
    if info is not None and info.num_ack_pending:
        why = f"{info.num_ack_pending} delivered, never acked"
    elif info is not None and floor > db_stream_seq:
        why = (f"fleet.db behind its consumer (ack floor {floor}, fleet.db {db_stream_seq}: "
               "lost commits, a restored or new file)")
    elif info is not None and abs((info.config.ack_wait or 0) - cfg.ack_wait_s) > 1e-3:
        why = f"ack_wait {info.config.ack_wait} s -> {cfg.ack_wait_s} s"
    if why:
        start = min(floor, db_stream_seq) + 1
        log.warning("ingest.recreate_consumer durable=%s reason=%s start_seq=%d",
                    cfg.durable, why, start)
        await js.delete_consumer(stream, cfg.durable)
        info = None
    if info is None:
        config = ConsumerConfig(
            durable_name=cfg.durable, ack_policy=AckPolicy.ALL, ack_wait=cfg.ack_wait_s,
            max_ack_pending=cfg.max_ack_pending, filter_subject=subjects.evt_all,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start > 1 else DeliverPolicy.ALL,
            opt_start_seq=start if start > 1 else None, max_deliver=-1)
        await js.add_consumer(stream, config)
    delivered = info.delivered.consumer_seq if info is not None and info.delivered else 0
    puller = BatchPuller(context_client(js), stream, cfg.durable,
                         api_prefix=context_api_prefix(js))
    return Binding(await puller.start(), delivered or 0)


class Suspect(msgspec.Struct, frozen=True, kw_only=True):
    """An event the leader kept out of fleet.db for what it claims (module docstring).

    Attributes:
        why: ``"forged"`` (the node tokens disagree) or ``"conflict"`` (a different event
            under a stored origin).
        subject_node: the node the NATS ACL vouches for (the subject's node token).
        claimed_node: the payload's ``node``.
        msg_id: the ``Nats-Msg-Id`` header ("" if none).
        kind: the event's kind; ``stream_seq``: its JetStream sequence.
        detail: one line for the operator.
    """

    why: str
    subject_node: str
    claimed_node: str
    msg_id: str
    kind: str
    stream_seq: int
    detail: str


class ForgedEvent(ValueError):
    """The subject's, the payload's and the Msg-Id's node disagree."""


def subject_node(subject: str, subjects: Subjects) -> str:
    """The ``<node>`` token of ``<prefix>.evt.<node>.<bot>.<kind>`` ("" if not an event
    subject)."""
    head = f"{subjects.prefix}.evt."
    return subject[len(head):].split(".", 1)[0] if subject.startswith(head) else ""


def check_origin(subject: str, subjects: Subjects, msg_id: str | None, ev: AnyEvent
                 ) -> Origin:
    """The event's origin, once the three nodes agree.

    Raises:
        ForgedEvent: the subject's node token, ``ev.node`` and the Msg-Id's node differ, or
            the Msg-Id is present but not ``node:incarnation:seq``.
    """
    if msg_id and not (msg_id.count(":") >= 2 and msg_id.rsplit(":", 1)[1].isdigit()):
        raise ForgedEvent(f"Nats-Msg-Id {msg_id!r} is not node:incarnation:seq")
    origin = parse_msg_id(msg_id, ev)
    by_subject = subject_node(subject, subjects)
    if not (by_subject == ev.node == origin.node):
        raise ForgedEvent(f"subject node {by_subject!r}, payload node {ev.node!r}, Msg-Id "
                          f"node {origin.node!r}: must all be the same")
    return origin


def decode_batch(msgs: list[Msg], subjects: Subjects,
                 on_suspect: Callable[[Suspect], object] | None = None
                 ) -> tuple[list[tuple[Origin, AnyEvent]], int]:
    """``(origin, event)`` of each decodable, consistent message and the batch's last stream
    sequence. An undecodable message is logged and skipped (it would block the stream
    forever); a forged one (:func:`check_origin`) is counted, reported and skipped."""
    items: list[tuple[Origin, AnyEvent]] = []
    for m in msgs:
        try:
            ev = from_json(m.data)
        except DECODE_ERRORS as exc:
            REJECTED.reject("event", m.subject, exc, log)
            continue
        mid = (m.headers or {}).get("Nats-Msg-Id")
        try:
            items.append((check_origin(m.subject, subjects, mid, ev), ev))
        except ForgedEvent as exc:
            by = subject_node(m.subject, subjects)
            REJECTED.forged(by, ev.node, m.subject, exc, log)
            if on_suspect is not None:
                on_suspect(Suspect(why="forged", subject_node=by, claimed_node=ev.node,
                                   msg_id=mid or "", kind=type(ev).__name__,
                                   stream_seq=m.metadata.sequence.stream, detail=str(exc)))
    return items, msgs[-1].metadata.sequence.stream


def conflict_suspect(c: Conflict) -> Suspect:
    """The :class:`Suspect` for a different event under a stored origin."""
    o = c.origin
    return Suspect(why="conflict", subject_node=o.node, claimed_node=o.node,
                   msg_id=f"{o.node}:{o.incarnation}:{o.seq}", kind=c.got_kind, stream_seq=0,
                   detail=f"origin {o.node}:{o.incarnation}:{o.seq} holds a {c.stored_kind}; "
                          f"a different {c.got_kind} arrived under it (kept the first): the "
                          "node's store went backwards and reused its seqs, or a forgery")


class Ingestor:
    """Consumes ``QTD_EVENTS`` (see the module docstring).

    Args:
        js: JetStream context.
        subjects: subject builder.
        cfg: consumer settings.
        db: fleet.db.
        on_events: called with each committed batch of new events, before the ack.
        on_suspect: called with each event kept out for what it claims (:class:`Suspect`).

    Attributes:
        consumed: messages fetched; ``ingested`` new events committed; ``lag_ms``: age of
            the last batch's newest message at commit (stream time to leader time).
    """

    def __init__(self, js: JetStreamContext, subjects: Subjects, cfg: IngestConfig,
                 db: FleetDB, on_events: Callable[[list[AnyEvent]], None], *,
                 on_suspect: Callable[[Suspect], object] | None = None) -> None:
        self.js, self.subjects, self.cfg, self.db = js, subjects, cfg, db
        self.on_events = on_events
        self.on_suspect = on_suspect
        self.consumed = 0
        self.ingested = 0
        self.lag_ms = 0
        self.batches = 0
        self.rebinds = 0
        self._delivered = 0  # last consumer delivery sequence processed on this binding

    def stats(self) -> dict[str, int]:
        """Counters for the status page."""
        return {"consumed": self.consumed, "ingested": self.ingested,
                "duplicates": self.db.duplicates, "gaps": self.db.gaps,
                "conflicts": self.db.conflicts, "forged": REJECTED.forged_total,
                "stream_seq": self.db.stream_seq, "lag_ms": self.lag_ms,
                "rebinds": self.rebinds}

    async def bind(self) -> Binding:
        """Open the consumer (:func:`open_consumer`) and start checking deliveries on it."""
        b = await open_consumer(self.js, self.subjects, self.cfg, self.db.stream_seq)
        self._delivered = b.delivered
        return b

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; NATS trouble is retried with backoff.

        While a batch is committed (fleet.db works in its own thread) the puller's open
        request keeps filling its buffer, so NATS and SQLite overlap and the next batch is
        whatever arrived meanwhile; batches still commit and ack in order.
        """
        backoff = 0.1
        while not stop.is_set():
            try:
                b = await self.bind()
                try:
                    await self._pipeline(b.sub, stop)
                finally:
                    with contextlib.suppress(*_RETRYABLE):
                        await b.sub.unsubscribe()
                backoff = 0.1
            except DeliveryGap as gap:  # rebind now: the missing deliveries come next
                self.rebinds += 1
                log.warning("ingest.rebind reason=%r", str(gap))
            except _RETRYABLE as exc:
                log.warning("ingest.retry error=%r in=%.2fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _pipeline(self, sub: BatchPuller, stop: asyncio.Event) -> None:
        while not stop.is_set():
            msgs = await self._fetch(sub)
            if msgs:
                await self.process(msgs)

    async def _fetch(self, sub: BatchPuller) -> list[Msg]:
        try:
            return await sub.fetch(self.cfg.batch, timeout=self.cfg.fetch_timeout_s)
        except TimeoutError:  # idle: nothing arrived in fetch_timeout_s
            return []

    async def step(self, b: Binding) -> int:
        """Fetch, commit, apply and ack one batch; return the messages consumed.

        Raises:
            nats.errors.TimeoutError: nothing arrived within ``fetch_timeout_s``.
            DeliveryGap: as :meth:`process`.
        """
        msgs = await b.sub.fetch(self.cfg.batch, timeout=self.cfg.fetch_timeout_s)
        if msgs:
            await self.process(msgs)
        return len(msgs)

    async def process(self, msgs: list[Msg]) -> None:
        """Commit one fetched batch to fleet.db, apply the new events, then ack it.

        Raises:
            DeliveryGap: the batch does not continue the delivery sequence; its contiguous
                prefix (if any) was committed and acked, the rest was left unacked.
        """
        n = self._contiguous(msgs)
        if n:
            self._delivered += n  # received; a failure from here on ends this binding
            await self._commit(msgs[:n])
        if n < len(msgs):
            raise DeliveryGap(self._delivered + 1, msgs[n].metadata.sequence.consumer)

    def _contiguous(self, msgs: list[Msg]) -> int:
        """How many leading messages continue the delivery sequence."""
        expect = self._delivered + 1
        first = msgs[0].metadata.sequence.consumer
        last = msgs[-1].metadata.sequence.consumer
        if first == expect and last == expect + len(msgs) - 1:
            return len(msgs)
        n = 0
        for m in msgs:
            if m.metadata.sequence.consumer != expect + n:
                break
            n += 1
        return n

    async def _commit(self, msgs: list[Msg]) -> None:
        items, sseq = decode_batch(msgs, self.subjects, self.on_suspect)
        conflicts: list[Conflict] = []
        fresh = await self.db.ingest(items, sseq, conflicts)
        for c in conflicts:
            log.error("ingest.conflict origin=%s:%s:%d stored=%s got=%s", *c.origin,
                      c.stored_kind, c.got_kind)
            if self.on_suspect is not None:
                self.on_suspect(conflict_suspect(c))
        self.on_events(fresh)
        await msgs[-1].ack()  # AckPolicy.ALL: acks the whole batch, after the commit
        self.consumed += len(msgs)
        self.ingested += len(fresh)
        self.batches += 1
        stamped = msgs[-1].metadata.timestamp.timestamp()
        self.lag_ms = max(0, int((time.time() - stamped) * 1000))
