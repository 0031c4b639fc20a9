"""Storage faults of the agent's event store: halt, page, buffer, probe, recover.

When a write to ``events.db`` fails (SQLite ``SQLITE_FULL`` — disk full or file size limit —,
``SQLITE_READONLY``, ``SQLITE_IOERR``), :class:`StoreFaults`:

1. **halts trading at once, in memory**: GLOBAL goes HALTED in the risk engine (a P1
   :class:`~qtd.events.RiskBreach` ``check="store_fault"`` and the
   :class:`~qtd.events.TradingStateChanged`) before the failing call returns, so every later
   order request is denied by the engine; the agent's open orders are cancelled (a cancel
   only reduces risk);
2. **never lets an order reach a broker without its intent stored**: an
   :class:`~qtd.events.OrderIntent` append is *refused* (``StoreError``, as
   :meth:`qtd.execution.OrderRouter.submit` documents: no broker saw the order);
3. **keeps every other event accepted in memory**: each is given the ``seq`` it will have
   and kept, in order, in :attr:`StoreFaults.pending` (fills, acks, denials, the halt
   itself, PnL snapshots); nothing is published to JetStream before it is written, so a seq
   never names two events;
4. **pages P1 over NATS core** (the outbox reads the store, which is what failed): the
   breach is published as JSON on the node's heartbeat subject ``<prefix>.hb.<node>`` (an
   agent may publish there under the NATS ACL), again every ``republish_s`` while the fault
   lasts; the leader pages it (:meth:`qtd.leader.alerts.AlertBook.on_agent_breach`);
5. **probes** the store every ``probe_s`` by writing what it holds; once that write
   succeeds the buffer is written first, in order, the outbox gets it, and the store takes
   writes again. **GLOBAL stays HALTED until an operator resumes it** (the node's
   ``resume`` command or the status page): the halt is now durable (it is among the first
   events buffered), and only a human knows whether the disk will fill again in a minute —
   the money-safe choice.

If the process stops while events are still buffered (SIGKILL, or a shutdown with the disk
still full), those events are lost from the store; what they were is re-derivable: fills,
acks and cancels of orders whose intents are stored are re-imported from the venue by the
start-up reconciliation (:mod:`qtd.reconcile`), and denials, breaches and PnL snapshots
describe a time when nothing could trade. A clean shutdown tries one last flush and logs how
many events it could not write.

Test-only: ``QTD_TEST_STORE_READONLY=<path>`` (off by default) switches the store's SQLite
connection to ``PRAGMA query_only`` while the file ``<path>`` exists, so the suite
(``tests/chaos/test_storage_faults.py``) gets a genuine ``SQLITE_READONLY`` from SQLite on a
live agent (a read-only remount is refused while files are open for writing).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from qtd.errors import StoreError
from qtd.events import AnyEvent, Event, OrderIntent, RiskBreach, Scope, Severity, TradingState
from qtd.store import EventStore

if TYPE_CHECKING:
    from qtd.agent.daemon import Agent

log = logging.getLogger("qtd.agent.storefault")
READONLY_ENV = "QTD_TEST_STORE_READONLY"
CHECK = "store_fault"


class StoreFaults:
    """The fault state of one store (see the module docstring).

    Args:
        store: the agent's store (writes go through the base :class:`EventStore` methods).
        probe_s: seconds between attempts to write the buffer while faulted.
        readonly_flag: test-only flag file (``QTD_TEST_STORE_READONLY``).

    Attributes:
        fault: the error that started the current fault (None: the store takes writes).
        pending: events accepted while faulted, with their future seq, oldest first.
        on_fault: called once per fault, synchronously, with the error (the agent halts).
        on_recover: awaited after the buffer was written (count, seconds faulted).
        faults_seen: SQLite error texts of every fault so far.
    """

    def __init__(self, store: EventStore, *, probe_s: float = 1.0,
                 readonly_flag: str | None = None) -> None:
        self.store, self.probe_s, self.readonly_flag = store, probe_s, readonly_flag
        self.fault: StoreError | None = None
        self.pending: list[AnyEvent] = []
        self.on_fault: Callable[[StoreError], None] | None = None
        self.on_recover: Callable[[int, float], Awaitable[None]] | None = None
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
        """Enter the faulted state (once per fault): halt via :attr:`on_fault`, probe."""
        if self.fault is not None:
            return
        self.detected_ns = time.perf_counter_ns()
        self.fault, self._since = exc, time.monotonic()
        if self.on_fault is not None:
            self.on_fault(exc)  # halt first, log after
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
        self.store._failed = None  # the probe write decides
        written = 0
        while self.pending:
            batch = self.pending[:1000]
            stored = await EventStore.append_many(self.store, batch, sync=True)
            assert [e.seq for e in stored] == [e.seq for e in batch], "buffer seq drift"
            del self.pending[:len(batch)]
            written += len(batch)
            listener = getattr(self.store, "listener", None)
            if listener is not None:
                listener(stored)
        faulted_s = time.monotonic() - self._since
        self.fault = None  # no await since the buffer emptied: nothing slipped past it
        log.warning("event store takes writes again after %.1f s: %d buffered events written "
                    "in order; GLOBAL stays HALTED until an operator resumes it", faulted_s,
                    written)
        if self.on_recover is not None:
            await self.on_recover(written, faulted_s)
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
            db: Any = self.store._db
            await db.execute_fetchall(f"PRAGMA query_only={'ON' if want else 'OFF'}")
            self._query_only = want


class StoreFaultResponse:
    """What the agent does about a store fault: halt GLOBAL now, cancel open orders, page
    P1 over NATS core (again every ``republish_s`` while it lasts). Built by :func:`attach`.

    Attributes:
        detect_to_halt_ns: per fault, ns from catching the failed write to GLOBAL HALTED
            in force in the engine (``time.perf_counter_ns``).
    """

    def __init__(self, agent: Agent, faults: StoreFaults, republish_s: float = 5.0) -> None:
        self.agent, self.faults, self.republish_s = agent, faults, republish_s
        self.detect_to_halt_ns: list[int] = []
        self.breach: RiskBreach | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        faults.on_fault = self.on_fault
        faults.on_recover = self.on_recover

    def on_fault(self, exc: StoreError) -> None:
        t0 = self.faults.detected_ns or time.perf_counter_ns()
        a = self.agent
        reason = f"event store cannot write: {exc}"
        a.risk.trip(Scope.GLOBAL, "", TradingState.HALTED, reason, check=CHECK,
                    severity=Severity.P1)
        halted = a.risk.states.get(Scope.GLOBAL, "") is TradingState.HALTED
        took = time.perf_counter_ns() - t0
        self.detect_to_halt_ns.append(took)
        now = a.clock.now_ns()
        self.breach = RiskBreach(
            node=a.node, ts_event=now, ts_init=now, check=CHECK, scope=Scope.GLOBAL,
            scope_key="", limit=0.0, value=took / 1e9, unit="s detect-to-halt",
            severity=Severity.P1, action="halted", message=reason)
        log.critical("store fault: GLOBAL HALTED=%s %.3f ms after detection", halted,
                     took / 1e6, extra={"detect_to_halt_ns": took, "check": CHECK})
        self._spawn(self._cancel_open(), "store-fault-cancel")
        self._spawn(self._page(), "store-fault-page")

    async def on_recover(self, written: int, faulted_s: float) -> None:
        log.warning("store fault over after %.1f s (%d events written); GLOBAL stays "
                    "HALTED until an operator resumes it", faulted_s, written)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel_open(self) -> None:
        router = getattr(self.agent, "router", None)
        if router is None:
            return
        cids = [r.cid for r in router.proj.orders.open_orders()]
        try:
            if cids:
                await router.cancel_many(cids, "store fault: reduce risk while nothing can "
                                               "be recorded")
            await router._flush()  # the halt's events go to the buffer, in order
        except Exception:
            log.exception("store fault: cancelling open orders failed")

    async def _page(self) -> None:
        """Publish the P1 breach on the node's heartbeat subject until the fault ends."""
        a = self.agent
        while self.faults.faulted and self.breach is not None:
            link = a.link
            if link is not None:
                sent = await link.publish(a.subjects.hb(a.node),
                                          msgspec.json.encode(self.breach))
                log.info("store fault P1 published over NATS core: %s", sent)
            await asyncio.sleep(self.republish_s)


def attach(agent: Agent, store: EventStore, probe_s: float = 1.0) -> StoreFaultResponse:
    """Give ``store`` fault handling wired to ``agent`` (its ``faults`` attribute).

    Also ignores ``SIGXFSZ`` (main thread only): a write beyond the file size limit
    (``RLIMIT_FSIZE``) must fail with ``EFBIG`` — a store fault handled here — instead of
    killing the process.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    faults = StoreFaults(store, probe_s=probe_s,
                         readonly_flag=os.environ.get(READONLY_ENV) or None)
    store.faults = faults  # type: ignore[attr-defined]
    return StoreFaultResponse(agent, faults)
