"""Building the agent's parts from its config: store, engine state, brokers, admitted bots.

Each function does one start-up step (the order is the daemon's, see
:mod:`qtd.agent.daemon`); none starts a task.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from qtd.admit import Admission, admit_bot, collect_files
from qtd.admit.config import LoadedBot, load_bot_config
from qtd.agent.config import AgentConfig
from qtd.agent.market import FeedKey
from qtd.agent.supervisor import BotSlot
from qtd.clock import Clock
from qtd.deploy.files import deployed_config
from qtd.errors import ConfigError
from qtd.events import OrderIntent, Scope, TradingStateChanged
from qtd.projections import Projections
from qtd.risk.config import RiskConfig
from qtd.risk.engine import RiskEngine
from qtd.runner import BotSpec
from qtd.store import EventStore
from qtd.store.agentstore import AgentStore, StoreHooks

log = logging.getLogger("qtd.agent")


async def open_store(cfg: AgentConfig, hooks: StoreHooks) -> AgentStore:
    """Open (or create) ``<state_dir>/events.db`` for ``cfg.node`` with ``hooks``.

    Raises:
        StoreError: as :meth:`EventStore.open`.
    """
    Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
    return await AgentStore.open_with(cfg.store_path, node=cfg.node, hooks=hooks)


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


def bot_symbols(cfg: AgentConfig, paths: list[Path]) -> dict[str, set[str]]:
    """Account → symbols of the bots configured for it (files that do not parse are
    skipped here: admission reports them)."""
    out: dict[str, set[str]] = {}
    for path in paths:
        loaded, _ = load_bot_config(path)
        if loaded is not None:
            out.setdefault(loaded.config.account, set()).update(loaded.config.symbols)
    for r in cfg.routed:
        out.setdefault(r.account, set()).update(r.symbols)
    return out


def risk_config_for(cfg: AgentConfig, risk: RiskConfig) -> RiskConfig:
    """The risk config with the agent's ``[trading_day]``, so the engine's daily counters
    and daily-loss limits roll over with the PnL day.

    Raises:
        ConfigError: the risk file sets another trading day (names both files and values).
    """
    mine = (cfg.trading_day.tz, cfg.trading_day.rollover)
    theirs = (risk.trading_day_tz, risk.trading_day_rollover)
    if theirs not in (mine, ("UTC", "00:00")):
        raise ConfigError(
            f"{risk.source}: trading_day_tz/trading_day_rollover = {' '.join(theirs)}: must "
            f"equal [trading_day] of {cfg.source} ({' '.join(mine)}), or be left out",
            source=risk.source, field="trading_day_tz", value=" ".join(theirs),
            rule="one trading day per agent")
    return msgspec.structs.replace(risk, trading_day_tz=mine[0], trading_day_rollover=mine[1])


def bot_files(cfg: AgentConfig) -> list[Path]:
    """Every bot config named by ``cfg.bots`` (files, or ``bots/*.toml`` in directories)."""
    found, _routes, missing = collect_files([Path(b) for b in cfg.bots])
    for p in missing:
        log.error("bot path %s: %s", p.file, p.rule)
    return found


async def admit_bots(cfg: AgentConfig, store: EventStore, clock: Clock, accounts: set[str],
                     extra: Sequence[Path] = (), *, only: Sequence[Path] | None = None
                     ) -> tuple[list[tuple[BotSlot, LoadedBot]], dict[str, list[str]]]:
    """Admit every configured bot and the ``extra`` files (bots yielded by routes), or
    exactly the ``only`` files; refuse (and report) anything not admitted. Admissions run
    in parallel, one child process per CPU at a time (a slow one never holds the others
    back); results are taken in file order.

    Returns:
        (admitted slots with their configs, problems by refused file).
    """
    slots: list[tuple[BotSlot, LoadedBot]] = []
    refused: dict[str, list[str]] = {}
    # a bot deployed to this node runs its last accepted version (qtd.deploy)
    paths = list(only) if only is not None else [
        *(deployed_config(cfg.state_dir, p, cfg.risk) for p in bot_files(cfg)), *extra]
    cpus = asyncio.Semaphore(os.cpu_count() or 1)

    async def admit(path: Path) -> Admission:
        async with cpus:
            return await admit_bot(path, store=store, node=cfg.node, clock=clock,
                                   smoke=cfg.admit_smoke)

    for path, adm in zip(paths, await asyncio.gather(*map(admit, paths)), strict=True):
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
        slots.append((BotSlot(spec, adm.ref(), stage=c.stage), loaded))
    return slots, refused


def feed_key(cfg: AgentConfig, bot: LoadedBot) -> FeedKey:
    """The shared feed a bot reads (its ``[market.bots.<name>]`` entry, else its smoke
    data set at the default speed), stamped with its first symbol."""
    c = bot.config
    src = cfg.market.bots.get(c.name)
    if src is None:
        return FeedKey(bot.smoke_dataset, c.symbols[0], cfg.market.speed, cfg.market.loop)
    return FeedKey(src.dataset, src.symbol or c.symbols[0], src.speed, src.loop)


def status_of(slots: Mapping[str, BotSlot]) -> dict[str, Any]:
    """Bots for the ``status`` reply: state, restarts, reason."""
    return {n: {"state": s.state.value, "restarts": s.total_restarts, "reason": s.reason,
                "account": s.spec.account}
            for n, s in slots.items()}
