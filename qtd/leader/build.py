"""Build the leader: its kernel (:mod:`qtd.leader.kernel`), then its services
(:mod:`qtd.leader.services`), each given only what it uses. Nothing runs yet: the
lifecycle is :class:`qtd.leader.daemon.Leader`'s.

A new service is a class in :mod:`qtd.leader.services` (or its own module) built here from
kernel parts, a field of :class:`LeaderServices`, and, if it loops, one line in
:func:`loops`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from decimal import Decimal
from functools import partial
from typing import Any

import msgspec

from qtd.clock import Clock, LiveClock
from qtd.leader.caps import FleetCaps
from qtd.leader.config import LeaderConfig, consumer_name
from qtd.leader.dispatch import CommandDispatcher
from qtd.leader.ingest import Ingestor
from qtd.leader.kernel import LeaderKernel, build_kernel
from qtd.leader.liveness import LivenessMonitor
from qtd.leader.services import (
    AgentFeeds,
    Beacon,
    CapTrips,
    Checks,
    FleetEvents,
    Takeover,
    every,
)
from qtd.leader.status import FleetStatus
from qtd.leader.statuspage import StatusPage
from qtd.leader.view import FleetView
from qtd.notify import Notifier, Sender
from qtd.quality.monitor import QualityMonitor
from qtd.tradingday import fleet_trading_day

KILL_SYNC_S = 1.0
"""Seconds between reads of the kill set: a kill removed by ``qtd kill --release`` (or
added while the core broadcast was missed) shows on the page within this."""


class LeaderServices:
    """The leader's services, built (see :mod:`qtd.leader.services`).

    Attributes:
        ingestor: JetStream → fleet.db → :attr:`events`.
        events: each ingested batch. trips: fired caps. checks: the periodic checks.
        liveness: heartbeat and data liveness. beacon: the leader's heartbeat.
        feeds: agents' heartbeats and PnL ticks. takeover: the lease's listener.
        status: the fleet snapshot. dispatch: the operator commands.
        page: the status page (None without ``[web] enabled``).
    """

    def __init__(self, *, ingestor: Ingestor, events: FleetEvents, trips: CapTrips,
                 checks: Checks, liveness: LivenessMonitor, beacon: Beacon, feeds: AgentFeeds,
                 takeover: Takeover, status: FleetStatus, dispatch: CommandDispatcher,
                 page: StatusPage | None) -> None:
        self.ingestor, self.events, self.trips, self.checks = ingestor, events, trips, checks
        self.liveness, self.beacon, self.feeds, self.takeover = liveness, beacon, feeds, takeover
        self.status, self.dispatch, self.page = status, dispatch, page


async def build(cfg: LeaderConfig, *, clock: Clock | None = None,
                sender: Sender | None = None) -> tuple[LeaderKernel, LeaderServices]:
    """The leader's kernel and services for ``cfg`` (fleet.db open, NATS connected).

    Args:
        cfg: the leader config.
        clock: leader clock (default wall clock).
        sender: page delivery (default Apprise).

    Raises:
        StoreError: fleet.db cannot be opened.
        ConfigError, OperationalError, TemporaryError: NATS setup failed.
    """
    clock = clock or LiveClock()
    fleet = cfg.fleet
    day = fleet_trading_day(fleet)
    view = FleetView(
        trading_day=day, capital=Decimal(repr(fleet.capital)), currency=fleet.currency,
        clock=clock, heartbeat_timeout_s=cfg.liveness.heartbeat_timeout_s,
        pnl_stale_s=fleet.pnl_stale_s, keep_terminal_orders=cfg.ingest.terminal_orders_kept)
    kernel = await build_kernel(
        cfg, clock=clock, view=view, caps=FleetCaps(cfg.caps, clock, day),
        quality=QualityMonitor(cfg.quality, day, clock, fleet.currency),
        notifier=Notifier(cfg.notify, sender=sender, clock=clock))
    return kernel, services(kernel)


def services(k: LeaderKernel) -> LeaderServices:
    """Build the services on a kernel."""
    trips = CapTrips(kill=k.kill, db=k.db, alerts=k.alerts, standing=k.standing,
                     tasks=k.tasks, clock=k.clock)
    events = FleetEvents(view=k.view, caps=k.caps, versions=k.versions, alerts=k.alerts,
                         quality=k.quality, standing=k.standing, trips=trips)
    ingest = msgspec.structs.replace(k.cfg.ingest, durable=consumer_name(k.cfg))
    ingestor = Ingestor(k.js, k.subjects, ingest, k.db, events.on_events,
                        on_suspect=k.alerts.on_suspect)
    liveness = LivenessMonitor(k.cfg.liveness, k.view, k.alerts)
    beacon = Beacon(nc=k.nc, subjects=k.subjects, standing=k.standing, clock=k.clock,
                    view=k.view, db=k.db)
    status = FleetStatus(k.view, k.caps, k.alerts.views, ingestor.stats)
    return LeaderServices(
        ingestor=ingestor, events=events, trips=trips, liveness=liveness, beacon=beacon,
        checks=Checks(view=k.view, caps=k.caps, liveness=liveness, versions=k.versions,
                      quality=k.quality, db=k.db, standing=k.standing, trips=trips,
                      saved_peak=k.saved_peak),
        feeds=AgentFeeds(view=k.view, alerts=k.alerts, standing=k.standing,
                         subjects=k.subjects),
        takeover=Takeover(caps=k.caps, kill=k.kill, alerts=k.alerts, beacon=beacon,
                          trips=trips, instance=k.cfg.lease.instance),
        status=status,
        dispatch=CommandDispatcher(
            kill=k.kill, alerts=k.alerts, caps=k.caps, view=k.view, status=status,
            versions=k.versions, db=k.db, on_breaches=trips.handle, standing=k.standing,
            nc=k.nc, subjects=k.subjects, instance=k.cfg.lease.instance),
        page=StatusPage(k.cfg.web) if k.cfg.web.enabled else None)


def loops(k: LeaderKernel, s: LeaderServices, stop: asyncio.Event
          ) -> list[tuple[str, Coroutine[Any, Any, None]]]:
    """The leader's long-running tasks, ``(name, coroutine)``, each ending once ``stop`` is
    set: ingest, checks, heartbeat, kill sync, the pager and (``[lease] enabled``) the
    lease."""
    live = k.cfg.liveness
    out: list[tuple[str, Coroutine[Any, Any, None]]] = [
        ("qtd-leader-ingest", s.ingestor.run(stop)),
        ("qtd-leader-checks", every(live.check_interval_s, s.checks.check, stop)),
        ("qtd-leader-heartbeat", every(live.heartbeat_interval_s, s.beacon.beat, stop)),
        ("qtd-leader-kill-sync", every(KILL_SYNC_S, partial(k.kill.sync, watch=True), stop)),
        ("qtd-leader-notify", k.notifier.run(stop)),
    ]
    if k.lease is not None:
        out.append(("qtd-leader-lease", k.lease.run(stop, s.takeover.on_lease)))
    return out
