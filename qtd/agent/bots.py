"""The bots an agent runs: admission, shared market data feeds, supervised runners.

:class:`Bots` implements :class:`~qtd.agent.ports.CandidateHost` (and so
:class:`~qtd.agent.ports.BotHost`): the schedule, control and deploy services start, stop and
swap bots through it, never through the daemon.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from qtd.admit.config import LoadedBot
from qtd.agent.accounts import live_feed_for
from qtd.agent.kernel import Kernel
from qtd.agent.market import FeedKey, LiveFanout, ReplayFeed
from qtd.agent.ports import Spawner
from qtd.agent.routed import RoutedBot
from qtd.agent.supervisor import BotSlot, Supervisor
from qtd.brokers.base import fed_by_prices
from qtd.errors import ConfigError
from qtd.events import Scope, TradingState
from qtd.feeds import MarketData
from qtd.projections import Projections
from qtd.runner import BotRunner, BotState
from qtd.strategy import CancelAll
from qtd.workers.pool import WorkerPool

log = logging.getLogger("qtd.agent")

Admitted = list[tuple[BotSlot, LoadedBot]]
ShapeRunner = Callable[[BotSlot, BotRunner], None]


class Bots:
    """Admitted bots, their feeds and their supervisor.

    Args:
        kernel: the agent's kernel (router, store, engine, projections, clock, config).
        tasks: the agent's task group.
        stopping: set once the agent shuts down.
        shape: called with every new runner before it runs (deploy carry-over and the
            canary split: :class:`qtd.agent.rollouts.Rollouts`).
        items: data set name → items, replacing bundled data (tests, benchmarks).

    Attributes:
        supervisor: runs the bots under the restart policy.
        workers: the worker processes the bots' strategies run in (:mod:`qtd.workers`).
        feeds: feed key → the feed (replayed or live).
        bot_feed: bot (or candidate) → the key of the feed it reads.
        refused: bot config file → why it was not admitted.
        routed: bots yielded by the routes file, by name.
    """

    def __init__(self, kernel: Kernel, tasks: Spawner, stopping: asyncio.Event,
                 shape: ShapeRunner, items: Mapping[str, list[MarketData]]) -> None:
        self.k, self.tasks, self._stopping, self._shape = kernel, tasks, stopping, shape
        self.items = dict(items)
        self.supervisor = Supervisor(kernel.cfg.restart, self.build_runner, self.subscribe,
                                     kernel.store.append, kernel.node, kernel.clock.now_ns)
        self.feeds: dict[FeedKey, ReplayFeed] = {}
        self.bot_feed: dict[str, FeedKey] = {}
        self.refused: dict[str, list[str]] = {}
        self.routed: dict[str, RoutedBot] = {}
        self.workers = WorkerPool(kernel.cfg.workers, protected=kernel.cfg.protected_paths)

    # --- BotHost / CandidateHost ----------------------------------------------------------

    @property
    def slots(self) -> dict[str, BotSlot]:
        return self.supervisor.slots

    @property
    def stopping(self) -> asyncio.Event:
        return self._stopping

    def runner(self, bot: str) -> BotRunner | None:
        return self.supervisor.runner(bot)

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return self.tasks.spawn(name, coro)

    def worker_report(self) -> list[dict[str, Any]]:
        return [{"key": w.key, "pid": w.pid, "bots": list(w.bots),
                 "unique_mib": round(w.unique_bytes / 2**20, 1),
                 "rss_mib": round(w.rss_bytes / 2**20, 1), "sandbox": w.sandbox}
                for w in self.workers.workers()]

    def spawn_bot(self, slot: BotSlot) -> asyncio.Task[Any]:
        return self.tasks.spawn(f"bot:{slot.name}", self.supervisor.run_bot(slot))

    def bot_task(self, bot: str) -> asyncio.Task[Any] | None:
        return self.tasks.task(f"bot:{bot}")

    def subscribe(self, bot: str) -> AsyncIterator[MarketData]:
        return self.feeds[self.bot_feed[bot]].subscribe(bot)

    def unsubscribe(self, bot: str) -> None:
        """Stop delivering market data to ``bot`` (stopped by its session schedule)."""
        key = self.bot_feed.get(bot)
        if key is not None and key in self.feeds:
            self.feeds[key].unsubscribe(bot)

    def share_feed(self, candidate: str, bot: str) -> None:
        self.bot_feed[candidate] = self.bot_feed[bot]

    def build_runner(self, slot: BotSlot) -> BotRunner:
        k = self.k
        runner = BotRunner(slot.ref, None, slot.spec, clock=k.clock,
                           submit=k.router.submit, cancel=self._cancel_all,
                           emit=k.store.append, node=k.node,
                           hook_budget_s=k.cfg.hook_budget_s, params_hash=slot.content_hash,
                           workers=self.workers,  # strategy code never runs in the agent
                           keep_requests=k.cfg.terminal_orders_kept)
        seed_from_store(runner, k.proj)  # a restarted bot knows what it holds
        self._shape(slot, runner)
        return runner

    # --- admission and start --------------------------------------------------------------

    def add(self, slots: Admitted, feed_key: Callable[[LoadedBot], FeedKey],
            may_start: Callable[[str], bool], session: Callable[[str], str]) -> None:
        """Register admitted bots (feeds, supervisor), start those that may run now, then
        the feeds not running yet.

        Args:
            feed_key: the replayed feed of a bot without a live one.
            may_start: False for a bot whose session is closed now.
            session: the session name a held-back bot waits for.
        """
        k = self.k
        # the engine checks each bot against the risk profile admission checked it against
        k.risk.bind_profiles({slot.name: loaded.profile for slot, loaded in slots})
        for slot, loaded in slots:
            key = self.bot_feed.get(slot.name) or feed_key(loaded)
            if key not in self.feeds:
                self.feeds[key] = ReplayFeed(key, self._on_price, self.items.get(key.dataset))
            self.bot_feed[slot.name] = key
            self.supervisor.add(slot)
        for slot in (slot for slot, _ in slots):
            if k.risk.states.get(Scope.STRATEGY, slot.name) is TradingState.HALTED:
                slot.state, slot.reason = BotState.HALTED, "HALTED before this start: resume it"
                log.warning("bot %s not started: %s", slot.name, slot.reason,
                            extra={"bot": slot.name})
                continue
            if not may_start(slot.name):
                slot.state, slot.reason = BotState.STOPPED, f"outside session {session(slot.name)}"
                log.info("bot %s waits for session %s to open", slot.name,
                         session(slot.name), extra={"bot": slot.name})
                continue
            self.spawn_bot(slot)
        for key, feed in self.feeds.items():
            name = f"feed:{key.dataset}:{key.symbol}"
            if self.tasks.task(name) is None:  # bots subscribed above, before their feed starts
                self.tasks.spawn(name, feed.run())

    def live_feeds(self, slots: Admitted) -> Admitted:
        """Bots on a venue account (alpaca, binance) read that venue's live market data
        (:mod:`qtd.feeds.live`, one feed per account, ``data_*`` settings), unless
        ``[market.bots.<bot>]`` names a replayed data set (venue test environments). A bot
        whose live feed cannot be built is refused with the reason."""
        cfg, kept = self.k.cfg, []
        wanted: dict[str, Admitted] = {}
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

    def waiting_for(self, account: str) -> list[Path]:
        """Refused bot configs that only wait for ``account`` to connect."""
        return [Path(p) for p, problems in self.refused.items()
                if any(f"account = {account!r}: not connected" in x for x in problems)]

    def set_refused(self, refused: Mapping[str, list[str]],
                    retried: Sequence[Path] = ()) -> None:
        """Record the refusals of an admission pass (``retried``: files admitted again)."""
        for p in retried:
            self.refused.pop(str(p), None)
        self.refused.update(refused)

    # --- the order path around the router -------------------------------------------------

    async def _cancel_all(self, req: CancelAll) -> None:
        await self.k.router.cancel_open(bot=req.bot, account=req.account, symbol=req.symbol,
                                        reason=req.reason)

    async def _on_price(self, symbol: str, price: Decimal) -> None:
        now = self.k.clock.now_ns()
        for b in self.k.brokers.values():
            if fed_by_prices(b):
                b.on_price(symbol, price, now)
        await self.k.router.on_market_data(symbol, price, now)


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
