"""The agent's NATS link: connect (retrying while NATS is away), JetStream setup, the outbox.

Trading never waits for this: until the link is up, and whenever NATS is down afterwards,
events stay in the SQLite store and the outbox drains them in seq order once JetStream
acknowledges again. Core publishes (heartbeats, PnL ticks, kill acks) are best effort and
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
from qtd.store import EventStore

log = logging.getLogger("qtd.agent.link")

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
    """

    def __init__(self, cfg: BusConfig, store: EventStore, *, source: str, replicas: int,
                 on_ready: Callable[[BusLink], Awaitable[None]]) -> None:
        self.cfg, self.store, self.source, self.replicas = cfg, store, source, replicas
        self.subjects = Subjects(cfg.prefix)
        self._on_ready = on_ready
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.outbox: Outbox | None = None
        self.ready = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, set up, then publish the outbox until ``stop`` is set."""
        if not await self._connect(stop):
            return
        assert self.js is not None
        self.outbox = Outbox(self.store, self.js, self.subjects)
        await self._on_ready(self)
        self.ready.set()
        await self.outbox.run(stop)

    async def _connect(self, stop: asyncio.Event) -> bool:
        delay = 0.5
        while not stop.is_set():
            try:
                if self.nc is None:
                    self.nc = await connect(self.cfg, source=self.source)
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

    async def close(self, timeout_s: float) -> int:
        """Final outbox flush and drain, each bounded by ``timeout_s`` seconds.

        Returns:
            Events still not acknowledged by JetStream (they stay in the store and are sent
            by the next start).
        """
        if self.outbox is not None and self.connected:
            try:
                await asyncio.wait_for(self.outbox.flush(), timeout_s)
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
