"""Write faults of an event store: buffer in memory, refuse intents, probe, write back.

The mechanics of :class:`StoreFaults` (what the agent does about a fault — halt, cancel,
page — is the :class:`FaultPolicy` it is built with: :mod:`qtd.agent.storefault`):

* a write that fails with a SQLite error (``SQLITE_FULL``, ``SQLITE_READONLY``,
  ``SQLITE_IOERR``) trips the fault once: :meth:`FaultPolicy.on_fault` is called before the
  failing call returns;
* while faulted an :class:`~qtd.events.OrderIntent` is refused (``StoreError``: the caller
  must not send the order), every other event is given the ``seq`` it will have and kept,
  in order, in :attr:`StoreFaults.pending`;
* every ``probe_s`` seconds the buffer is written; once that succeeds it is handed to the
  listener, in order, and the store takes writes again (:meth:`FaultPolicy.on_recover`).

Test-only: ``readonly_flag`` names a file; while it exists the connection is switched to
``PRAGMA query_only`` (a genuine ``SQLITE_READONLY`` on a live process).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

from qtd.errors import StoreError
from qtd.events import AnyEvent, Event, OrderIntent
from qtd.store import EventStore

log = logging.getLogger("qtd.agent.storefault")

Listener = Callable[[Sequence[AnyEvent]], None]


class FaultPolicy(Protocol):
    """What a process does about a write fault (given to the store at construction)."""

    def on_fault(self, exc: StoreError, detected_ns: int) -> None:
        """Called once per fault, synchronously, before the failing write returns
        (``detected_ns``: ``time.perf_counter_ns`` when it was caught)."""

    async def on_recover(self, written: int, faulted_s: float) -> None:
        """Awaited after the buffer was written (events, seconds faulted)."""


class StoreFaults:
    """The fault state of one store (see the module docstring); built by the store.

    Args:
        store: the store whose base writes (:class:`EventStore` methods) are used.
        policy: the process's answer to a fault.
        listener: called with the buffered events once written (the outbox), or None.
        probe_s: seconds between attempts to write the buffer while faulted.
        readonly_flag: test-only flag file (``QTD_TEST_STORE_READONLY``).

    Attributes:
        fault: the error that started the current fault (None: the store takes writes).
        pending: events accepted while faulted, with their future seq, oldest first.
        faults_seen: SQLite error texts of every fault so far.
    """

    def __init__(self, store: EventStore, policy: FaultPolicy, listener: Listener | None, *,
                 probe_s: float = 1.0, readonly_flag: str | None = None) -> None:
        self.store, self.policy, self.listener = store, policy, listener
        self.probe_s, self.readonly_flag = probe_s, readonly_flag
        self.fault: StoreError | None = None
        self.pending: list[AnyEvent] = []
        self.faults_seen: list[str] = []
        self.detected_ns = 0  # perf_counter_ns when the current fault was caught
        self._since = 0.0
        self._query_only = False
        self._probe: asyncio.Task[None] | None = None

    @property
    def faulted(self) -> bool:
        return self.fault is not None

    async def append(self, events: Sequence[Event], *, sync: bool = True) -> list[AnyEvent]:
        """Append through the store, or buffer while faulted (module docstring).

        Raises:
            StoreError: an :class:`~qtd.events.OrderIntent` while the store cannot write
                (nothing stored; the caller must not send it), or a non-write error.
        """
        if self.fault is None:
            try:
                await self._sync_readonly_flag()
                if len(events) == 1 and sync:
                    return [await EventStore.append(self.store, events[0])]
                return await EventStore.append_many(self.store, events, sync=sync)
            except StoreError as exc:
                if "sqlite" not in exc.fields:
                    raise
                self.trip(exc)
        assert self.fault is not None
        if any(type(e) is OrderIntent for e in events):
            raise self.fault  # write-ahead: an order nobody could record is never sent
        first = self.store.last_seq + 1 + len(self.pending)
        kept = [msgspec.structs.replace(e, seq=first + i) for i, e in enumerate(events)]
        self.pending.extend(kept)  # type: ignore[arg-type]
        return kept  # type: ignore[return-value]

    def trip(self, exc: StoreError) -> None:
        """Enter the faulted state (once per fault): the policy's halt, then probing."""
        if self.fault is not None:
            return
        self.detected_ns = time.perf_counter_ns()
        self.fault, self._since = exc, time.monotonic()
        self.policy.on_fault(exc, self.detected_ns)  # halt first, log after
        self.faults_seen.append(str(exc.fields.get("sqlite", "")))
        log.critical("event store write failed: %s; trading HALTED, events kept in memory "
                     "until the store takes writes again", exc)
        self._probe = asyncio.get_running_loop().create_task(self._probe_loop(),
                                                             name="store-probe")

    async def _probe_loop(self) -> None:
        while self.fault is not None:
            await asyncio.sleep(self.probe_s)
            try:
                await self.flush()
            except Exception as exc:  # still faulted: try again at the next probe
                log.debug("store probe: still failing: %s", exc)

    async def flush(self) -> int:
        """Write the buffer (in order, in batches) and leave the faulted state once it is
        empty. Returns the number of events written.

        Raises:
            StoreError: the store still cannot write (the buffer is kept).
        """
        if self.fault is None:
            return 0
        await self._sync_readonly_flag()
        self.store.clear_failure()  # the probe write decides
        written = 0
        while self.pending:
            batch = self.pending[:1000]
            stored = await EventStore.append_many(self.store, batch, sync=True)
            assert [e.seq for e in stored] == [e.seq for e in batch], "buffer seq drift"
            del self.pending[:len(batch)]
            written += len(batch)
            if self.listener is not None:
                self.listener(stored)
        faulted_s = time.monotonic() - self._since
        self.fault = None  # no await since the buffer emptied: nothing slipped past it
        log.warning("event store takes writes again after %.1f s: %d buffered events written "
                    "in order; GLOBAL stays HALTED until an operator resumes it", faulted_s,
                    written)
        await self.policy.on_recover(written, faulted_s)
        return written

    async def close(self) -> None:
        """Stop probing; try one last flush (logs what could not be written)."""
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        if self.fault is None:
            return
        try:
            await self.flush()
        except Exception as exc:
            log.critical("event store still failing at shutdown (%s): %d accepted events "
                         "could not be written (fills and order states are re-imported "
                         "from the venues by reconciliation at the next start)", exc,
                         len(self.pending))

    async def _sync_readonly_flag(self) -> None:
        if self.readonly_flag is None:
            return
        want = os.path.exists(self.readonly_flag)
        if want != self._query_only:
            await self.store.set_query_only(want)
            self._query_only = want
