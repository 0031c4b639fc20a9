"""Outbox: publish the event store to JetStream, in seq order, advancing the watermark on ack.

The SQLite store is the system of record; JetStream is transport. Each event goes to
``<prefix>.evt.<node>.<bot>.<kind>`` as msgspec JSON with header
``Nats-Msg-Id: <node>:<incarnation>:<seq>``.

**Pipeline.** Each event is a core NATS publish with the reply subject ``<inbox>.<seq>``:
JetStream answers it with a PubAck there (the JetStream publish protocol; one subscription
collects them, much cheaper than nats-py's per-message futures of ``publish_async``). Up to
``window``
events are in flight (written to the connection in seq order, not yet acknowledged) and a new
event is published as soon as it is stored, without waiting for the acks of earlier ones.
Acks are collected oldest first; the watermark moves to the highest seq of the
*contiguous* acknowledged prefix only. When the oldest publish fails or is not acknowledged
within ``ack_timeout_s``, everything in flight is abandoned and the publisher re-sends from the
watermark (after a crash, a timeout or a NATS outage alike). A re-sent event inside
JetStream's duplicate window is dropped by the server (PubAck ``duplicate: true``); outside it
the leader is idempotent on ``(node, incarnation, seq)``. So an event is never lost (the store
keeps it until its ack) and never double-counted (same Msg-Id, idempotent leader).

**Order.** JetStream stores what it accepts in arrival order, so a refused publish followed
by an accepted later one would put event k+1 before the re-sent event k. After start-up and
after every reset the window is therefore 1 (one probe) until JetStream acknowledges again
(right after a restart it refuses publishes until its stream is recovered), and only then
opens to ``window``.

**Order across a disconnect.** Nothing is published while the connection is down (nats-py
would buffer it and deliver it after the reconnect, *behind* events lost with the old
socket, which the re-send would then put after later ones; the agent's link also drops what
nats-py still held unsent at the disconnect, :mod:`qtd.agent.link`); the window is abandoned
as soon as the disconnect is seen, and publishing resumes from the watermark.

Hot path: a writer that hands freshly stored events to :meth:`Outbox.offer` has them
published from memory (no store read); the outbox falls back to reading the store whenever
its in-memory tail does not continue what it has sent (start-up, a gap, an overflow). The
watermark is cached (only the outbox writes it); its durable write runs in the background,
one at a time, always with the latest acknowledged seq (coalesced), and
:meth:`Outbox.flush` returns only once it is written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from qtd.bus import EVENTS_STREAM, Subjects
from qtd.bus.jscontext import context_client
from qtd.errors import TemporaryError
from qtd.events import AnyEvent, to_json
from qtd.outbox_ids import MsgIds
from qtd.recovery import check_store, last_in_stream
from qtd.store import EventStore

log = logging.getLogger("qtd.outbox")

DEFAULT_BATCH: Final = 512
DEFAULT_WINDOW: Final = 2048  # below nats-py's publish_async_max_pending (4000 by default)
RECONNECT_POLL_S: Final = 0.02  # while NATS is down: how often to look for the reconnect
MAX_TAIL: Final = 100_000  # events kept in memory for publishing; beyond: read the store
_NATS_ERRORS = (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError, OSError)


class Outbox:
    """Publishes one store's events to the ``QTD_EVENTS`` stream.

    Args:
        store: the event store (its watermark ``"jetstream"`` records progress).
        js: a JetStream context.
        subjects: subject builder (prefix).
        batch: events read (from memory or the store) and published per step.
        ack_timeout_s: seconds the oldest unacknowledged publish may wait for its ack before
            the publisher gives up and re-sends from the watermark.
        window: most events published and not yet acknowledged at any time.
        connected: returns False while the connection is down: nothing is published then
            and the pipeline is abandoned at once (see the module docstring); ``None``:
            always connected.
        nc: the client under ``js`` (default: ``js``'s own).

    Attributes:
        observer: optional ``(what, seq)`` callback, ``what`` = ``"sent"`` or ``"acked"``
            (benchmarks measure latency with it; keep it cheap).
    """

    WATERMARK = "jetstream"

    def __init__(
        self, store: EventStore, js: JetStreamContext, subjects: Subjects, *,
        batch: int = DEFAULT_BATCH, ack_timeout_s: float = 5.0, window: int = DEFAULT_WINDOW,
        connected: Callable[[], bool] | None = None, nc: Client | None = None,
    ) -> None:
        self.connected = connected or (lambda: True)
        self.nc: Client = nc if nc is not None else context_client(js)
        self.observer: Callable[[str, int], None] | None = None
        self.store = store
        self.js = js
        self.subjects = subjects
        self.batch = batch
        self.ack_timeout_s = ack_timeout_s
        self.window = max(1, window)
        self.published = 0
        self.duplicates = 0
        self._wake = asyncio.Event()
        self._tail: deque[AnyEvent] = deque()
        self._wm: int | None = None  # highest seq of the contiguous acknowledged prefix
        self._sent = 0  # highest seq published in the current pipeline (>= _wm)
        self._inflight: deque[tuple[int, float]] = deque()  # (seq, monotonic time sent)
        self._acks: dict[int, bool] = {}  # seq -> acknowledged (True) or refused (False)
        self._acked = asyncio.Event()
        self._subject_cache: dict[tuple[str, str, str], str] = {}
        self._lock = asyncio.Lock()  # one publisher at a time: run() or flush()
        self._probe = True  # window of 1 until JetStream acknowledges (start, after a reset)
        self._inbox = ""
        self._sub: Subscription | None = None
        self._wm_write: asyncio.Future[None] | None = None
        self._wm_durable = 0
        self._ids = MsgIds(store.node, store.incarnation)  # ids someone else took: re-sent
        self._retake: set[int] = set()  # seqs refused because their id was taken

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
        """Publish everything stored up to now and wait for the acks.

        Returns:
            The number of events acknowledged in this call.

        Raises:
            TemporaryError: NATS or JetStream did not acknowledge (the watermark stays at the
                last contiguous ack; call again later).
        """
        async with self._lock:
            start = await self._watermark()
            target = self.store.last_seq
            try:
                while await self._watermark() < target:
                    await self._step(wait_new=False)
            finally:
                await self._committed()
            return await self._watermark() - start

    async def run(self, stop: asyncio.Event, *, idle_s: float = 0.25, max_backoff_s: float = 5.0
                  ) -> None:
        """Publish until ``stop`` is set; back off (doubling, capped) while NATS is away.

        Local trading never waits for this loop: events stay in the store until acked.
        """
        backoff = idle_s
        async with self._lock:
            await self.audit()
        while not stop.is_set():
            try:
                await self._pump(stop, idle_s)
                backoff = idle_s
            except TemporaryError as exc:
                if not self.connected():
                    log.warning("%s (resumes when NATS is back)", exc)
                    while not self.connected() and not stop.is_set():
                        await _wait_any(stop, None, RECONNECT_POLL_S)
                    if not stop.is_set():
                        async with self._lock:
                            await self.audit()
                    continue
                log.warning("%s (retry in %.2fs)", exc, backoff)
                await _wait_any(stop, None, backoff)
                backoff = min(backoff * 2, max_backoff_s)
        await self._committed()

    async def audit(self) -> int:
        """Check the stream against the store: nothing lost by JetStream, nothing by the store.

        JetStream acknowledges before it fsyncs unless it runs with ``sync_interval:
        always``; a NATS host that crashes can come back without events it acknowledged.
        The store keeps every event, so the outbox asks the stream for this node's last event
        (``Nats-Msg-Id``; a direct get by subject, :func:`qtd.recovery.last_in_stream`) after
        every (re)connect and, when it is older than the watermark, re-sends from it (the
        leader is idempotent on the origin, so an event it already consumed is not counted
        twice). A node with no event left in the stream counts as a loss only when its
        watermark event is younger than the stream's ``max_age``. When that last event is
        *beyond* the store, or differs from the store's event at its seq, the store went
        backwards (:func:`qtd.recovery.check_store`): nothing may be published.

        Returns:
            How many acknowledged events are re-sent (0: nothing was lost, or the stream
            could not be read now; the next connect checks again).

        Raises:
            StoreBehind: the stream holds this node's events beyond the store; the outbox
                must not publish (each seq after the loss names two events).
        """
        try:
            last = await last_in_stream(self.js, self.subjects, self.store.node)
        except _NATS_ERRORS as exc:
            log.warning("outbox audit: cannot read the stream now (%r); checked again at the "
                        "next connect", exc)
            return 0
        seq = await check_store(self.store, *last) if last is not None else 0
        self._ids.seen(seq)
        wm = await self._watermark()
        if wm == 0 or seq >= wm or (seq == 0 and not await self._young(wm)):
            return 0
        log.error("outbox audit: JetStream has this node's events only up to seq %d, the "
                  "watermark is %d: it lost %d acknowledged events (NATS host crash before "
                  "fsync?); re-sending them from the store", seq, wm, wm - seq)
        self._inflight.clear()
        self._acks.clear()
        self._wm = self._sent = seq
        self._probe = True
        return wm - seq

    async def _young(self, wm: int) -> bool:
        """True if the event at ``wm`` should still be in the stream (younger than its
        ``max_age``; False when unknown)."""
        try:
            info = await self.js.stream_info(EVENTS_STREAM)
            events = await self.store.query(after_seq=wm - 1, limit=1)
        except _NATS_ERRORS:
            return False
        max_age = info.config.max_age or 0.0
        if not events or not max_age:
            return bool(events)
        return time.time_ns() - events[0].ts_init < max_age * 1e9

    # --- the pipeline ---------------------------------------------------------------------

    async def _pump(self, stop: asyncio.Event, idle_s: float) -> None:
        while not stop.is_set():
            wm = await self._watermark()
            if self._inflight or wm < self.store.last_seq:
                async with self._lock:
                    await self._step(wait_new=True)
            else:
                self._wake.clear()
                if wm >= self.store.last_seq:
                    await _wait_any(stop, self._wake, idle_s)
                self._commit_latest()

    async def _step(self, *, wait_new: bool) -> None:
        """Fill the window, then wait for the oldest ack (or new events) and collect acks.

        Raises:
            TemporaryError: a publish failed or the oldest ack timed out (pipeline reset to
                the watermark).
        """
        wm = await self._watermark()
        self._sent = max(self._sent, wm)
        self._wake.clear()  # an offer during the fill below wakes the wait after it
        if not self.connected():
            self._reset(wm, 0, len(self._inflight), "NATS connection down")
        failed = await self._fill()
        if not self._inflight:
            if failed:
                self._reset(wm, 0, 0)
            return
        seq, sent = self._inflight[0]
        timeout = sent + self.ack_timeout_s - time.monotonic()
        if seq not in self._acks and timeout > 0 and not failed:
            self._acked.clear()
            if seq not in self._acks:
                await _wait_any(self._acked, self._wake if wait_new else None, timeout)
        self._collect(failed)

    async def _fill(self) -> bool:
        """Publish events after ``_sent`` until the window is full; True if a publish failed."""
        window = 1 if self._probe else self.window
        while len(self._inflight) < window:
            events = await self._next_batch(self._sent,
                                            min(self.batch, window - len(self._inflight)))
            if not events:
                return False
            written = await self._publish(events)
            now = time.monotonic()
            self._inflight.extend((ev.seq, now) for ev in events[:written])
            if written:
                self._sent = events[written - 1].seq
            if written < len(events):
                return True
        return False

    def _collect(self, failed: bool) -> None:
        """Pop the acknowledged prefix, advance the watermark; on a refused or overdue oldest
        publish, reset the pipeline and raise."""
        inflight, acks, acked, wm = self._inflight, self._acks, 0, self._wm or 0
        refused = retake = False
        while inflight:
            ok = acks.pop(inflight[0][0], None)
            if ok is None:
                break
            if not ok:
                retake = inflight[0][0] in self._retake
                refused = not retake
                self._retake.discard(inflight[0][0])
                break
            wm = inflight.popleft()[0]
            acked += 1
        self.published += acked
        self._wm = wm
        if acked:
            self._probe = False
            self._commit_latest()
        overdue = bool(inflight) and time.monotonic() - inflight[0][1] >= self.ack_timeout_s
        if failed or refused or overdue:
            self._reset(wm, acked, len(inflight), "refused" if refused else "")
        if retake:  # re-send from the watermark, the stolen seq under its new id: no backoff
            self._inflight.clear()
            self._acks.clear()
            self._sent = wm
            self._probe = True

    def _reset(self, wm: int, acked: int, abandoned: int, why: str = "") -> None:
        self._inflight.clear()
        self._acks.clear()
        self._sent = wm
        self._probe = True
        raise TemporaryError(
            f"outbox: {why + ': ' if why else ''}JetStream acknowledged {acked} of "
            f"{acked + abandoned} events after seq {wm - acked}; will re-send from seq {wm + 1}",
            acked=acked, watermark=wm,
        )

    async def _ensure_sub(self) -> None:
        """Subscribe to this outbox's ack inbox (``<inbox>.<seq>``) once."""
        if self._sub is None:
            self._inbox = self.nc.new_inbox() + "."
            self._sub = await self.nc.subscribe(self._inbox + "*", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        """A PubAck (JSON) or an error / no-responders status for ``<inbox>.<seq>``."""
        seq = int(msg.subject[len(self._inbox):])
        data = msg.data
        ok = bool(data) and b'"error"' not in data
        duplicate = ok and b'"duplicate"' in data  # only present when true (omitempty)
        if duplicate:
            self.duplicates += 1
        if ok and self._ids.stolen_on_ack(seq, duplicate):
            ok = False
            self._retake.add(seq)
        if seq > (self._wm or 0):
            self._acks[seq] = ok
            if self.observer is not None:
                self.observer("acked", seq)
        self._acked.set()

    async def _publish(self, events: Sequence[AnyEvent]) -> int:
        """Write ``events`` to the connection in order, each with the reply subject of its
        ack; return how many were written."""
        await self._ensure_sub()
        publish, inbox, ids = self.nc.publish, self._inbox, self._ids
        subjects, evt = self._subject_cache, self.subjects.evt
        observer, n = self.observer, 0
        if not self.connected():  # checked after the last await: nothing is buffered unsent
            return 0
        try:
            for ev in events:
                seq = ev.seq
                key = (ev.node, ev.bot, type(ev).__name__)
                subject = subjects.get(key)
                if subject is None:
                    subject = subjects[key] = evt(*key)  # validated once per (node, bot, kind)
                await publish(subject, to_json(ev),
                              reply=f"{inbox}{seq}",
                              headers={"Nats-Msg-Id": ids.for_send(seq)})
                n += 1
                if observer is not None:
                    observer("sent", seq)
        except _NATS_ERRORS as exc:
            log.warning("outbox publish failed after %d of %d: %r", n, len(events), exc)
        return n

    async def _publish_round(self, events: Sequence[AnyEvent]) -> int:
        """Publish ``events`` and wait for their acks, without touching the watermark;
        return the length of the acknowledged prefix (tests: an ack lost to a crash)."""
        written = await self._publish(events)
        deadline = time.monotonic() + self.ack_timeout_s
        seqs = [ev.seq for ev in events[:written]]
        while any(s not in self._acks for s in seqs) and time.monotonic() < deadline:
            self._acked.clear()
            await _wait_any(self._acked, None, deadline - time.monotonic())
        acked = 0
        for seq in seqs:
            if not self._acks.get(seq):
                break
            acked += 1
        for seq in seqs:
            self._acks.pop(seq, None)
        return acked

    # --- reading what to send ---------------------------------------------------------------

    async def _watermark(self) -> int:
        if self._wm is None:
            self._wm = self._wm_durable = await self.store.watermark(self.WATERMARK)
        return self._wm

    async def _next_batch(self, after: int, limit: int) -> list[AnyEvent]:
        """Up to ``limit`` events after seq ``after``: from the in-memory tail when it
        continues without a gap, else from the store."""
        tail, wm = self._tail, self._wm or 0
        while tail and tail[0].seq <= wm:
            tail.popleft()
        out: list[AnyEvent] = []
        if tail and tail[0].seq <= after + 1 <= tail[-1].seq:
            i = after + 1 - tail[0].seq
            if tail[i].seq == after + 1:
                expect = after + 1
                for k in range(i, min(len(tail), i + limit)):
                    ev = tail[k]
                    if ev.seq != expect:
                        break
                    out.append(ev)
                    expect += 1
        if out:
            return out
        return await self.store.query(after_seq=after, limit=limit)

    # --- the durable watermark --------------------------------------------------------------

    def _commit_latest(self) -> None:
        """Start the durable write of the acknowledged watermark if none is running."""
        w = self._wm_write
        if w is not None and not w.done():
            return
        if w is not None:
            self._wm_write = None
            if w.cancelled() or w.exception() is not None:
                self._wm = None  # re-read: the write may not have happened
                self._inflight_reset_quietly()
                if not w.cancelled():
                    raise w.exception()  # type: ignore[misc]
                return
        wm = self._wm or 0
        if wm > self._wm_durable:
            self._wm_durable = wm
            self._wm_write = asyncio.ensure_future(self.store.set_watermark(wm, self.WATERMARK))
            self._wm_write.add_done_callback(lambda _f: self._wake.set())

    def _inflight_reset_quietly(self) -> None:
        self._inflight.clear()
        self._acks.clear()
        self._sent = 0

    async def _committed(self) -> None:
        """Wait for the running watermark write, then write the latest if it moved."""
        while True:
            pending, self._wm_write = self._wm_write, None
            if pending is not None:
                try:
                    await pending
                except BaseException:
                    self._wm = None
                    self._inflight_reset_quietly()
                    raise
            if self._wm is None or self._wm <= self._wm_durable:
                return
            self._commit_latest()


async def _wait_any(stop: asyncio.Event | None, wake: asyncio.Event | None,
                    timeout: float) -> None:
    """Wait until ``stop`` or ``wake`` is set, or ``timeout`` seconds."""
    waiters: list[asyncio.Future[Any]] = [
        asyncio.ensure_future(e.wait()) for e in (stop, wake) if e is not None]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
