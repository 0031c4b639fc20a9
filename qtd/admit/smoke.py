"""Smoke backtest for admission: run the bot on real data, on the live order path.

The bot runs through :func:`qtd.backtest.run_backtest` — the same bot runner (hook wrapper,
time budget), risk engine, order router, write-ahead intents and paper broker as live — on
the first ``smoke.max_bars`` bars (or trades) of the bot's smoke data set (``smoke.dataset``:
bundled, or a catalog set ``venue:SYMBOL:interval``; unset: the catalog's set of the bot's
own venue and symbol when there is one, else ``goog_1d``; read from local files only, so
the admission child needs no network), restamped
with the bot's first symbol, into a throw-away event store. Problems are: a hook that raised
or overran its budget, and orders the risk engine refused for their size or for bad input
(:data:`SIZE_CHECKS`): params that would send such orders live fail admission. Other
denials (cooldowns, rate limits, …) are normal operation and only counted.

The risk limits are the bot's risk file with its ``risk_profile`` bound to the bot
(:func:`qtd.risk.load.bind_profiles`), or, without a risk file, the bot config's own
``max_order_notional`` as its only strategy limit.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Final

import msgspec

from qtd.admit.config import LoadedBot
from qtd.admit.problems import Problem
from qtd.backtest import BacktestBot, run_backtest
from qtd.catalog.named import load_data_ref, resolve_data
from qtd.errors import ConfigError
from qtd.events import OrderDenied
from qtd.feeds import MarketData, ns_to_iso
from qtd.risk.config import RiskConfig
from qtd.risk.load import bind_profiles, parse_risk_config
from qtd.runner import BotSpec
from qtd.store import EventStore
from qtd.strategy import Strategy

SIZE_CHECKS: Final = frozenset({"max_order_qty", "max_order_notional", "bad_input"})
SMOKE_NODE: Final = "smoke"


class SmokeResult(msgspec.Struct, frozen=True, kw_only=True):
    """Outcome of a smoke run: items replayed, order requests, fills, final bot state and
    risk denials by check."""

    items: int = 0
    orders: int = 0
    fills: int = 0
    state: str = ""
    denials: dict[str, int] = {}
    halts: list[str] = []


def smoke_items(dataset: str, max_items: int, file: str) -> tuple[list[Any], list[Problem]]:
    """The first ``max_items`` bars or trades of a data set by name (bundled, catalog set,
    file or symbol: :func:`qtd.catalog.named.resolve_data`); a problem if it names none."""
    try:
        ref = resolve_data(dataset, field="smoke.dataset")
        return load_data_ref(ref, limit=max_items), []
    except ConfigError as exc:
        return [], [Problem(file=file, field="smoke.dataset", value=dataset, rule=str(exc.rule))]


def smoke_risk(bot: LoadedBot, risk: RiskConfig | None) -> RiskConfig:
    """The risk config the smoke run uses (module docstring)."""
    cfg = bot.config
    if risk is not None:
        return bind_profiles(risk, {cfg.name: bot.profile})
    strategy = {} if cfg.max_order_notional is None else {
        "max_order_notional": cfg.max_order_notional}
    return parse_risk_config({
        "accounts": {cfg.account: {"equity": 1e12, "currency": cfg.currency}},
        "strategies": {cfg.name: strategy},
        "symbols": {s: {} for s in cfg.symbols},
    }, source=f"{bot.path} (max_order_notional)")


def _restamped(items: list[MarketData], symbol: str) -> list[MarketData]:
    return [msgspec.structs.replace(i, symbol=symbol) for i in items]


async def smoke_run(
    cls: type[Strategy], params: Strategy.Params, bot: LoadedBot, *, items: list[Any],
    risk: RiskConfig | None,
) -> tuple[SmokeResult, list[Problem]]:
    """Run the smoke backtest; return its result and problems (module docstring)."""
    cfg, file = bot.config, str(bot.path)
    spec = BotSpec(name=cfg.name, account=cfg.account, venue=cfg.venue,
                   symbols=tuple(cfg.symbols), currency=cfg.currency)
    with tempfile.TemporaryDirectory(prefix="qtd-smoke-") as tmp:
        store = await EventStore.open(Path(tmp) / "smoke.db", node=SMOKE_NODE)
        try:
            result = await run_backtest(
                [BacktestBot(strategy=cls, params=params, spec=spec)],
                _restamped(items, spec.symbols[0]), store=store, risk=smoke_risk(bot, risk),
                hook_budget_s=cfg.smoke.hook_budget_s,
                write_batch=None)  # the sandbox refuses to start the store's writer process
            denied = [e for e in await store.query(kind="OrderDenied")
                      if isinstance(e, OrderDenied)]
            errors = await store.query(kind="StrategyError", limit=1)
            halts = [getattr(e, "reason", "") for e in await store.query(
                kind="TradingStateChanged") if getattr(e, "new", "") == "HALTED"]
        finally:
            await store.close()
    r = result.bots[cfg.name]
    problems = [Problem(file=file, field=f"smoke.{e.hook}", value=ns_to_iso(e.ts_event),
                        rule=_error_rule(e))
                for e in errors if hasattr(e, "hook")]
    by_check = Counter(d.check for d in denied)
    for check, n in sorted(by_check.items()):
        if check in SIZE_CHECKS:
            first = next(d for d in denied if d.check == check)
            problems.append(Problem(
                file=file, field="params", value=float(first.qty),
                rule=f"smoke backtest: risk engine denied {n} order(s) on {check}: "
                     f"{first.message}"))
    return SmokeResult(items=result.items, orders=r.requests, fills=r.fills, state=r.state,
                       denials=dict(by_check), halts=halts), problems


def _error_rule(e: Any) -> str:
    where = e.traceback.strip().splitlines()[-3:] if e.traceback else []
    tail = f" [{' | '.join(s.strip() for s in where)}]" if where else ""
    return f"smoke backtest: {e.error_type}: {e.message}{tail}"
