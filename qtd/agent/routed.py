"""Bots from routes: how a pattern-to-strategy route yields a bot on this node.

The routes file (``etc/routes.toml``, :mod:`qtd.routes`) maps an instrument to a strategy,
a preset (a bot config whose ``[params]`` are used) and a risk profile; it does not say
*which* instruments a node trades. The agent config does, with ``[[routed]]`` entries
(``account``, ``symbols``, optional ``venue`` and ``dataset``). At start (and only then) the
agent, for each routed symbol:

1. builds the route query as ``qtd route explain`` does: venue (the entry's, else the
   account's), symbol, asset class from the instrument lists, the agent clock's now, and the
   regime read from the bars this bot will replay up to now (UNKNOWN without bars, so
   regime-conditioned rules do not match and a later rule wins);
2. takes the **first rule that matches, ignoring its ``session``**: a rule's session says
   *when* its bot trades, not whether the route applies, so it becomes the bot's session
   schedule (:mod:`qtd.agent.schedule`) instead of making the choice depend on the hour
   the agent happened to start;
3. writes the bot config ``<state_dir>/routed/<rule>-<symbol>.toml`` — the preset's config
   with the rule's strategy, risk profile, this account/venue/symbol, the data set and the
   agent's risk file (unless the preset names its own) —
   and admits it exactly like a configured bot (a refused routed bot is reported like any
   other; nothing is guessed).

A symbol no rule matches yields no bot (logged). A bot name already configured wins over a
routed one of the same name.
"""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from qtd.admit.config import load_bot_config
from qtd.admit.instruments import lookup
from qtd.agent.config import AgentConfig
from qtd.clock import Clock
from qtd.data import DATASETS, load_dataset
from qtd.feeds import Bar
from qtd.files import read_capped_text
from qtd.regime import Regime, classify
from qtd.routes import Query, RoutesConfig, Rule, load_routes, match
from qtd.toml_writer import dumps

log = logging.getLogger("qtd.agent.routed")


class RoutedBot(msgspec.Struct, frozen=True, kw_only=True):
    """A bot yielded by a route: its generated config file and the rule."""

    name: str
    path: Path
    rule: Rule


def bot_name(rule: str, symbol: str) -> str:
    """``<rule>-<symbol>``, lower case, other characters as ``-`` (a NATS token, ≤ 64)."""
    return re.sub(r"[^a-z0-9_-]", "-", f"{rule}-{symbol}".lower())[:64]


def load(cfg: AgentConfig) -> tuple[RoutesConfig | None, list[str]]:
    """The routes file, or (None, problems)."""
    if not cfg.routes:
        return None, []
    routes, problems = load_routes(Path(cfg.routes))
    return routes, [str(p) for p in problems]


def choose(routes: RoutesConfig, q: Query) -> Rule | None:
    """The first rule matching ``q`` with its session condition left out (module doc)."""
    for rule in routes.route:
        ok, _ = match(msgspec.structs.replace(rule, session=None), q, routes)
        if ok:
            return rule
    return None


def _regime(dataset: str, now_ns: int) -> Regime:
    bars = [b for b in load_dataset(dataset) if isinstance(b, Bar) and b.close_ts_ns <= now_ns]
    return classify(bars).regime if bars else Regime.UNKNOWN


def _presets(cfg: AgentConfig, bot_paths: list[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    extra = sorted((Path(cfg.routes).parent / "bots").glob("*.toml")) if cfg.routes else []
    for p in [*bot_paths, *extra]:
        loaded, _ = load_bot_config(p)
        if loaded is not None:
            found.setdefault(loaded.config.name, p)
    return found


def routed_bots(cfg: AgentConfig, clock: Clock, bot_paths: list[Path],
                taken: set[str]) -> tuple[list[RoutedBot], dict[str, list[str]]]:
    """Write one bot config per routed symbol (module docstring).

    Args:
        bot_paths: the configured bot files (presets are looked up among them, then in the
            ``bots/`` directory beside the routes file).
        taken: names of configured bots (never replaced).

    Returns:
        (routed bots, problems by ``routed:<account>:<symbol>``).
    """
    routes, problems = load(cfg)
    if routes is None:
        return [], ({f"routes:{cfg.routes}": problems} if cfg.routes else {})
    presets = _presets(cfg, bot_paths)
    out_dir = Path(cfg.state_dir) / "routed"
    out_dir.mkdir(parents=True, exist_ok=True)
    strategies = (Path(cfg.routes).parent / routes.strategies_dir).resolve()
    now = clock.now_ns()
    bots: list[RoutedBot] = []
    refused: dict[str, list[str]] = {}
    for entry in cfg.routed:
        acct = cfg.accounts[entry.account]
        venue = entry.venue or acct.venue_name
        for symbol in entry.symbols:
            key = f"routed:{entry.account}:{symbol}"
            inst = lookup(venue, symbol)
            ds = entry.dataset or _dataset_for(symbol)
            q = Query(venue=venue, symbol=symbol,
                      asset_class=inst.asset_class if inst else None, ts_ns=now,
                      regime=_regime(ds, now) if ds else Regime.UNKNOWN)
            rule = choose(routes, q)
            if rule is None:
                refused[key] = [f"{cfg.routes}: no route rule matches {symbol} on {venue}"]
                log.warning("routed %s on %s: no rule matches: no bot", symbol, venue)
                continue
            name = bot_name(rule.name, symbol)
            if name in taken:
                continue
            preset = presets.get(rule.preset)
            if preset is None:
                refused[key] = [f"{cfg.routes}: route {rule.name!r}: preset {rule.preset!r} "
                                "is not a bot config of this agent or beside the routes file"]
                continue
            doc = _bot_doc(preset, rule, name, entry.account, venue, symbol,
                           strategies / f"{rule.strategy}.py", entry.dataset,
                           inst.currency if inst else None, cfg.risk)
            path = out_dir / f"{name}.toml"
            path.write_text(dumps(doc, f"# generated by the qtd agent from route {rule.name!r} "
                                       f"of {cfg.routes}: do not edit\n"))
            taken.add(name)
            bots.append(RoutedBot(name=name, path=path, rule=rule))
            log.info("routed %s on %s: rule %s -> bot %s (strategy %s, preset %s)", symbol,
                     venue, rule.name, name, rule.strategy, rule.preset)
    return bots, refused


def _dataset_for(symbol: str) -> str:
    """The bundled bar data set of ``symbol`` ("" if none)."""
    return next((d.name for d in DATASETS.values() if d.symbol == symbol and d.kind == "bars"),
                "")


def _bot_doc(preset: Path, rule: Rule, name: str, account: str, venue: str, symbol: str,
             strategy: Path, dataset: str, currency: str | None, risk_file: str
             ) -> dict[str, Any]:
    doc = tomllib.loads(read_capped_text(preset))
    doc.update(name=name, strategy=str(strategy), account=account, venue=venue,
               symbols=[symbol], risk_profile=rule.risk_profile)
    if currency:
        doc["currency"] = currency
    if dataset:
        doc.setdefault("smoke", {})["dataset"] = dataset
    # the preset's own risk file, else this agent's: the limits the engine enforces
    doc["risk_file"] = (str((preset.parent / doc["risk_file"]).resolve())
                        if doc.get("risk_file") else risk_file)
    return doc
