"""Storage faults of the agent's event store: halt, page, buffer, probe, recover.

When a write to ``events.db`` fails (SQLite ``SQLITE_FULL`` — disk full or file size limit —,
``SQLITE_READONLY``, ``SQLITE_IOERR``), the store (:class:`~qtd.store.faults.StoreFaults`,
with :class:`StoreFaultHalt` as its policy) and :class:`StoreFaultService`:

1. **halts trading at once, in memory**: GLOBAL goes HALTED in the risk engine (a P1
   :class:`~qtd.events.RiskBreach` ``check="store_fault"`` and the
   :class:`~qtd.events.TradingStateChanged`) before the failing call returns, so every later
   order request is denied by the engine; the agent's open orders are cancelled (a cancel
   only reduces risk);
2. **never lets an order reach a broker without its intent stored**: an
   :class:`~qtd.events.OrderIntent` append is *refused* (``StoreError``, as
   :meth:`qtd.execution.OrderRouter.submit` documents: no broker saw the order);
3. **keeps every other event accepted in memory**: each is given the ``seq`` it will have
   and kept, in order, in :attr:`~qtd.store.faults.StoreFaults.pending` (fills, acks,
   denials, the halt itself, PnL snapshots); nothing is published to JetStream before it is
   written, so a seq never names two events;
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
import signal
import threading
import time
from typing import Protocol

import msgspec

from qtd.clock import Clock
from qtd.errors import StoreError
from qtd.events import RiskBreach, Scope, Severity, TradingState
from qtd.projections import Projections
from qtd.risk import RiskEngine

log = logging.getLogger("qtd.agent.storefault")
READONLY_ENV = "QTD_TEST_STORE_READONLY"
CHECK = "store_fault"


class FaultState(Protocol):
    """The store's fault state (:class:`~qtd.store.agentstore.AgentStore`)."""

    @property
    def faulted(self) -> bool: ...


class OpenOrders(Protocol):
    """What the fault response needs of the order router."""

    @property
    def proj(self) -> Projections: ...

    async def cancel_many(self, cids: list[str], reason: str) -> list[str]: ...

    async def flush_risk_events(self) -> None: ...


class CorePublisher(Protocol):
    """Best-effort NATS core publish (:class:`~qtd.agent.link.BusLink`)."""

    async def publish(self, subject: str, data: bytes) -> bool: ...


class StoreFaultHalt:
    """The store's fault policy (:class:`~qtd.store.faults.FaultPolicy`): GLOBAL HALTED in
    the engine before the failing write returns; wakes :class:`StoreFaultService`.

    Args:
        risk: the risk engine (halted in memory).
        clock: UTC ns time.
        node: node name stamped on the breach.

    Attributes:
        detect_to_halt_ns: per fault, ns from catching the failed write to GLOBAL HALTED
            in force in the engine (``time.perf_counter_ns``).
        breach: the P1 breach of the latest fault (paged while it lasts).
    """

    def __init__(self, risk: RiskEngine, clock: Clock, node: str) -> None:
        self.risk, self.clock, self.node = risk, clock, node
        self.detect_to_halt_ns: list[int] = []
        self.breach: RiskBreach | None = None
        self.tripped = asyncio.Event()

    def on_fault(self, exc: StoreError, detected_ns: int) -> None:
        t0 = detected_ns or time.perf_counter_ns()
        reason = f"event store cannot write: {exc}"
        self.risk.trip(Scope.GLOBAL, "", TradingState.HALTED, reason, check=CHECK,
                       severity=Severity.P1)
        halted = self.risk.states.get(Scope.GLOBAL, "") is TradingState.HALTED
        took = time.perf_counter_ns() - t0
        self.detect_to_halt_ns.append(took)
        now = self.clock.now_ns()
        self.breach = RiskBreach(
            node=self.node, ts_event=now, ts_init=now, check=CHECK, scope=Scope.GLOBAL,
            scope_key="", limit=0.0, value=took / 1e9, unit="s detect-to-halt",
            severity=Severity.P1, action="halted", message=reason)
        log.critical("store fault: GLOBAL HALTED=%s %.3f ms after detection", halted,
                     took / 1e6, extra={"detect_to_halt_ns": took, "check": CHECK})
        self.tripped.set()

    async def on_recover(self, written: int, faulted_s: float) -> None:
        log.warning("store fault over after %.1f s (%d events written); GLOBAL stays "
                    "HALTED until an operator resumes it", faulted_s, written)


class StoreFaultService:
    """Task ``store-fault``: after each fault, cancel the open orders and page P1 over NATS
    core (again every ``republish_s`` while it lasts).

    Args:
        halt: the store's fault policy (when to act, the breach to page).
        store: the store's fault state.
        orders: the order router.
        pager: the bus link (None: no NATS configured).
        subject: where the breach is paged (the node's heartbeat subject).
        republish_s: seconds between pages while the fault lasts.
    """

    def __init__(self, halt: StoreFaultHalt, store: FaultState, orders: OpenOrders,
                 pager: CorePublisher | None, subject: str, republish_s: float = 5.0) -> None:
        self.halt, self.store, self.orders, self.pager = halt, store, orders, pager
        self.subject, self.republish_s = subject, republish_s

    async def run(self) -> None:
        """Answer every fault, forever (cancel to stop)."""
        while True:
            await self.halt.tripped.wait()
            self.halt.tripped.clear()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._cancel_open(), name="store-fault-cancel")
                tg.create_task(self._page(), name="store-fault-page")

    async def _cancel_open(self) -> None:
        router = self.orders
        cids = [r.cid for r in router.proj.orders.open_orders()]
        try:
            if cids:
                await router.cancel_many(cids, "store fault: reduce risk while nothing can "
                                               "be recorded")
            await router.flush_risk_events()  # the halt's events go to the buffer, in order
        except Exception:
            log.exception("store fault: cancelling open orders failed")

    async def _page(self) -> None:
        """Publish the P1 breach on the node's heartbeat subject until the fault ends."""
        while self.store.faulted and self.halt.breach is not None:
            if self.pager is not None:
                sent = await self.pager.publish(self.subject,
                                                msgspec.json.encode(self.halt.breach))
                log.info("store fault P1 published over NATS core: %s", sent)
            await asyncio.sleep(self.republish_s)


def ignore_sigxfsz() -> None:
    """Ignore ``SIGXFSZ`` (main thread only): a write beyond the file size limit
    (``RLIMIT_FSIZE``) must fail with ``EFBIG`` — a store fault handled here — instead of
    killing the process."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
