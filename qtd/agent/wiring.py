"""Building the agent's parts from its config: store, engine state, brokers, admitted bots.

Each function does one start-up step (the order is the daemon's, see
:mod:`qtd.agent.daemon`); none starts a task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from qtd.admit import admit_bot, collect_files
from qtd.admit.config import LoadedBot, load_bot_config
from qtd.agent.config import AccountSettings, AgentConfig
from qtd.agent.market import FeedKey
from qtd.agent.supervisor import BotSlot
from qtd.brokers.base import Broker
from qtd.brokers.paper import PaperBroker
from qtd.clock import Clock
from qtd.events import AnyEvent, Event, OrderIntent, Scope, TradingStateChanged
from qtd.projections import Projections
from qtd.risk.engine import RiskEngine
from qtd.runner import BotSpec
from qtd.store import EventStore

log = logging.getLogger("qtd.agent")


class AgentStore(EventStore):
    """The event store, calling :attr:`listener` with the stored events after every
    successful append (the daemon hands them to the outbox, which publishes them from memory
    without polling delay or a store read)."""

    listener: Callable[[Sequence[AnyEvent]], None] | None = None

    async def append(self, event: Event) -> AnyEvent:
        stored = await super().append(event)
        if self.listener is not None:
            self.listener((stored,))
        return stored

    async def append_many(self, events: Sequence[Event], *, sync: bool = True
                          ) -> list[AnyEvent]:
        stored = await super().append_many(events, sync=sync)
        if stored and self.listener is not None:
            self.listener(stored)
        return stored


async def open_store(cfg: AgentConfig) -> AgentStore:
    """Open (or create) ``<state_dir>/events.db`` for ``cfg.node``.

    Raises:
        StoreError: as :meth:`EventStore.open`.
    """
    Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
    store = await AgentStore.open(cfg.store_path, node=cfg.node)
    assert isinstance(store, AgentStore)
    return store


async def rebuild(store: EventStore, proj: Projections, risk: RiskEngine
                  ) -> TradingStateChanged | None:
    """Rebuild projections, then the engine, from the store (two replays).

    The engine gets trading states (a HALTED scope stays HALTED across a restart), order
    counters and open orders through :meth:`RiskEngine.restore`, and the rebuilt positions'
    exposure. Fills are not replayed into the engine: its breakers would count every
    historical fill as happening now (a restart would trip the execution throttle);
    streak and error-rate windows start empty after a restart, while daily-loss and
    drawdown limits read the projections and so survive it.

    Returns:
        The last GLOBAL state change (the fail-safe takes back a REDUCING it had set).
    """
    await proj.rebuild(store.replay_batches())
    last_global: TradingStateChanged | None = None
    async for batch in store.replay_batches():
        for ev in batch:
            if type(ev) is TradingStateChanged:
                risk.restore(ev)
                if ev.scope is Scope.GLOBAL:
                    last_global = ev
            elif type(ev) is OrderIntent:
                risk.restore(ev)
    for p in proj.positions.values():
        if p.qty:
            for exp in risk.position_keys(p.bot, p.account, p.symbol):
                exp.qty += p.qty
    risk.drain_events()  # restoring emits nothing; drop anything a check queued
    return last_global


def make_broker(name: str, s: AccountSettings, node: str, clock: Clock) -> Broker:
    """The broker adapter of one account (only ``paper`` so far)."""
    return PaperBroker(
        account=name, node=node, clock=clock, venue=s.venue, cash=Decimal(str(s.cash)),
        slippage_bps=Decimal(str(s.slippage_bps)), commission_bps=Decimal(str(s.commission_bps)),
        max_fill_qty=None if s.max_fill_qty is None else Decimal(str(s.max_fill_qty)))


async def open_accounts(cfg: AgentConfig, clock: Clock, timeout_s: float = 30.0
                        ) -> tuple[dict[str, Broker], dict[str, str]]:
    """Connect every account in parallel; one failing never blocks the others.

    Returns:
        (brokers by account, error message by account that failed).
    """
    async def one(name: str, s: AccountSettings) -> Broker:
        return make_broker(name, s, cfg.node, clock)

    names = list(cfg.accounts)
    results = await asyncio.gather(
        *(asyncio.wait_for(one(n, cfg.accounts[n]), timeout_s) for n in names),
        return_exceptions=True)
    brokers: dict[str, Broker] = {}
    failed: dict[str, str] = {}
    for name, res in zip(names, results, strict=True):
        if isinstance(res, BaseException):
            failed[name] = f"{type(res).__name__}: {res}"
            log.error("account %s failed to connect: %s", name, failed[name],
                      extra={"account": name})
        else:
            brokers[name] = res
    return brokers, failed


def bot_files(cfg: AgentConfig) -> list[Path]:
    """Every bot config named by ``cfg.bots`` (files, or ``bots/*.toml`` in directories)."""
    found, _routes, missing = collect_files([Path(b) for b in cfg.bots])
    for p in missing:
        log.error("bot path %s: %s", p.file, p.rule)
    return found


async def admit_bots(cfg: AgentConfig, store: EventStore, clock: Clock, accounts: set[str]
                     ) -> tuple[list[tuple[BotSlot, LoadedBot]], dict[str, list[str]]]:
    """Admit every configured bot; refuse (and report) anything not admitted.

    Returns:
        (admitted slots with their configs, problems by refused file).
    """
    slots: list[tuple[BotSlot, LoadedBot]] = []
    refused: dict[str, list[str]] = {}
    for path in bot_files(cfg):
        adm = await admit_bot(path, store=store, node=cfg.node, clock=clock,
                              smoke=cfg.admit_smoke)
        loaded, _ = load_bot_config(path)
        problems = [str(p) for p in adm.problems]
        if loaded is not None and loaded.config.account not in accounts:
            problems.append(f"{path}: account = {loaded.config.account!r}: not connected "
                            f"on this agent (accounts: {', '.join(sorted(accounts)) or '-'})")
        if problems or loaded is None:
            refused[str(path)] = problems or ["not admitted"]
            log.error("bot %s refused: %s", path, "; ".join(refused[str(path)]))
            continue
        c = loaded.config
        spec = BotSpec(name=c.name, account=c.account, venue=c.venue,
                       symbols=tuple(c.symbols), currency=c.currency)
        slots.append((BotSlot(spec, adm.strategy_cls, adm.params_obj, adm.content_hash),
                      loaded))
    return slots, refused


def feed_key(cfg: AgentConfig, bot: LoadedBot) -> FeedKey:
    """The shared feed a bot reads (its ``[market.bots.<name>]`` entry, else its smoke
    data set at the default speed), stamped with its first symbol."""
    c = bot.config
    src = cfg.market.bots.get(c.name)
    if src is None:
        return FeedKey(c.smoke.dataset, c.symbols[0], cfg.market.speed, cfg.market.loop)
    return FeedKey(src.dataset, src.symbol or c.symbols[0], src.speed, src.loop)


def status_of(slots: dict[str, BotSlot]) -> dict[str, Any]:
    """Bots for the ``status`` reply: state, restarts, reason."""
    return {n: {"state": s.state.value, "restarts": s.total_restarts, "reason": s.reason,
                "account": s.spec.account}
            for n, s in slots.items()}
