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

Shutdown (SIGTERM/SIGINT set :attr:`Agent.stop`): ``STOPPING=1``; bots stop at a safe point;
open orders are cancelled if ``on_shutdown = "cancel"``; the final outbox flush and the NATS
drain run with ``shutdown_timeout_s``; every remaining task is cancelled; the store closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Coroutine, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from qtd import sdnotify
from qtd.agent import loops, storebehind
from qtd.agent.accounts import (
    account_symbols,
    close_brokers,
    connect_account,
    live_feed_for,
    open_accounts,
)
from qtd.agent.canary import CanaryRamps
from qtd.agent.config import AgentConfig
from qtd.agent.crashpoint import CrashPoint
from qtd.agent.deploy_watch import DeployWatch, adopt
from qtd.agent.link import BusLink, Outlet
from qtd.agent.market import FeedKey, LiveFanout, ReplayFeed
from qtd.agent.reconciling import AccountReconciler, start_reconciler
from qtd.agent.routed import RoutedBot, routed_bots
from qtd.agent.schedule import Schedule, SessionPlan, plan_for
from qtd.agent.storefault import (
    READONLY_ENV,
    StoreFaultHalt,
    StoreFaultService,
    ignore_sigxfsz,
)
from qtd.agent.supervisor import BotSlot, Supervisor
from qtd.agent.telemetry import FailSafe
from qtd.agent.wiring import (
    admit_bots,
    bot_files,
    bot_symbols,
    feed_key,
    open_store,
    rebuild,
    risk_config_for,
)
from qtd.brokers.base import Broker, fed_by_prices
from qtd.brokers.paper import PaperBroker
from qtd.bus import DEFAULT_PREFIX, Subjects
from qtd.clock import Clock, LiveClock
from qtd.errors import ConfigError, StoreError
from qtd.events import Fill, Scope, TradingState
from qtd.execution import OrderRouter
from qtd.feeds import MarketData
from qtd.orders import ClientOrderIds
from qtd.projections import Projections, TradingDay
from qtd.reconcile import reconcile_account, restore_paper_broker
from qtd.risk import RiskEngine, load_risk_config
from qtd.runner import BotRunner, BotState
from qtd.store.agentstore import AgentStore, StoreHooks
from qtd.strategy import CancelAll

log = logging.getLogger("qtd.agent")


