"""The leader's services: what runs on the kernel (:mod:`qtd.leader.kernel`).

Each service gets only the parts it uses, at construction:

* :class:`CapTrips` — a fired cap: kill at its level, audit, page P1.
* :class:`FleetEvents` — each ingested batch into the view, the caps, the versions, the
  agents' own alerts and the quality monitor.
* :class:`Checks` — every ``check_interval_s``: caps, liveness, versions, quality, peak.
* :class:`Beacon` — the leader's heartbeat on ``<prefix>.hb.leader``.
* :class:`AgentFeeds` — the agents' heartbeats (and store-fault breaches) and PnL ticks.
* :class:`Takeover` — the lease changed hands: arm or disarm, re-read the kills, hand over.

The ingest (:class:`~qtd.leader.ingest.Ingestor`), the liveness monitor, the command
dispatcher (:mod:`qtd.leader.dispatch`), the pager and the lease are services too; the
task group that runs them is :class:`qtd.leader.daemon.Leader`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, Protocol

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from qtd import __version__
from qtd.aio import TaskSet
from qtd.bus import Subjects
from qtd.bus.rejects import REJECTED
from qtd.clock import Clock
from qtd.events import (
    DECODE_ERRORS,
    AnyEvent,
    Heartbeat,
    PnLSnapshot,
    RiskBreach,
    Severity,
    TradingState,
    TradingStateChanged,
)
from qtd.leader.caps import Breach, FleetCaps
from qtd.leader.dispatch import AuditLog, KillSwitch
from qtd.leader.fleetdb import LEADER_NODE, FleetDB
from qtd.leader.kernel import PEAK_KEY
from qtd.leader.lease import Standing
from qtd.leader.liveness import LivenessMonitor
from qtd.leader.versions import VersionBoard
from qtd.leader.view import FleetView
from qtd.quality.monitor import QualityMonitor

log = logging.getLogger("qtd.leader")
_hb_decoder = msgspec.json.Decoder(Heartbeat | RiskBreach)  # RiskBreach: store faults
_pnl_decoder = msgspec.json.Decoder(PnLSnapshot)


class AlertRaiser(Protocol):
    """Opens (or escalates) an alert (:meth:`~qtd.leader.alerts.AlertBook.raise_alert`)."""

    def raise_alert(self, key: str, severity: Severity, title: str, **fields: Any) -> object:
        ...


class AgentAlerts(Protocol):
    """Pages the agents' own trips (:class:`~qtd.leader.alerts.AlertBook`)."""

    def on_agent_event(self, ev: AnyEvent) -> object: ...

    def on_agent_breach(self, b: RiskBreach) -> object: ...


class HandOver(Protocol):
    """Gives open alerts up when the lease is lost."""

    def hand_over(self) -> None: ...


class KillSync(Protocol):
    """Re-reads the kill set from KV (:meth:`~qtd.leader.kill_switch.KillSwitchController.sync`)."""

    async def sync(self, *, watch: bool = False) -> None: ...


async def every(period_s: float, fn: Callable[[], Awaitable[None]], stop: asyncio.Event
                ) -> None:
    """Await ``fn`` every ``period_s`` seconds until ``stop`` is set; a failing tick is
    logged and the loop goes on."""
    while not stop.is_set():
        try:
            await fn()
        except Exception:  # one bad tick must not end the leader's checks
            log.exception("leader.tick_failed fn=%s", getattr(fn, "__name__", fn))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(period_s):
                await stop.wait()


class CapTrips:
    """A fired fleet cap: kill at its level first, then audit and page P1 (active only).

    Args:
        kill: the kill switch. db: the audit. alerts: the page. standing: acts or not.
        tasks: where each trip runs. clock: event timestamps.
    """

    def __init__(self, *, kill: KillSwitch, db: AuditLog, alerts: AlertRaiser,
                 standing: Standing, tasks: TaskSet, clock: Clock) -> None:
        self._kill, self._db, self._alerts = kill, db, alerts
        self._standing, self._tasks, self._clock = standing, tasks, clock

    def handle(self, breaches: list[Breach]) -> None:
        """Trip each breach in its own task."""
        for b in breaches:
            self._tasks.spawn(self.trip(b), f"qtd-leader-trip-{b.cap}")

    async def trip(self, b: Breach) -> None:
        """A cap fired: kill at its level first, then audit and page P1."""
        if not self._standing.is_active():
            return
        scope, key = b.scope()
        reason = f"fleet cap {b.cap}: {b.message}"
        await self._kill.trigger_kill(scope, key, reason, flatten=b.flatten, source="leader",
                                      cap=b.trip_key)
        now = self._clock.now_ns()
        await self._db.append_local([RiskBreach(
            node=LEADER_NODE, bot=b.bot, ts_event=now, ts_init=now, check=b.cap, scope=scope,
            scope_key=key, limit=b.limit, value=b.value, unit=b.unit, severity=Severity.P1,
            action="kill", symbol=b.symbol, message=b.message)])
        self._alerts.raise_alert(
            f"cap:{b.cap}:{key}", Severity.P1, f"fleet cap {b.cap} tripped: kill {scope} {key}",
            trigger=b.cap, limit=b.limit, value=b.value, unit=b.unit, node=b.node, bot=b.bot,
            symbol=b.symbol, message=b.message)


