"""The agent's NATS link: connect (retrying while NATS is away), JetStream setup, the outbox.

Trading never waits for this: until the link is up, and whenever NATS is down afterwards,
events stay in the SQLite store and the outbox drains them in seq order once JetStream
acknowledges again. Once connected, and before anything is published or the link reports
ready (bots start after that), the outbox audit compares the stream with the store: a store
that went backwards (:class:`~qtd.recovery.StoreBehind`) is handed to ``on_store_behind``
(the agent halts) and the outbox is dropped: nothing more is published by this process.
Core publishes (heartbeats, PnL ticks, kill acks) are best effort and
never raise into the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from qtd.bus import BusConfig, Subjects, connect, ensure_jetstream
from qtd.errors import OperationalError, TemporaryError
from qtd.events import AnyEvent
from qtd.outbox import Outbox
from qtd.recovery import StoreBehind
from qtd.store import EventStore

log = logging.getLogger("qtd.agent.link")

SETTLE_S = 0.05  # final flush: the store must stay unchanged this long (seconds)
_RETRY_ERRORS = (TemporaryError, nats.errors.Error, nats.js.errors.Error, OSError,
                 asyncio.TimeoutError)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class BusLink:
    """Connection, JetStream setup and outbox of one agent.

    Args:
        cfg: the bus config.
        store: the agent's store (the outbox publishes it).
        source: config file name, for error messages.
        replicas: JetStream stream/KV replicas.
        on_ready: called once connected and set up (subscriptions, first kill read).
        on_store_behind: called once if the store is behind the stream (before
            ``on_ready`` when found at the first connect).

    Attributes:
        behind: the refusal, once the store was found behind (the outbox is then None).
    """

    def __init__(self, cfg: BusConfig, store: EventStore, *, source: str, replicas: int,
                 on_ready: Callable[[BusLink], Awaitable[None]],
                 on_store_behind: Callable[[StoreBehind], Awaitable[None]]) -> None:
        self.cfg, self.store, self.source, self.replicas = cfg, store, source, replicas
        self.subjects = Subjects(cfg.prefix)
        self._on_ready = on_ready
        self._on_store_behind = on_store_behind
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.outbox: Outbox | None = None
        self.behind: StoreBehind | None = None
        self.ready = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, audit, set up, then publish the outbox until ``stop`` is set."""
        if not await self._connect(stop):
            return
        assert self.js is not None
        outbox = Outbox(self.store, self.js, self.subjects, connected=lambda: self.connected)
        try:
            await outbox.audit()  # before any publish, before ready
            self.outbox = outbox
        except StoreBehind as exc:
            await self._refuse(exc)
        await self._on_ready(self)
        self.ready.set()
        if self.outbox is not None:
            try:
                await self.outbox.run(stop)
            except StoreBehind as exc:
                await self._refuse(exc)
        await stop.wait()

    async def _refuse(self, exc: StoreBehind) -> None:
        self.outbox, self.behind = None, exc
        await self._on_store_behind(exc)

    async def _connect(self, stop: asyncio.Event) -> bool:
        delay = 0.5
        while not stop.is_set():
            try:
                if self.nc is None:
                    self.nc = await connect(self.cfg, source=self.source)
                    _drop_unsent_on_disconnect(self.nc)
                self.js = self.nc.jetstream()
                await ensure_jetstream(self.js, self.cfg.prefix, self.replicas)
                return True
            except OperationalError:
                raise
            except _RETRY_ERRORS as exc:
                log.warning("NATS not available yet (%s); trading continues, events stay in "
                            "the store; retry in %.1f s", exc, delay)
            await _wait(stop, delay)
            delay = min(delay * 2, self.cfg.reconnect_wait_max)
        return False

    def offer(self, events: Sequence[AnyEvent]) -> None:
        """Hand just-stored events to the outbox (called after every append)."""
        if self.outbox is not None:
            self.outbox.offer(events)

    async def publish(self, subject: str, data: bytes) -> bool:
        """Core publish, best effort: False when not connected or NATS refused."""
        nc = self.nc
        if nc is None or not nc.is_connected:
            return False
        try:
            await nc.publish(subject, data)
        except (nats.errors.Error, OSError) as exc:
            log.debug("publish %s failed: %r", subject, exc)
            return False
        return True

    async def _final_flush(self, outbox: Outbox) -> None:
        """Flush until the store stops growing: venue reports (acks, fills of the last
        orders) may still be stored while the first flush runs."""
        while True:
            try:
                await outbox.flush()
            except TemporaryError as exc:  # an ack overdue under load: the pipeline was
                if not self.connected:     # reset to the watermark; try again in time left
                    raise
                log.info("final outbox flush: %s; retrying", exc)
                await asyncio.sleep(SETTLE_S)
                continue
            seen = self.store.last_seq
            await asyncio.sleep(SETTLE_S)
            if self.store.last_seq == seen:
                return

    async def close(self, timeout_s: float) -> int:
        """Final outbox flush and drain, each bounded by ``timeout_s`` seconds.

        Returns:
            Events still not acknowledged by JetStream (they stay in the store and are sent
            by the next start).
        """
        if self.outbox is not None and self.connected:
            try:
                await asyncio.wait_for(self._final_flush(self.outbox), timeout_s)
            except (TemporaryError, TimeoutError) as exc:
                log.warning("final outbox flush incomplete: %s", exc)
        pending = self.store.last_seq - await self.store.watermark(Outbox.WATERMARK)
        if self.nc is not None:
            try:
                await asyncio.wait_for(self.nc.drain(), timeout_s)
            except (nats.errors.Error, TimeoutError, OSError):
                with contextlib.suppress(Exception):
                    await self.nc.close()
        return pending


def _drop_unsent_on_disconnect(nc: Client) -> None:
    """On a lost connection, drop what nats-py holds unsent instead of sending it after the
    reconnect.

    nats-py keeps publishes not yet written to the old socket and writes them to the new
    one, while what it had written to the old socket died with it: event k+1 would reach
    JetStream before the outbox re-sends event k, out of order. Dropping them makes the
    stream receive a prefix of the events over the old connection and the outbox's re-send
    from the watermark over the new one, in order (Msg-Id dedups the overlap). Heartbeats,
    PnL ticks and kill acks held at that moment are dropped too (best effort by design; kill
    acks are also stored events). Uses nats-py's connection internals (``_pending``,
    ``_pending_data_size``, ``_disconnected_cb``; nats-py 2.x); without them nothing changes.
    """
    inner = getattr(nc, "_disconnected_cb", None)
    if not (hasattr(nc, "_pending") and hasattr(nc, "_pending_data_size")):
        log.warning("nats-py internals changed: unsent publishes are kept across a reconnect "
                    "(JetStream order after an outage is then not guaranteed)")
        return

    async def on_disconnected() -> None:
        dropped = len(nc._pending)
        nc._pending = []
        nc._pending_data_size = 0
        if dropped:
            log.info("NATS connection lost: %d unsent commands dropped; the outbox re-sends "
                     "from its watermark", dropped)
        if inner is not None:
            await inner()

    nc._disconnected_cb = on_disconnected
