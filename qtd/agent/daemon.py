"""The agent daemon: one per server, one asyncio task group, every task named.

Start-up, in this order (nothing trades before reconciliation):

1. open the store (``<state_dir>/events.db``); 2. rebuild projections from it; 3. build the
risk engine and seed it with the rebuilt positions and open orders; 4. connect every account
in parallel (one failing never blocks another's bots); 5. **reconcile** each account with its
broker (:mod:`qtd.reconcile`); 6. start the NATS link in the background and wait up to
``bus_wait_s`` for it, reading the kill key (a kill set while the agent was down is applied
now: the agent starts HALTED); the local kill file is checked too; 7. admit the bots (refuse
anything not admitted); 8. start bots under the supervisor, then the market data feeds;
9. ``READY=1`` to systemd.

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
from typing import Any

from qtd import sdnotify
from qtd.agent import loops
from qtd.agent.config import AgentConfig
from qtd.agent.link import BusLink
from qtd.agent.market import FeedKey, ReplayFeed
from qtd.agent.supervisor import BotSlot, Supervisor
from qtd.agent.telemetry import FailSafe
from qtd.agent.wiring import (
    AgentStore,
    admit_bots,
    feed_key,
    open_accounts,
    open_store,
    rebuild,
)
from qtd.brokers.base import Broker
from qtd.brokers.paper import PaperBroker
from qtd.bus import DEFAULT_PREFIX, Subjects
from qtd.clock import Clock, LiveClock
from qtd.errors import StoreError
from qtd.events import Fill, Scope, TradingState
from qtd.execution import OrderRouter
from qtd.feeds import MarketData
from qtd.orders import ClientOrderIds
from qtd.projections import Projections, TradingDay
from qtd.reconcile import reconcile_account, restore_paper_broker
from qtd.risk import RiskEngine, load_risk_config
from qtd.runner import BotRunner, BotState
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
        self.feeds: dict[FeedKey, ReplayFeed] = {}
        self.bot_feed: dict[str, FeedKey] = {}
        self.refused: dict[str, list[str]] = {}
        self.kv_kill = False
        self.kills_applied: set[str] = set()
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._telemetry_stop = asyncio.Event()

    # --- start-up ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Steps 1-5: store, projections, engine, accounts, reconciliation."""
        cfg = self.cfg
        self.store: AgentStore = await open_store(cfg)
        self.proj = Projections(TradingDay(cfg.trading_day.tz, cfg.trading_day.rollover))
        self.risk = RiskEngine(load_risk_config(cfg.risk), self.proj, self.clock, self.node)
        last_global = await rebuild(self.store, self.proj, self.risk)
        self.brokers, self.failed_accounts = await open_accounts(cfg, self.clock)
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

    async def run(self) -> int:
        """Run until :attr:`stop` is set; returns the exit status (0 after a clean stop)."""
        await self.open()
        try:
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
        if cfg.bus is not None:
            self.link = BusLink(cfg.bus, self.store, source=cfg.source,
                                replicas=cfg.jetstream_replicas, on_ready=self._on_bus_ready)
            self.store.listener = self.link.offer
            self.spawn("bus", self.link.run(self._telemetry_stop))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.link.ready.wait(), cfg.bus_wait_s)
            if not self.link.ready.is_set():
                log.warning("NATS not reachable within %.1f s: starting without it "
                            "(kill key read once it connects; kill file always on)",
                            cfg.bus_wait_s)
        await loops.start_kill_file(self)
        await self._start_bots()
        for name, coro in loops.telemetry_tasks(self).items():
            self.spawn(name, coro)
        self.ready.set()
        sdnotify.ready(f"{len(self.supervisor.slots)} bots running")
        log.info("agent %s ready: %d bots, %d refused, accounts failed: %s", self.node,
                 len(self.supervisor.slots), len(self.refused),
                 ", ".join(self.failed_accounts) or "none")

    async def _start_bots(self) -> None:
        slots, self.refused = await admit_bots(self.cfg, self.store, self.clock,
                                               set(self.brokers))
        # the engine checks each bot against the risk profile admission checked it against
        self.risk.bind_profiles({slot.name: loaded.profile for slot, loaded in slots})
        for slot, loaded in slots:
            key = feed_key(self.cfg, loaded)
            if key not in self.feeds:
                self.feeds[key] = ReplayFeed(key, self._on_price, self.items.get(key.dataset))
            self.bot_feed[slot.name] = key
            self.supervisor.add(slot)
        for slot in self.supervisor.slots.values():
            if self.risk.states.get(Scope.STRATEGY, slot.name) is TradingState.HALTED:
                slot.state, slot.reason = BotState.HALTED, "HALTED before this start: resume it"
                log.warning("bot %s not started: %s", slot.name, slot.reason,
                            extra={"bot": slot.name})
                continue
            self.spawn_bot(slot)
        await asyncio.sleep(0)  # bots subscribe before their feeds start
        for key, feed in self.feeds.items():
            self.spawn(f"feed:{key.dataset}:{key.symbol}", feed.run())

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
        return BotRunner(slot.strategy_cls, slot.params, slot.spec, clock=self.clock,
                         submit=self.router.submit, cancel=self._cancel_all,
                         emit=self.store.append, node=self.node,
                         hook_budget_s=self.cfg.hook_budget_s, params_hash=slot.content_hash)

    def _subscribe(self, bot: str) -> Any:
        return self.feeds[self.bot_feed[bot]].subscribe(bot)

    async def _cancel_all(self, req: CancelAll) -> None:
        await self.router.cancel_open(bot=req.bot, account=req.account, symbol=req.symbol,
                                      reason=req.reason)

    async def _on_price(self, symbol: str, price: Decimal) -> None:
        now = self.clock.now_ns()
        for b in self.brokers.values():
            if isinstance(b, PaperBroker):
                b.on_price(symbol, price, now)
        await self.router.on_market_data(symbol, price, now)

    async def _consume(self, broker: Broker) -> None:
        """Venue reports → store, projections, engine; fills → the bot's runner."""
        async for event in broker.reports():
            stored = await self.router.on_venue_event(event)
            if type(stored) is Fill:
                runner = self.supervisor.runner(stored.bot)
                if runner is not None:
                    runner.deliver_fill(stored)

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
        self._telemetry_stop.set()
        if self.link is not None:
            pending = await self.link.close(cfg.shutdown_timeout_s)
            log.info("shutdown: %d events not yet acknowledged by JetStream (kept in store)",
                     pending)
        for task in self._tasks.values():
            task.cancel()

    async def _close(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.listener = None
            await store.close()