class FleetEvents:
    """Each ingested batch (the ingest's ``on_events``)."""

    def __init__(self, *, view: FleetView, caps: FleetCaps, versions: VersionBoard,
                 alerts: AgentAlerts, quality: QualityMonitor, standing: Standing,
                 trips: CapTrips) -> None:
        self._view, self._caps, self._versions, self._alerts = view, caps, versions, alerts
        self._quality, self._standing, self._trips = quality, standing, trips

    def on_events(self, events: list[AnyEvent]) -> None:
        """Apply a committed batch; trip what it breached; page the agents' own trips."""
        breaches: list[Breach] = []
        for ev in events:
            self._view.apply(ev)
            breaches += self._caps.on_event(ev)
            self._versions.on_event(ev)
            if type(ev) in (RiskBreach, TradingStateChanged) and self._standing.is_active():
                self._alerts.on_agent_event(ev)
        self._trips.handle(breaches)
        self._quality.on_events(events)


class Checks:
    """The periodic checks: caps, liveness (active only), versions, quality (active only),
    and the peak equity stored in fleet.db when it rises.

    Args:
        saved_peak: the peak stored at start, currency.
    """

    def __init__(self, *, view: FleetView, caps: FleetCaps, liveness: LivenessMonitor,
                 versions: VersionBoard, quality: QualityMonitor, db: FleetDB,
                 standing: Standing, trips: CapTrips, saved_peak: Decimal) -> None:
        self._view, self._caps, self._liveness, self._versions = view, caps, liveness, versions
        self._quality, self._db, self._standing, self._trips = quality, db, standing, trips
        self._saved_peak = saved_peak

    async def check(self) -> None:
        """One round of checks."""
        self._trips.handle(self._caps.evaluate(self._view))
        if self._standing.is_active():  # a standby pages nothing
            self._liveness.check()
        await self._versions.check()
        if self._standing.is_active():
            await self._quality.check()
        if self._view.peak_equity > self._saved_peak:
            self._saved_peak = self._view.peak_equity
            await self._db.set_meta(PEAK_KEY, str(self._saved_peak))


class Beacon:
    """The leader's heartbeat (active only: agents must see no leader rather than a
    standby): HALTED while a kill is active, with fleet.db's last stream sequence."""

    def __init__(self, *, nc: Client, subjects: Subjects, standing: Standing, clock: Clock,
                 view: FleetView, db: FleetDB) -> None:
        self._nc, self._subjects, self._standing = nc, subjects, standing
        self._clock, self._view, self._db = clock, view, db

    async def beat(self) -> None:
        """Publish one heartbeat (nothing on a standby)."""
        if not self._standing.is_active():
            return
        now = self._clock.now_ns()
        state = TradingState.HALTED if self._view.kill.active else TradingState.ACTIVE
        hb = Heartbeat(node=LEADER_NODE, ts_event=now, ts_init=now, role="leader",
                       state=state, last_seq=self._db.stream_seq, version=__version__)
        await self._nc.publish(self._subjects.hb_leader, msgspec.json.encode(hb))


class AgentFeeds:
    """Core NATS from the agents: heartbeats (a store-fault breach rides on the heartbeat
    subject, its outbox cannot carry it) and PnL ticks."""

    def __init__(self, *, view: FleetView, alerts: AgentAlerts, standing: Standing,
                 subjects: Subjects) -> None:
        self._view, self._alerts, self._standing, self._subjects = (
            view, alerts, standing, subjects)

    async def on_hb(self, msg: Msg) -> None:
        """A heartbeat (or a store-fault breach) on ``<prefix>.hb.<node>``."""
        if msg.subject == self._subjects.hb_leader:
            return
        try:
            hb = _hb_decoder.decode(msg.data)
        except DECODE_ERRORS as exc:
            REJECTED.reject("heartbeat", msg.subject, exc, log)
            return
        if isinstance(hb, RiskBreach):  # a store fault: the agent's outbox cannot carry it
            if msg.subject == f"{self._subjects.prefix}.hb.{hb.node}":
                self._view.on_agent_page(hb)
                if self._standing.is_active():
                    self._alerts.on_agent_breach(hb)
            return
        self._view.on_heartbeat(hb)

    async def on_pnl(self, msg: Msg) -> None:
        """A PnL tick."""
        try:
            self._view.on_pnl(_pnl_decoder.decode(msg.data))
        except DECODE_ERRORS as exc:
            REJECTED.reject("pnl", msg.subject, exc, log)


class Takeover:
    """The lease's listener: taking over arms the caps (a self-trade seen meanwhile fires at
    once), re-reads the kill state from KV and publishes a heartbeat; losing the lease hands
    open alerts over (their P1 repeats stop here)."""

    def __init__(self, *, caps: FleetCaps, kill: KillSync, alerts: HandOver,
                 beacon: Beacon, trips: CapTrips, instance: str) -> None:
        self._caps, self._kill, self._alerts = caps, kill, alerts
        self._beacon, self._trips, self._instance = beacon, trips, instance

    async def on_lease(self, active: bool) -> None:
        """This leader became active (True) or stopped being active (False)."""
        log.warning("leader.%s instance=%s", "active" if active else "standby",
                    self._instance)
        self._trips.handle(self._caps.arm(active))
        if active:
            await self._kill.sync()
            await self._beacon.beat()
        else:
            self._alerts.hand_over()
