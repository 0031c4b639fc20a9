"""The leader daemon: a built kernel and its services under one task group.

Build (:func:`qtd.leader.build.build`): fleet.db opened and replayed, NATS connected, every
part and service constructed. Start (:meth:`Leader.start`): core subscriptions — kill
acknowledgements and kills published by others (:meth:`KillSwitchController.start`), agents'
heartbeats and PnL ticks, and the leader's request/reply commands on
``<prefix>.ctl.leader.<verb>`` (``resume``, ``ack``, ``alerts``, ``kill``, ``status``,
``versions``, ``caps``, ``caps_raise``: :mod:`qtd.leader.dispatch`) — then one task group:
``ingest`` (JetStream → fleet.db → view), ``checks`` (caps and liveness every
``check_interval_s``), ``heartbeat`` (``<prefix>.hb.leader`` every ``heartbeat_interval_s``),
``kill-sync``, ``notify`` (the page dispatcher), with ``[lease] enabled`` ``lease``; then with
``[web] enabled`` the status page (``qtd-leader-web``: uvicorn in this event loop). Stop:
status page stopped (WebSockets closed, requests drained) → stop flag → tasks end their
loop → pending audit/page tasks get a few seconds → NATS drained → fleet.db closed.

With ``[lease] enabled`` the ``lease`` task competes for the leader lease
(:mod:`qtd.leader.lease`). Until it holds the lease the leader is a warm standby
(:attr:`Leader.active` False): it ingests into its own fleet.db and consumer and keeps its
view, but its caps are disarmed, it raises no alert, sends no page, publishes no heartbeat
or kill and leaves commands to the active leader. Taking over arms the caps (a self-trade seen
meanwhile fires at once), re-reads the kill state from KV and publishes a heartbeat; losing
the lease hands open alerts over (their P1 repeats stop here).

Only the CLI (:mod:`qtd.commands.leader`) imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from nats.aio.client import Client

from qtd.aio import TaskSet, cancel_and_wait
from qtd.bus import Subjects
from qtd.clock import Clock
from qtd.leader.alerts import AlertBook
from qtd.leader.build import LeaderServices, build, loops
from qtd.leader.caps import FleetCaps
from qtd.leader.config import LeaderConfig
from qtd.leader.dispatch import CommandDispatcher
from qtd.leader.fleetdb import LEADER_NODE, FleetDB
from qtd.leader.ingest import Ingestor
from qtd.leader.kernel import LeaderKernel
from qtd.leader.kill_switch import KillSwitchController
from qtd.leader.lease import LeaderLease
from qtd.leader.status import FleetStatus
from qtd.leader.versions import VersionBoard
from qtd.leader.view import FleetView
from qtd.notify import Notifier, Sender
from qtd.quality.monitor import QualityMonitor


class Leader:
    """The leader process: a built kernel and its services, and their lifecycle
    (:meth:`start`, :meth:`wait`, :meth:`stop`; or ``async with``). Use
    :func:`start_leader` or :func:`running_leader` to build and start one.

    Args:
        kernel: the built parts (:mod:`qtd.leader.kernel`).
        services: the built services (:mod:`qtd.leader.build`).

    Attributes:
        kernel, services: as given; the most used parts are also properties (``view``,
            ``alerts``, ``kill``, ``db``, ...).
    """

    def __init__(self, kernel: LeaderKernel, services: LeaderServices) -> None:
        self.kernel, self.services = kernel, services
        self._stop = asyncio.Event()
        self._main: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Leader:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Subscribe, start the task group, then the status page (``[web] enabled``).

        Raises:
            ConfigError: the status page cannot listen.
            nats.errors.Error: a subscription failed.
        Either way the leader is stopped again (NATS drained, fleet.db closed).
        """
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        k, s = self.kernel, self.services
        await k.kill.start()
        await k.nc.subscribe(k.subjects.hb_all, cb=s.feeds.on_hb)
        await k.nc.subscribe(k.subjects.pnl_all, cb=s.feeds.on_pnl)
        await k.nc.subscribe(f"{k.subjects.prefix}.ctl.{LEADER_NODE}.*", cb=s.dispatch.on_msg)
        await k.nc.flush()
        self._main = asyncio.create_task(self._run(), name="qtd-leader")
        if s.page is not None:
            from qtd.leader.websource import LeaderSource
            await s.page.start(LeaderSource(self, self.cfg.fleet_db))

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for name, coro in loops(self.kernel, self.services, self._stop):
                tg.create_task(coro, name=name)

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the status page and the tasks, drain NATS, close fleet.db."""
        k = self.kernel
        if self.services.page is not None:
            await self.services.page.stop(timeout_s)
        self._stop.set()
        if self._main is not None:
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(self._main)
            except TimeoutError:
                await cancel_and_wait(self._main)
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
        await k.tasks.drain(timeout_s)
        with contextlib.suppress(Exception):
            await k.nc.drain()
        await k.db.close()

    async def wait(self) -> None:
        """Until the tasks end (after :meth:`stop`, or when one fails: re-raised)."""
        if self._main is not None:
            await self._main

    @property
    def active(self) -> bool:
        """This leader acts (pages, trips caps, kills, answers commands, heartbeats):
        always without ``[lease]``, else while it holds the lease (:mod:`qtd.leader.lease`)."""
        return self.kernel.standing.is_active()

    @property
    def web_port(self) -> int | None:
        """The status page's bound TCP port (None: not serving)."""
        return None if self.services.page is None else self.services.page.port

    @property
    def web_url(self) -> str | None:
        """The status page's URL, ``http://host:port/`` (None: not serving)."""
        return None if self.services.page is None else self.services.page.url

    # --- the parts (read-only) ------------------------------------------------------------

    @property
    def cfg(self) -> LeaderConfig:
        """The leader config (kernel)."""
        return self.kernel.cfg

    @property
    def clock(self) -> Clock:
        """The leader clock (kernel)."""
        return self.kernel.clock

    @property
    def subjects(self) -> Subjects:
        """The subject builder (kernel)."""
        return self.kernel.subjects

    @property
    def db(self) -> FleetDB:
        """Fleet.db (kernel)."""
        return self.kernel.db

    @property
    def nc(self) -> Client:
        """The NATS client (kernel)."""
        return self.kernel.nc

    @property
    def view(self) -> FleetView:
        """The live fleet view (kernel)."""
        return self.kernel.view

    @property
    def caps(self) -> FleetCaps:
        """The fleet caps (kernel)."""
        return self.kernel.caps

    @property
    def versions(self) -> VersionBoard:
        """Deployed versions (kernel)."""
        return self.kernel.versions

    @property
    def quality(self) -> QualityMonitor:
        """Execution quality and surveillance (kernel)."""
        return self.kernel.quality

    @property
    def notifier(self) -> Notifier:
        """The pager (kernel)."""
        return self.kernel.notifier

    @property
    def tasks(self) -> TaskSet:
        """The background tasks (kernel)."""
        return self.kernel.tasks

    @property
    def lease(self) -> LeaderLease | None:
        """The lease (None without ``[lease] enabled``) (kernel)."""
        return self.kernel.lease

    @property
    def alerts(self) -> AlertBook:
        """Open alerts (kernel)."""
        return self.kernel.alerts

    @property
    def kill(self) -> KillSwitchController:
        """The kill switch (kernel)."""
        return self.kernel.kill

    @property
    def ingestor(self) -> Ingestor:
        """The ingest (service)."""
        return self.services.ingestor

    @property
    def status(self) -> FleetStatus:
        """The fleet snapshot (``status.snapshot()``) (service)."""
        return self.services.status

    @property
    def dispatch(self) -> CommandDispatcher:
        """The operator commands (service)."""
        return self.services.dispatch


async def start_leader(cfg: LeaderConfig, *, clock: Clock | None = None,
                       sender: Sender | None = None) -> Leader:
    """Build and start a leader (:meth:`Leader.stop` it).

    Raises:
        StoreError, ConfigError, OperationalError, TemporaryError: as
            :func:`qtd.leader.build.build` and :meth:`Leader.start`.
    """
    kernel, services = await build(cfg, clock=clock, sender=sender)
    leader = Leader(kernel, services)
    await leader.start()
    return leader


@contextlib.asynccontextmanager
async def running_leader(cfg: LeaderConfig, *, clock: Clock | None = None,
                         sender: Sender | None = None) -> AsyncIterator[Leader]:
    """``async with running_leader(cfg) as leader``: built, started, stopped at the end."""
    leader = await start_leader(cfg, clock=clock, sender=sender)
    try:
        yield leader
    finally:
        await leader.stop()
