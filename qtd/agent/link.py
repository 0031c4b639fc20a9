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
from qtd.bus.unsent import drop_unsent_on_disconnect
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


class Outlet:
    """The store's listener (:class:`~qtd.store.agentstore.StoreHooks`): hands stored
    events to the link's outbox while it has one, else drops them (the outbox reads them
    from the store after its watermark). Built before the store, attached by the link.

    Args:
        observer: also called with every batch of stored events, first (benchmarks).
    """

    def __init__(self, observer: Callable[[Sequence[AnyEvent]], None] | None = None) -> None:
        self._outbox: Outbox | None = None
        self._observer = observer

    def attach(self, outbox: Outbox | None) -> None:
        """Send to ``outbox`` from now on (None: to nothing)."""
        self._outbox = outbox

    def offer(self, events: Sequence[AnyEvent]) -> None:
        """Hand just-stored events to the outbox (called after every append)."""
        if self._observer is not None:
            self._observer(events)
        if self._outbox is not None:
            self._outbox.offer(events)


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
        outlet: the store's listener; the link attaches its outbox to it.

    Attributes:
        behind: the refusal, once the store was found behind (the outbox is then None).
    """

    def __init__(self, cfg: BusConfig, store: EventStore, *, source: str, replicas: int,
                 on_ready: Callable[[BusLink], Awaitable[None]],
                 on_store_behind: Callable[[StoreBehind], Awaitable[None]],
                 outlet: Outlet) -> None:
        self.cfg, self.store, self.source, self.replicas = cfg, store, source, replicas
        self.outlet = outlet
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
            self.outlet.attach(outbox)
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
        self.outlet.attach(None)
        await self._on_store_behind(exc)

    async def _connect(self, stop: asyncio.Event) -> bool:
        delay = 0.5
        while not stop.is_set():
            try:
                if self.nc is None:
                    self.nc = await connect(self.cfg, source=self.source)
                    drop_unsent_on_disconnect(self.nc)
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
        self.outlet.attach(None)  # events stored from now on are sent by the next start
        return pending
