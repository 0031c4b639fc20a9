"""The leader's kernel: its parts, built once, in order, before anything runs.

:func:`build_kernel` opens fleet.db, connects to NATS, makes sure the JetStream stream and
the control bucket exist, builds the lease (with ``[lease] enabled``), the alert book, the
version board, replays fleet.db into the view, the caps, the versions and the quality
monitor, and builds the kill switch. Every part receives its collaborators at
construction; nothing is wired afterwards. The services that run on the kernel are in
:mod:`qtd.leader.services`; the process lifecycle in :mod:`qtd.leader.daemon`.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal

from nats.aio.client import Client
from nats.js import JetStreamContext

from qtd.aio import TaskSet
from qtd.bus import Subjects, connect, ensure_jetstream
from qtd.clock import Clock
from qtd.deploy.fleet import Fleet
from qtd.events import CapOverride
from qtd.leader.alerts import AlertBook
from qtd.leader.caps import FleetCaps
from qtd.leader.config import LeaderConfig
from qtd.leader.fleetdb import FleetDB
from qtd.leader.kill_switch import KillSwitchController
from qtd.leader.lease import AlwaysActive, LeaderLease, Standing, lease_bucket
from qtd.leader.versions import NATS_ERRORS, VersionBoard
from qtd.leader.view import FleetView
from qtd.notify import Notifier
from qtd.quality.monitor import QualityMonitor

log = logging.getLogger("qtd.leader")
PEAK_KEY = "peak_equity"


class LeaderKernel:
    """The leader's built parts (see the module docstring). Read-only after construction.

    Attributes:
        cfg: the leader config; clock: the leader clock; subjects: subject builder.
        db: fleet.db. nc / js: the bus link (connected client, its JetStream context).
        view: the fleet view. caps: the fleet caps. versions: deployed versions.
        quality: execution quality and surveillance. notifier: the pager.
        tasks: owner of the leader's background tasks.
        lease: the leader lease (None without ``[lease] enabled``).
        standing: whether this leader acts now (the lease, or :class:`AlwaysActive`).
        alerts: open alerts. kill: the kill switch.
        saved_peak: the peak equity stored in fleet.db at start, currency.
    """

    def __init__(self, *, cfg: LeaderConfig, clock: Clock, subjects: Subjects, db: FleetDB,
                 nc: Client, js: JetStreamContext, view: FleetView, caps: FleetCaps,
                 versions: VersionBoard, quality: QualityMonitor, notifier: Notifier,
                 tasks: TaskSet, lease: LeaderLease | None, standing: Standing,
                 alerts: AlertBook, kill: KillSwitchController, saved_peak: Decimal) -> None:
        self.cfg, self.clock, self.subjects, self.db = cfg, clock, subjects, db
        self.nc, self.js, self.view, self.caps = nc, js, view, caps
        self.versions, self.quality, self.notifier, self.tasks = versions, quality, notifier, tasks
        self.lease, self.standing, self.alerts, self.kill = lease, standing, alerts, kill
        self.saved_peak = saved_peak


async def build_kernel(cfg: LeaderConfig, *, clock: Clock, view: FleetView, caps: FleetCaps,
                       quality: QualityMonitor, notifier: Notifier) -> LeaderKernel:
    """Open, connect, replay and build (see the module docstring).

    Args:
        cfg: the leader config.
        clock: the leader clock.
        view / caps / quality / notifier: built from ``cfg`` (:func:`qtd.leader.build.build`).

    Raises:
        StoreError: fleet.db cannot be opened.
        ConfigError, OperationalError, TemporaryError: NATS setup failed (fleet.db and the
            connection are closed again).
    """
    db = await FleetDB.open(cfg.fleet_db, fsync=cfg.ingest.fsync)
    nc: Client | None = None
    try:
        nc = await connect(cfg.bus)
        return await _build(cfg, clock, db, nc, view, caps, quality, notifier)
    except BaseException:
        if nc is not None:
            await nc.close()
        await db.close()
        raise


async def _build(cfg: LeaderConfig, clock: Clock, db: FleetDB, nc: Client, view: FleetView,
                 caps: FleetCaps, quality: QualityMonitor, notifier: Notifier
                 ) -> LeaderKernel:
    subjects = Subjects(cfg.bus.prefix)
    js = nc.jetstream()
    setup = await ensure_jetstream(js, subjects.prefix)
    lease = (LeaderLease(await lease_bucket(js, cfg.lease), cfg.lease, clock)
             if cfg.lease.enabled else None)
    standing: Standing = lease if lease is not None else AlwaysActive()
    tasks = TaskSet()
    alerts = AlertBook(view=view, db=db, notifier=notifier, clock=clock, tasks=tasks,
                       recent_events=cfg.notify.recent_events, is_active=standing.is_active)
    versions = VersionBoard(clock, alerts=alerts, fleet=await open_deploy_fleet(js))
    saved_peak = await replay(db, view, caps, versions, quality)
    if lease is not None:  # standby until the lease is ours
        caps.arm(False)
    await quality.attach(
        alerts=alerts, db=db, sender=notifier.sender, tasks=tasks,
        urls=cfg.notify.destinations.get(cfg.quality.daily_severity, []),
        equity=lambda: bot_pnl(view))
    kill = KillSwitchController(
        nc=nc, kv=setup.control, subjects=subjects, db=db, view=view, alerts=alerts,
        caps=caps, clock=clock, tasks=tasks, ack_timeout_s=cfg.kill.ack_timeout_s,
        durable_timeout_s=cfg.kill.durable_timeout_s,
        is_active=standing.is_active)
    return LeaderKernel(cfg=cfg, clock=clock, subjects=subjects, db=db, nc=nc, js=js,
                        view=view, caps=caps, versions=versions, quality=quality,
                        notifier=notifier, tasks=tasks, lease=lease, standing=standing,
                        alerts=alerts, kill=kill, saved_peak=saved_peak)


async def open_deploy_fleet(js: JetStreamContext, replicas: int = 1) -> Fleet | None:
    """The deploy buckets (created if missing), or None when NATS cannot give them (the
    version board then knows only what nodes report)."""
    try:
        return await asyncio.wait_for(Fleet.open(js, replicas), 10.0)
    except NATS_ERRORS as exc:
        log.warning("leader.versions deploy buckets unavailable: %r", exc)
        return None


async def replay(db: FleetDB, view: FleetView, caps: FleetCaps, versions: VersionBoard,
                 quality: QualityMonitor) -> Decimal:
    """Rebuild the in-memory state from fleet.db: every stored event into the view, the
    caps, the versions and the quality monitor (no alert, no trip); today's cap overrides;
    the stored peak equity. Returns the stored peak (currency; 0 when none)."""
    n = 0
    async for batch in db.replay_batches():
        for ev in batch:
            view.apply(ev)
            caps.on_event(ev, live=False)
            versions.on_event(ev, live=False)
        quality.replay(batch)
        n += len(batch)
    for ov in await db.local_events(CapOverride.__name__):
        if isinstance(ov, CapOverride):
            caps.apply_override(ov)
    saved = Decimal(0)
    peak = await db.get_meta(PEAK_KEY)
    if peak is not None:
        saved = max(view.capital, Decimal(peak))
        view.note_peak(saved)
    log.info("leader.rebuilt events=%d stream_seq=%d", n, db.stream_seq)
    return saved


def bot_pnl(view: FleetView) -> dict[str, float]:
    """``node/bot`` -> realized + unrealized PnL now (the quality monitor's decay alert)."""
    return {f"{b.node}/{b.bot}": b.agg.realized + b.agg.unrealized
            for b in view.snapshot().bots}
