"""Admission: check bot configs, strategies, params and routes before anything trades.

For each bot config (:mod:`qtd.admit.config`), every rule runs and every error is reported
(file, field path, value, rule; line when known):

1. ``config``: the bot file is TOML and matches :class:`~qtd.admit.config.BotConfig`;
2. ``instrument``: every symbol is listed for the venue (:mod:`qtd.admit.instruments`);
3. ``import``: the strategy file imports in isolation (syntax errors with file:line) and
   defines exactly one Strategy subclass (:mod:`qtd.admit.loader`);
4. ``schema``: params match the strategy's ``Params`` field by field, unknown keys rejected
   with a did-you-mean (:mod:`qtd.admit.schema`);
5. ``cross-field``: the strategy's ``validate(params)`` returns no message;
6. ``notional``: ``max_order_qty(params)`` × the highest price of the smoke data fits the
   bot's order caps (:mod:`qtd.admit.limits`);
7. ``smoke``: a backtest on bundled real data raises nothing, overruns no hook budget and
   sends no order over the caps (:mod:`qtd.admit.smoke`);
8. ``stage``: a bot with ``stage = "live"`` needs a passed promotion-gate result for this
   strategy source and params (:func:`qtd.gates.live_refusal`).

A bot with no problems gets ``content_hash = sha256(strategy source bytes + canonical params
JSON)`` (params with defaults filled in, keys sorted) and, when a store is given, a
:class:`~qtd.events.StrategyAdmitted` event. Route files (``routes.toml``) are checked by
:func:`qtd.routes.check_routes`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import msgspec

from qtd.admit.config import LoadedBot, load_bot_config
from qtd.admit.instruments import lookup, venues
from qtd.admit.limits import OrderCaps, limits_for
from qtd.admit.loader import load_strategy, source_hash
from qtd.admit.problems import Problem, combined_error, toml_lines
from qtd.admit.schema import check_struct
from qtd.admit.smoke import SmokeResult, smoke_items, smoke_run
from qtd.clock import Clock, LiveClock
from qtd.events import Event, StrategyAdmitted
from qtd.feeds import Bar
from qtd.gates import live_refusal
from qtd.strategy import Strategy

__all__ = [
    "Admission",
    "Problem",
    "admit_bot",
    "admit_paths",
    "collect_files",
    "combined_error",
    "content_hash",
    "params_json",
    "toml_lines",
]


class _Appender(Protocol):
    async def append(self, event: Event) -> Any: ...


class Admission(msgspec.Struct, kw_only=True):
    """Result of admitting one file (bot config or routes file).

    Attributes:
        path: the file.
        kind: ``"bot"`` or ``"routes"``.
        bot: bot name (bots only).
        strategy: strategy class name (bots only).
        content_hash / source_hash / params_hash: sha256 hex (admitted bots only).
        params: the validated params with defaults filled in (bots only).
        problems: every error found; empty means admitted.
        smoke: the smoke run's figures, if it ran.
    """

    path: Path
    kind: str = "bot"
    bot: str = ""
    strategy: str = ""
    content_hash: str = ""
    source_hash: str = ""
    params_hash: str = ""
    params: dict[str, Any] = {}
    problems: list[Problem] = []
    smoke: SmokeResult | None = None
    strategy_cls: Any = None
    params_obj: Any = None

    @property
    def ok(self) -> bool:
        return not self.problems


def params_json(params: Strategy.Params) -> bytes:
    """Canonical JSON of params: defaults filled in, keys sorted, no spaces."""
    return msgspec.json.encode(params, order="sorted")


def content_hash(source: bytes, params: Strategy.Params) -> str:
    """sha256 hex of strategy source bytes followed by :func:`params_json`."""
    return hashlib.sha256(source + params_json(params)).hexdigest()


def _instrument_problems(bot: LoadedBot) -> list[Problem]:
    cfg, out = bot.config, []
    for i, sym in enumerate(cfg.symbols):
        if lookup(cfg.venue, sym) is None:
            rule = (f"unknown venue; known: {', '.join(venues())}" if cfg.venue not in venues()
                    else f"instrument not listed for venue {cfg.venue!r}")
            out.append(Problem(file=str(bot.path), field=f"symbols[{i}]", value=sym, rule=rule,
                               line=bot.lines.get("symbols", 0)))
    return out


def _cross_field(cls: type[Strategy], params: Strategy.Params, bot: LoadedBot) -> list[Problem]:
    file, line = str(bot.path), bot.lines.get("params", 0)
    value = msgspec.to_builtins(params)
    try:
        messages = list(cls.validate(params) or [])
    except Exception as exc:
        messages = [f"validate() raised {type(exc).__name__}: {exc}"]
    return [Problem(file=file, field="params", value=value, rule=str(m), line=line)
            for m in messages]


def _notional_problems(cls: type[Strategy], params: Strategy.Params, bot: LoadedBot,
                       caps: OrderCaps, ref: Decimal | None) -> list[Problem]:
    try:
        raw = cls.max_order_qty(params)
        qty = None if raw is None else Decimal(str(raw))
    except Exception as exc:
        return [Problem(file=str(bot.path), field="params", value=None,
                        rule=f"max_order_qty() raised {type(exc).__name__}: {exc}")]
    if qty is None:
        return []
    if not qty.is_finite() or qty <= 0:
        return [Problem(file=str(bot.path), field="params", value=str(raw),
                        rule="max_order_qty() must return a finite quantity > 0 or None")]
    out, line = [], bot.lines.get("params.qty", 0)
    if caps.qty is not None and qty > Decimal(str(caps.qty)):
        out.append(Problem(file=str(bot.path), field="params.qty", value=float(qty), line=line,
                           rule=f"max order qty {qty} > max_order_qty {caps.qty} ({caps.source})"))
    if caps.notional is not None and ref is not None and qty * ref > Decimal(str(caps.notional)):
        out.append(Problem(
            file=str(bot.path), field="params.qty", value=float(qty), line=line,
            rule=f"possible order notional {qty} x {ref} (highest smoke-data price) = "
                 f"{qty * ref} > max_order_notional {caps.notional} ({caps.source})"))
    return out


def _live_gate(bot: LoadedBot, source: bytes, params: Strategy.Params) -> list[Problem]:
    why = live_refusal(bot.path, source, params_json(params))
    return [] if why is None else [Problem(file=str(bot.path), field="stage", value="live",
                                           rule=why, line=bot.lines.get("stage", 0))]


async def admit_bot(path: Path, *, store: _Appender | None = None, node: str = "local",
                    clock: Clock | None = None, smoke: bool = True) -> Admission:
    """Run every admission rule on one bot config (module docstring); never raises for bad
    input. When admitted and ``store`` is given, appends a ``StrategyAdmitted`` event."""
    result = Admission(path=path)
    bot, problems = load_bot_config(path)
    if bot is None:
        result.problems = problems
        return result
    cfg, file = bot.config, str(path)
    result.bot = cfg.name
    problems += _instrument_problems(bot)
    cls, source, import_problems = await load_strategy(bot.strategy_path)
    problems += import_problems
    params = None
    if cls is not None:
        result.strategy = cls.__name__
        params, schema_problems = check_struct(cls.Params, cfg.params, file=file,
                                               prefix="params", lines=bot.lines)
        problems += schema_problems
    cross = _cross_field(cls, params, bot) if cls is not None and params is not None else []
    problems += cross
    limit_source = limits_for(bot)
    caps, cap_problems = limit_source.caps(bot, cfg.symbols[0])
    problems += cap_problems
    items, data_problems = smoke_items(cfg.smoke.dataset, cfg.smoke.max_bars, file)
    problems += data_problems
    if cls is not None and params is not None and not cross and items:
        ref = max((i.high if type(i) is Bar else i.price for i in items), default=None)
        if caps is not None:
            problems += _notional_problems(cls, params, bot, caps, ref)
        if smoke:
            risk = getattr(limit_source, "cfg", None)
            result.smoke, smoke_problems = await smoke_run(cls, params, bot, items=items,
                                                           risk=risk)
            problems += smoke_problems
    if cfg.stage == "live" and cls is not None and params is not None:
        problems += _live_gate(bot, source, params)
    result.problems = problems
    if cls is not None and params is not None and not problems:
        await _admitted(result, cls, params, source, bot, store, node, clock or LiveClock())
    return result


async def _admitted(result: Admission, cls: type[Strategy], params: Strategy.Params,
                    source: bytes, bot: LoadedBot, store: _Appender | None, node: str,
                    clock: Clock) -> None:
    result.strategy_cls, result.params_obj = cls, params
    result.source_hash = source_hash(source)
    result.params_hash = hashlib.sha256(params_json(params)).hexdigest()
    result.content_hash = content_hash(source, params)
    result.params = msgspec.to_builtins(params)
    if store is not None:
        now = clock.now_ns()
        await store.append(StrategyAdmitted(
            node=node, bot=bot.config.name, ts_event=now, ts_init=now, strategy=cls.__name__,
            content_hash=result.content_hash, source_hash=result.source_hash,
            params_hash=result.params_hash, params=result.params, path=str(bot.strategy_path)))


def collect_files(paths: Sequence[Path]) -> tuple[list[Path], list[Path], list[Problem]]:
    """Split ``paths`` into (bot configs, route files, problems for missing paths).

    A directory contributes every ``*.toml`` inside a directory named ``bots`` and every
    ``routes.toml``, recursively; other TOML files (risk, agent, leader configs) are left to
    their own loaders. A file given by name is a routes file if named ``routes.toml``, else a
    bot config.
    """
    bots: list[Path] = []
    routes: list[Path] = []
    problems: list[Problem] = []
    for p in paths:
        if p.is_dir():
            for f in sorted(p.rglob("*.toml")):
                if f.name == "routes.toml":
                    routes.append(f)
                elif f.parent.name == "bots":
                    bots.append(f)
        elif p.is_file():
            (routes if p.name == "routes.toml" else bots).append(p)
        else:
            problems.append(Problem(file=str(p), field="<path>", value=str(p),
                                    rule="no such file or directory"))
    return bots, routes, problems


async def admit_paths(paths: Sequence[Path], *, store: _Appender | None = None,
                      node: str = "local", smoke: bool = True) -> list[Admission]:
    """Admit every bot config and routes file under ``paths`` (see :func:`collect_files`);
    one :class:`Admission` per file, plus one for missing paths."""
    from qtd.routes import check_routes

    bots, routes, missing = collect_files(paths)
    results = [await admit_bot(b, store=store, node=node, smoke=smoke) for b in bots]
    bot_files = {r.bot: r.path for r in results if r.bot}
    for f in routes:
        results.append(Admission(path=f, kind="routes",
                                 problems=check_routes(f, bot_files=bot_files)))
    if missing:
        results.append(Admission(path=Path("."), kind="paths", problems=missing))
    if not bots and not routes and not missing:
        results.append(Admission(path=Path(str(paths[0]) if paths else "."), kind="paths",
                                 problems=[Problem(file=str(p), field="<path>", value=str(p),
                                                   rule="no bot configs or routes.toml found")
                                           for p in paths]))
    return results