class Agent:
    """One agent process (see the module docstring).

    Args:
        cfg: the validated config.
        clock: UTC ns time (default wall clock).
        items: data set name → items, replacing bundled data (tests, benchmarks).
    """

    def __init__(self, cfg: AgentConfig, *, clock: Clock | None = None,
                 items: Mapping[str, list[MarketData]] | None = None) -> None:
        self.cfg, self.node = cfg, cfg.node
        self.clock = clock or LiveClock()
        self.items = dict(items or {})
        self.subjects = Subjects(cfg.bus.prefix if cfg.bus is not None else DEFAULT_PREFIX)
        self.stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.link: BusLink | None = None
        self.brokers: dict[str, Broker] = {}
        self.failed_accounts: dict[str, str] = {}
        self.reconcilers: dict[str, AccountReconciler] = {}  # venue accounts (reconciling)
        self.feeds: dict[FeedKey, ReplayFeed] = {}
        self.bot_feed: dict[str, FeedKey] = {}
        self.refused: dict[str, list[str]] = {}
        self.kv_kill = False
        self.kills_applied: set[str] = set()
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._storing_reports = 0  # venue reports being stored by _consume right now
        self._tg: asyncio.TaskGroup | None = None
        self._telemetry_stop = asyncio.Event()
        self.outlet = Outlet()  # the store's listener: the link attaches its outbox

    # --- start-up ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Steps 1-5: store, projections, engine, accounts, reconciliation."""
        cfg = self.cfg
        self.proj = Projections(TradingDay(cfg.trading_day.tz, cfg.trading_day.rollover),
                                keep_terminal=cfg.terminal_orders_kept)
        risk_cfg = risk_config_for(cfg, load_risk_config(cfg.risk))  # one trading day
        self.risk = RiskEngine(risk_cfg, self.proj, self.clock, self.node)
        ignore_sigxfsz()
        self.fault_halt = StoreFaultHalt(self.risk, self.clock, self.node)
        self.store: AgentStore = await open_store(cfg, StoreHooks(
            listener=self.outlet.offer, faults=self.fault_halt,  # halt + buffer + probe
            readonly_flag=os.environ.get(READONLY_ENV) or None, crash=CrashPoint.from_env()))
        last_global = await rebuild(self.store, self.proj, self.risk)
        self.brokers, self.failed_accounts = await open_accounts(
            cfg, self.clock, bot_symbols(cfg, bot_files(cfg)))
        for name, b in self.brokers.items():
            if isinstance(b, PaperBroker):
                restore_paper_broker(b, self.proj, Decimal(str(cfg.accounts[name].cash)))
        self.router = OrderRouter(store=self.store, clock=self.clock, risk=self.risk,
                                  cids=ClientOrderIds(self.store), brokers=self.brokers,
                                  projections=self.proj)
        for name in list(self.brokers):
            try:
                rec = await reconcile_account(self.router, self.brokers[name], self.clock)
            except StoreError:
                raise
            except Exception as exc:
                self.failed_accounts[name] = f"reconcile failed: {type(exc).__name__}: {exc}"
                log.exception("account %s: reconciliation failed; its bots will not start",
                              name, extra={"account": name})
                del self.brokers[name]
                continue
            log.info("account %s reconciled: ok=%s resolved=%d", name, rec.ok,
                     len(rec.resolved), extra={"account": name})
        self.started_mono = self.loop_time()
        self.failsafe = FailSafe(cfg.failsafe, cfg.leader_timeout_s, self.risk.states,
                                 self.started_mono)
        self.failsafe.adopt(last_global)
        self.supervisor = Supervisor(cfg.restart, self._make_runner, self._subscribe,
                                     self.store.append, self.node, self.clock.now_ns)
        self.canary = CanaryRamps(self, cfg.canary)  # deploy --canary (qtd.agent.canary)

    async def run(self) -> int:
        """Run until :attr:`stop` is set; returns the exit status (0 after a clean stop).

        Raises:
            StoreError: the store cannot be opened or fails verification (it is closed
                again, so the process exits instead of waiting on SQLite's thread).
        """
        try:
            await self.open()
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                await self._start(tg)
                await self.stop.wait()
                await self._shutdown()
        finally:
            await self._close()
        return 0

    async def _start(self, tg: asyncio.TaskGroup) -> None:
        cfg = self.cfg
        for name, broker in self.brokers.items():
            self.spawn(f"reports:{name}", self._consume(broker))
            start_reconciler(self, name)  # periodic + after reconnects, auto-flatten
        if cfg.bus is not None:
            self.link = BusLink(cfg.bus, self.store, source=cfg.source,
                                replicas=cfg.jetstream_replicas, on_ready=self._on_bus_ready,
                                on_store_behind=lambda exc: storebehind.refuse(self, exc),
                                outlet=self.outlet)
            self.spawn("bus", self.link.run(self._telemetry_stop))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.link.ready.wait(), cfg.bus_wait_s)
            if not self.link.ready.is_set():
                log.warning("NATS not reachable within %.1f s: starting without it "
                            "(kill key read once it connects; kill file always on)",
                            cfg.bus_wait_s)
        self.spawn("store-fault", StoreFaultService(
            self.fault_halt, self.store, self.router, self.link,
            self.subjects.hb(self.node)).run())
        await loops.start_kill_file(self)
        await self._start_bots()
        if self.failed_accounts:
            self.spawn("accounts-retry", self._retry_accounts())
        for name, coro in loops.telemetry_tasks(self).items():
            self.spawn(name, coro)
        self.deploys = DeployWatch(self)  # fleet deploys (qtd.deploy)
        self.spawn("deploy-watch", self.deploys.run())
        self.spawn("canary", self.canary.run())
        self.ready.set()
        sdnotify.ready(f"{len(self.supervisor.slots)} bots running")
        log.info("agent %s ready: %d bots, %d refused, accounts failed: %s", self.node,
                 len(self.supervisor.slots), len(self.refused),
                 ", ".join(self.failed_accounts) or "none")

    async def _start_bots(self) -> None:
        cfg = self.cfg
        taken = {p.stem for p in bot_files(cfg)}
        routed, routed_refused = routed_bots(cfg, self.clock, bot_files(cfg), taken)
        self.routed: dict[str, RoutedBot] = {r.name: r for r in routed}
        slots, self.refused = await admit_bots(cfg, self.store, self.clock, set(self.brokers),
                                               [r.path for r in routed])
        self.refused.update(routed_refused)
        slots = self._live_feeds(slots)
        plans: dict[str, SessionPlan] = {}
        for slot, _loaded in slots:
            route = self.routed.get(slot.name)
            plan = plan_for(cfg, slot.name, route.rule if route else None)
            if plan is not None:
                plans[slot.name] = plan
        self.schedule = Schedule(self, plans, cfg.schedule.poll_s)
        self._add_bots(slots)
        if self.schedule.plans:
            self.spawn("schedule", self.schedule.run())

    def _add_bots(self, slots: list[tuple[BotSlot, Any]]) -> None:
        """Register admitted bots (feeds, supervisor), start those that may run now, then
        the feeds not running yet."""
        # the engine checks each bot against the risk profile admission checked it against
        self.risk.bind_profiles({slot.name: loaded.profile for slot, loaded in slots})
        for slot, loaded in slots:
            key = self.bot_feed.get(slot.name) or feed_key(self.cfg, loaded)
            if key not in self.feeds:
                self.feeds[key] = ReplayFeed(key, self._on_price, self.items.get(key.dataset))
            self.bot_feed[slot.name] = key
            self.supervisor.add(slot)
        for slot in (slot for slot, _ in slots):
            if self.risk.states.get(Scope.STRATEGY, slot.name) is TradingState.HALTED:
                slot.state, slot.reason = BotState.HALTED, "HALTED before this start: resume it"
                log.warning("bot %s not started: %s", slot.name, slot.reason,
                            extra={"bot": slot.name})
                continue
            if not self.schedule.may_start(slot.name):
                plan = self.schedule.plans[slot.name]
                slot.state, slot.reason = BotState.STOPPED, f"outside session {plan.name}"
                log.info("bot %s waits for session %s to open", slot.name, plan.name,
                         extra={"bot": slot.name})
                continue
            self.spawn_bot(slot)
        for key, feed in self.feeds.items():
            name = f"feed:{key.dataset}:{key.symbol}"
            if name not in self._tasks:  # bots subscribed above, before their feed starts
                self.spawn(name, feed.run())

    def _live_feeds(self, slots: list[tuple[BotSlot, Any]]) -> list[tuple[BotSlot, Any]]:
        """Bots on a venue account (alpaca, binance) read that venue's live market data
        (:mod:`qtd.feeds.live`, one feed per account, ``data_*`` settings), unless
        ``[market.bots.<bot>]`` names a replayed data set (venue test environments). A bot
        whose live feed cannot be built is refused with the reason."""
        cfg, kept = self.cfg, []
        wanted: dict[str, list[tuple[BotSlot, Any]]] = {}
        for slot, loaded in slots:
            acct = cfg.accounts[slot.spec.account]
            if acct.broker == "paper" or slot.name in cfg.market.bots:
                kept.append((slot, loaded))
            else:
                wanted.setdefault(slot.spec.account, []).append((slot, loaded))
        for account, bots in wanted.items():
            symbols = sorted({s for slot, _ in bots for s in slot.spec.symbols})
            key = FeedKey(f"live:{account}", "*", 0.0, False)
            try:
                live = live_feed_for(account, cfg.accounts[account], symbols, self._on_price)
            except (ConfigError, ValueError) as exc:
                why = f"account {account!r}: no live market data: {exc}"
                for slot, loaded in bots:
                    self.refused[str(loaded.path)] = [why]
                    log.error("bot %s refused: %s", slot.name, why, extra={"bot": slot.name})
                continue
            self.feeds[key] = LiveFanout(key, live)
            for slot, loaded in bots:
                self.bot_feed[slot.name] = key
                kept.append((slot, loaded))
        return kept

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
        self.spawn(f"reports:{name}", self._consume(broker))
        start_reconciler(self, name)
        log.info("account %s connected late and reconciled (ok=%s)", name, rec.ok,
                 extra={"account": name})
        waiting = [Path(p) for p, problems in self.refused.items()
                   if any(f"account = {name!r}: not connected" in x for x in problems)]
        if not waiting:
            return
        slots, refused = await admit_bots(cfg, self.store, self.clock, set(self.brokers),
                                          only=waiting)
        for p in waiting:
            self.refused.pop(str(p), None)
        self.refused.update(refused)
        slots = self._live_feeds(slots)
        for slot, _loaded in slots:
            route = self.routed.get(slot.name)
            plan = plan_for(cfg, slot.name, route.rule if route else None)
            if plan is not None:
                self.schedule.plans[slot.name] = plan
        self._add_bots(slots)
        if self.schedule.plans and "schedule" not in self._tasks:
            self.spawn("schedule", self.schedule.run())

    def unsubscribe(self, bot: str) -> None:
        """Stop delivering market data to ``bot`` (stopped by its session schedule)."""
        key = self.bot_feed.get(bot)
        if key is not None and key in self.feeds:
            self.feeds[key].unsubscribe(bot)

    @property
    def kill_active(self) -> bool:
        """A kill is set: in the KV bucket (as last read) or as the local kill file."""
        return self.kv_kill or os.path.exists(self.cfg.kill_file)

    def loop_time(self) -> float:
        """Monotonic seconds (the event loop's clock)."""
        return asyncio.get_running_loop().time()

    def task(self, name: str) -> asyncio.Task[Any] | None:
        return self._tasks.get(name)

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Start a named task in the agent's task group (guarded: see :meth:`_guard`)."""
        assert self._tg is not None
        task = self._tg.create_task(self._guard(name, coro), name=name)
        self._tasks[name] = task
        return task

    def spawn_bot(self, slot: BotSlot) -> asyncio.Task[Any]:
        return self.spawn(f"bot:{slot.name}", self.supervisor.run_bot(slot))

    async def _guard(self, name: str, coro: Coroutine[Any, Any, Any]) -> Any:
        """A task failing (other than the store) is logged and ends alone; a StoreError
        stops the agent (nothing can be recorded any more: a human must act)."""
        try:
            return await coro
        except StoreError:
            log.critical("task %s: the event store failed; stopping the agent", name)
            raise
        except Exception:
            log.exception("task %s failed", name)
            return None

    # --- the order path around the router -------------------------------------------------

    def _make_runner(self, slot: BotSlot) -> BotRunner:
        runner = BotRunner(slot.strategy_cls, slot.params, slot.spec, clock=self.clock,
                           submit=self.router.submit, cancel=self._cancel_all,
                           emit=self.store.append, node=self.node,
                           hook_budget_s=self.cfg.hook_budget_s, params_hash=slot.content_hash,
                           isolate_hooks=True,  # a blocked hook never stalls the kill switch
                           keep_requests=self.cfg.terminal_orders_kept)
        seed_from_store(runner, self.proj)  # a restarted bot knows what it holds
        adopt(slot, runner)  # a strategy swapped in by a deploy keeps the bot's positions
        self.canary.shape(runner)  # its share of the allocation while a canary ramps
        return runner

    def _subscribe(self, bot: str) -> Any:
        return self.feeds[self.bot_feed[bot]].subscribe(bot)

    async def _cancel_all(self, req: CancelAll) -> None:
        await self.router.cancel_open(bot=req.bot, account=req.account, symbol=req.symbol,
                                      reason=req.reason)

    async def _on_price(self, symbol: str, price: Decimal) -> None:
        now = self.clock.now_ns()
        for b in self.brokers.values():
            if fed_by_prices(b):
                b.on_price(symbol, price, now)
        await self.router.on_market_data(symbol, price, now)

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

    async def _on_bus_ready(self, link: BusLink) -> None:
        await loops.on_bus_ready(self, link)

    # --- shutdown -------------------------------------------------------------------------

    def request_shutdown(self) -> None:
        """Begin a clean shutdown (signal handlers call this)."""
        if not self.stop.is_set():
            log.info("shutdown requested")
        self.stop.set()

    async def _shutdown(self) -> None:
        cfg = self.cfg
        sdnotify.stopping("stopping bots")
        self.supervisor.request_stop()
        bots = [t for n, t in self._tasks.items() if n.startswith("bot:") and not t.done()]
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
        quiet = [t for n, t in self._tasks.items()
                 if (n.startswith(("feed:", "reconcile:"))
                     or n in ("schedule", "deploy-watch", "canary"))
                 and not t.done()]
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
        for task in self._tasks.values():
            task.cancel()

    async def _close(self) -> None:
        await close_brokers(self.brokers)
        store = getattr(self, "store", None)
        if store is not None:
            await store.close()


def seed_from_store(runner: BotRunner, proj: Projections) -> None:
    """Give a new runner the bot's positions and in-flight quantities from the projections
    (the event store's view), so a bot restarted by the supervisor or after an agent restart
    does not believe it is flat: ``target_position`` would otherwise buy its position again.

    In-flight per symbol is the signed ``leaves_qty`` of the bot's open orders on its account.
    """
    ctx = runner.ctx
    for symbol in ctx.symbols:
        held = proj.position(ctx.bot, ctx.account, symbol)
        if held is not None:
            ctx.positions[symbol] = held.copy()
            if held.last_price is not None:
                ctx.marks.setdefault(symbol, held.last_price)
        ctx.inflight[symbol] = sum(
            (rec.side.sign * rec.leaves_qty
             for rec in proj.orders.open_orders(bot=ctx.bot, account=ctx.account, symbol=symbol)),
            Decimal(0))
