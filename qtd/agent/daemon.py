"""The agent daemon: one per server, one asyncio task group, every task named.

Start-up, in this order (nothing trades before reconciliation):

1. open the store (``<state_dir>/events.db``); 2. rebuild projections from it; 3. build the
risk engine (with the agent's ``[trading_day]``) and seed it with the rebuilt positions and
open orders; 4. connect every account in parallel, each within its ``connect_timeout_s`` (one
failing never blocks another's bots: :mod:`qtd.agent.accounts`); 5. **reconcile** each
account with its broker (:mod:`qtd.reconcile`; afterwards every ``reconcile_interval_s`` and
after every reconnect, with the auto-flatten policy: :mod:`qtd.agent.reconciling`); 6. start
the NATS link in the background and wait up to ``bus_wait_s`` for it, reading the kill key
(a kill set while the agent was down is applied now: the agent starts HALTED); the local kill
file is checked too; 7. admit the bots
of the config and those the routes yield (:mod:`qtd.agent.routed`; refuse anything not
admitted); 8. start bots under the supervisor — a bot whose session is closed waits for its
open (:mod:`qtd.agent.schedule`) — then the market data feeds (replays; live feeds for bots
on venue accounts); 9. ``READY=1`` to systemd.

Build, then run: :func:`build_agent` does steps 1-5 (:func:`qtd.agent.kernel.build_kernel`:
an immutable :class:`~qtd.agent.kernel.Kernel`) and builds every service from it with the
narrow interfaces it needs (:mod:`qtd.agent.ports`); :meth:`Agent.run` does steps 6-9 in one
task group (:class:`~qtd.agent.tasks.AgentTasks`) and the shutdown.

Shutdown (SIGTERM/SIGINT set :attr:`Agent.stop`): ``STOPPING=1``; bots stop at a safe point;
open orders are cancelled if ``on_shutdown = "cancel"``; the final outbox flush and the NATS
drain run with ``shutdown_timeout_s``; every remaining task is cancelled; the store closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence

from qtd import sdnotify
from qtd.admit.config import LoadedBot
from qtd.agent.accounts import account_symbols, close_brokers, connect_account
from qtd.agent.bots import Admitted, Bots
from qtd.agent.config import AgentConfig
from qtd.agent.control_verbs import Control
from qtd.agent.deploy_watch import Rollouts
from qtd.agent.kernel import Kernel, build_kernel
from qtd.agent.link import BusLink
from qtd.agent.loops import KillFileWatch, Telemetry
from qtd.agent.market import FeedKey
from qtd.agent.reconciling import AccountReconcilers
from qtd.agent.routed import routed_bots
from qtd.agent.schedule import Schedule, plan_for
from qtd.agent.storebehind import StoreBehindRefusal
from qtd.agent.storefault import StoreFaultService
from qtd.agent.supervisor import BotSlot
from qtd.agent.tasks import AgentTasks
from qtd.agent.telemetry import FailSafe
from qtd.agent.wiring import admit_bots, bot_files, bot_symbols, feed_key
from qtd.brokers.base import Broker
from qtd.clock import Clock, LiveClock
from qtd.errors import StoreError
from qtd.events import AnyEvent, Fill
from qtd.feeds import MarketData
from qtd.reconcile import reconcile_account
from qtd.recovery import StoreBehind
from qtd.runner import BotRunner

log = logging.getLogger("qtd.agent")


async def build_agent(cfg: AgentConfig, *, clock: Clock | None = None,
                      items: Mapping[str, list[MarketData]] | None = None,
                      stop: asyncio.Event | None = None,
                      on_stored: Callable[[Sequence[AnyEvent]], None] | None = None) -> Agent:
    """Steps 1-5 and every service, fully constructed; nothing runs yet.

    Args:
        cfg: the validated config.
        clock: UTC ns time (default wall clock).
        items: data set name → items, replacing bundled data (tests, benchmarks).
        stop: the shutdown event (signal handlers installed before the build set it).
        on_stored: also called with every batch of stored events (benchmarks).

    Raises:
        StoreError: the store cannot be opened or fails verification (it is closed
            again, so the process exits instead of waiting on SQLite's thread).
        ConfigError: the risk file does not fit the agent config.
    """
    kernel = await build_kernel(cfg, clock or LiveClock(), on_stored)
    try:
        return Agent(kernel, items=items, stop=stop)
    except BaseException:
        await close_brokers(kernel.brokers)
        await kernel.store.close()
        raise


class Agent:
    """One agent process (see the module docstring); built by :func:`build_agent`.

    Args:
        kernel: steps 1-5, done.
        items: data set name → items, replacing bundled data (tests, benchmarks).
        stop: the shutdown event (default: a new one).

    The kernel's parts are also attributes under their own names (``store``, ``proj``,
    ``risk``, ``router``, ``brokers``, ``failed_accounts``), as are the services' state
    read by tests and tools (``supervisor``, ``feeds``, ``bot_feed``, ``refused``,
    ``reconcilers``, ``schedule``, ``canary``, ``deploys``, ``link``).
    """

    def __init__(self, kernel: Kernel, *, items: Mapping[str, list[MarketData]] | None = None,
                 stop: asyncio.Event | None = None) -> None:
        k = self.kernel = kernel
        cfg = self.cfg = k.cfg
        self.node, self.clock, self.subjects = k.node, k.clock, k.subjects
        self.store, self.proj, self.risk, self.router = k.store, k.proj, k.risk, k.router
        self.brokers, self.failed_accounts = k.brokers, k.failed_accounts
        self.stop = stop if stop is not None else asyncio.Event()
        self.ready = asyncio.Event()
        self.tasks = AgentTasks()
        self._telemetry_stop = asyncio.Event()
        self._storing_reports = 0  # venue reports being stored by _consume right now
        self.bots = Bots(k, self.tasks, self.stop, self._shape_runner, items or {})
        self.supervisor, self.feeds = self.bots.supervisor, self.bots.feeds
        self.bot_feed, self.refused = self.bots.bot_feed, self.bots.refused
        self.store_behind = StoreBehindRefusal(k, self.tasks)
        self.link = None if cfg.bus is None else BusLink(
            cfg.bus, k.store, source=cfg.source, replicas=cfg.jetstream_replicas,
            on_ready=self._on_bus_ready, on_store_behind=self._on_store_behind,
            outlet=k.outlet)
        self.rollouts = Rollouts(k, self.bots, self.link)  # deploys + canary, one owner
        self.canary, self.deploys = self.rollouts.canary, self.rollouts.deploys
        self.schedule = Schedule(k, self.bots, {}, cfg.schedule.poll_s)
        self.failsafe = FailSafe(cfg.failsafe, cfg.leader_timeout_s, k.risk.states,
                                 k.started_mono)
        self.failsafe.adopt(k.last_global)
        self.control = Control(k, self.bots, self.link, self.failsafe, self.schedule.status)
        self.telemetry = Telemetry(k, self.bots, self.link, self.failsafe, self.control,
                                   self.control.reload_file)
        self.kill_file = KillFileWatch(k, self.control, self.tasks)
        self.reconciliation = AccountReconcilers(k, self.tasks)
        self.reconcilers = self.reconciliation.reconcilers
        self.store_faults = StoreFaultService(k.fault_halt, k.store, k.router, self.link,
                                              k.subjects.hb(k.node))

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until :attr:`stop` is set; returns the exit status (0 after a clean stop)."""
        try:
            async with self.tasks.group():
                await self._start()
                await self.stop.wait()
                await self._shutdown()
        finally:
            await self._close()
        return 0

    def request_shutdown(self) -> None:
        """Begin a clean shutdown (signal handlers call this)."""
        if not self.stop.is_set():
            log.info("shutdown requested")
        self.stop.set()

    async def _start(self) -> None:
        """Steps 6-9: store-fault answer, reports and reconcilers, the NATS link (waited
        for at most ``bus_wait_s``), the kill file, the bots, then the periodic tasks."""
        cfg, spawn = self.cfg, self.tasks.spawn
        spawn("store-fault", self.store_faults.run())
        for name, broker in self.brokers.items():
            spawn(f"reports:{name}", self._consume(broker))
            self.reconciliation.start(name)  # periodic + after reconnects, auto-flatten
        if self.link is not None:
            spawn("bus", self.link.run(self._telemetry_stop))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.link.ready.wait(), cfg.bus_wait_s)
            if not self.link.ready.is_set():
                log.warning("NATS not reachable within %.1f s: starting without it "
                            "(kill key read once it connects; kill file always on)",
                            cfg.bus_wait_s)
        await self.kill_file.start()
        await self._start_bots()
        if self.failed_accounts:
            spawn("accounts-retry", self._retry_accounts())
        for name, coro in self.telemetry.tasks().items():
            spawn(name, coro)
        spawn("deploy-watch", self.deploys.run())  # fleet deploys (qtd.deploy)
        spawn("canary", self.canary.run())  # deploy --canary (qtd.agent.canary_ramps)
        self.ready.set()
        sdnotify.ready(f"{len(self.supervisor.slots)} bots running")
        log.info("agent %s ready: %d bots, %d refused, accounts failed: %s", self.node,
                 len(self.supervisor.slots), len(self.refused),
                 ", ".join(self.failed_accounts) or "none")

    async def _shutdown(self) -> None:
        cfg = self.cfg
        sdnotify.stopping("stopping bots")
        self.supervisor.request_stop()
        bots = self.tasks.running(prefixes=("bot:",))
        if bots:
            await asyncio.wait(bots, timeout=cfg.hook_budget_s * 2 + 1.0)
        if cfg.on_shutdown == "cancel":
            cids = [r.cid for r in self.proj.orders.open_orders()]
            if cids:
                sent = await self.router.cancel_many(cids, "agent shutdown")
                log.info("shutdown: asked to cancel %d open orders", len(sent))
                await asyncio.sleep(0.05)  # let the venue's cancel confirmations be stored
        # Nothing may store events behind the final flush: stop market data first (a paper
        # broker fills on the next bar, so no bars = no fills), then the tasks that act on
        # their own. Venue reports keep being consumed until the link closes; anything a
        # venue sends later is stored and published at the next start.
        quiet = self.tasks.running(prefixes=("feed:", "reconcile:"),
                                   names=("schedule", "deploy-watch", "canary"))
        for task in quiet:
            task.cancel()
        if quiet:
            await asyncio.wait(quiet, timeout=cfg.shutdown_timeout_s)
        # a paper broker reports an order's fill with its ack: both were received before
        # the final flush, so both are stored (and published) by it
        await self._store_received_reports(cfg.shutdown_timeout_s)
        self._telemetry_stop.set()
        if self.link is not None:
            pending = await self.link.close(cfg.shutdown_timeout_s)
            log.info("shutdown: %d events not yet acknowledged by JetStream (kept in store)",
                     pending)
        self.tasks.cancel_all()

    async def _close(self) -> None:
        await self.bots.workers.close()
        await close_brokers(self.brokers)
        await self.store.close()

    # --- bots -----------------------------------------------------------------------------

    async def _start_bots(self) -> None:
        cfg = self.cfg
        taken = {p.stem for p in bot_files(cfg)}
        routed, routed_refused = routed_bots(cfg, self.clock, bot_files(cfg), taken)
        self.bots.routed.update({r.name: r for r in routed})
        slots, refused = await admit_bots(cfg, self.store, self.clock, set(self.brokers),
                                          [r.path for r in routed])
        self.bots.set_refused({**refused, **routed_refused})
        self._admitted(self.bots.live_feeds(slots))

    def _admitted(self, slots: Admitted) -> None:
        """Plan the sessions of admitted bots, register and start them."""
        for slot, _loaded in slots:
            route = self.bots.routed.get(slot.name)
            plan = plan_for(self.cfg, slot.name, route.rule if route else None)
            if plan is not None:
                self.schedule.plans[slot.name] = plan
        self.bots.add(slots, self._feed_key, self.schedule.may_start,
                      lambda bot: self.schedule.plans[bot].name)
        if self.schedule.plans and self.tasks.task("schedule") is None:
            self.tasks.spawn("schedule", self.schedule.run())

    def _feed_key(self, loaded: LoadedBot) -> FeedKey:
        return feed_key(self.cfg, loaded)

    def _shape_runner(self, slot: BotSlot, runner: BotRunner) -> None:
        self.rollouts.shape(slot, runner)

    async def _retry_accounts(self) -> None:
        """Try the accounts that failed to connect every ``account_retry_s``; one that
        connects is reconciled before its bots are admitted and started."""
        while self.failed_accounts:
            await asyncio.sleep(self.cfg.account_retry_s)
            for name in list(self.failed_accounts):
                try:
                    await self._bring_online(name)
                except StoreError:
                    raise
                except Exception as exc:
                    self.failed_accounts[name] = f"{type(exc).__name__}: {exc}"
                    log.warning("account %s still not connected: %s", name,
                                self.failed_accounts[name], extra={"account": name})

    async def _bring_online(self, name: str) -> None:
        cfg = self.cfg
        s = cfg.accounts[name]
        symbols = account_symbols(cfg, name, bot_symbols(cfg, bot_files(cfg)))
        broker = await asyncio.wait_for(
            connect_account(name, s, cfg, self.clock, symbols), s.connect_timeout_s)
        self.router.brokers[name] = broker
        try:
            rec = await reconcile_account(self.router, broker, self.clock, trigger="reconnect")
        except Exception:
            del self.router.brokers[name]
            await close_brokers({name: broker})
            raise
        self.brokers[name] = broker
        del self.failed_accounts[name]
        self.tasks.spawn(f"reports:{name}", self._consume(broker))
        self.reconciliation.start(name)
        log.info("account %s connected late and reconciled (ok=%s)", name, rec.ok,
                 extra={"account": name})
        waiting = self.bots.waiting_for(name)
        if not waiting:
            return
        slots, refused = await admit_bots(cfg, self.store, self.clock, set(self.brokers),
                                          only=waiting)
        self.bots.set_refused(refused, retried=waiting)
        self._admitted(self.bots.live_feeds(slots))

    # --- venue reports --------------------------------------------------------------------

    async def _consume(self, broker: Broker) -> None:
        """Venue reports → store, projections, engine; fills → the bot's runner."""
        async for event in broker.reports():
            self._storing_reports += 1
            try:
                stored = await self.router.on_venue_event(event)
            finally:
                self._storing_reports -= 1
            if type(stored) is Fill:
                runner = self.supervisor.runner(stored.bot) or self.canary.runner(stored.bot)
                if runner is not None:
                    runner.deliver_fill(stored)

    async def _store_received_reports(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s`` seconds) until every venue report already received
        is stored: none queued in a broker adapter, none being stored."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (self._storing_reports or any(b.has_reports() for b in self.brokers.values())
               ) and loop.time() < deadline:
            await asyncio.sleep(0.001)

    # --- the bus link ---------------------------------------------------------------------

    async def _on_bus_ready(self, link: BusLink) -> None:
        """Subscribe to commands, kills and the leader's heartbeat; apply a kill set in KV."""
        nc = link.nc
        assert nc is not None
        await self.control.subscribe(nc)
        await self.telemetry.subscribe(nc)
        await self.control.poll_kv_once()

    async def _on_store_behind(self, exc: StoreBehind) -> None:
        assert self.link is not None
        await self.store_behind.refuse(exc, self.link)
