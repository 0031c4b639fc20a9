"""The admission rules for one bot config (listed in :mod:`qtd.admit`), as they run in the
admission child process (:mod:`qtd.admit.child`): they import and run strategy code.

:func:`check_bot` never raises for bad input; its :class:`Verdict` is what crosses back
to the caller.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from qtd.admit.config import LoadedBot, load_bot_config
from qtd.admit.instruments import lookup, venues
from qtd.admit.limits import OrderCaps, limits_for
from qtd.admit.loader import load_strategy
from qtd.admit.problems import Problem
from qtd.admit.schema import check_struct
from qtd.admit.smoke import SmokeResult, smoke_items, smoke_run
from qtd.feeds import Bar
from qtd.gates import live_refusal
from qtd.strategy import Strategy
from qtd.workers.load import content_hash, params_json, source_hash


class Verdict(msgspec.Struct, kw_only=True):
    """What admission found for one bot config (sent from the child to the caller).

    Attributes:
        bot / strategy: bot name and strategy class name, when known.
        strategy_file: the strategy file admitted (absolute), when the config named one.
        content_hash / source_hash / params_hash: sha256 hex (admitted bots only).
        params: validated params with defaults filled in (admitted bots only).
        problems: every error found; empty means admitted.
        smoke: the smoke run's figures, if it ran.
    """

    bot: str = ""
    strategy: str = ""
    strategy_file: str = ""
    content_hash: str = ""
    source_hash: str = ""
    params_hash: str = ""
    params: dict[str, Any] = {}
    problems: list[Problem] = []
    smoke: SmokeResult | None = None


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


async def check_bot(path: Path, *, smoke: bool = True) -> Verdict:
    """Run every admission rule on one bot config; never raises for bad input."""
    bot, problems = load_bot_config(path)
    if bot is None:
        return Verdict(problems=problems)
    cfg, file = bot.config, str(path)
    out = Verdict(bot=cfg.name, strategy_file=str(bot.strategy_path))
    problems += _instrument_problems(bot)
    cls, source, import_problems = await load_strategy(bot.strategy_path)
    problems += import_problems
    params = None
    if cls is not None:
        out.strategy = cls.__name__
        params, schema_problems = check_struct(cls.Params, cfg.params, file=file,
                                               prefix="params", lines=bot.lines)
        problems += schema_problems
    cross = _cross_field(cls, params, bot) if cls is not None and params is not None else []
    problems += cross
    limit_source = limits_for(bot)
    caps, cap_problems = limit_source.caps(bot, cfg.symbols[0])
    problems += cap_problems
    items, data_problems = smoke_items(bot.smoke_dataset, cfg.smoke.max_bars, file)
    problems += data_problems
    if cls is not None and params is not None and not cross and items:
        ref = max((i.high if type(i) is Bar else i.price for i in items), default=None)
        if caps is not None:
            problems += _notional_problems(cls, params, bot, caps, ref)
        if smoke:
            risk = getattr(limit_source, "cfg", None)
            out.smoke, smoke_problems = await smoke_run(cls, params, bot, items=items,
                                                        risk=risk)
            problems += smoke_problems
    if cfg.stage == "live" and cls is not None and params is not None:
        problems += _live_gate(bot, source, params)
    out.problems = problems
    if cls is not None and params is not None and not problems:
        out.source_hash = source_hash(source)
        out.params_hash = hashlib.sha256(params_json(params)).hexdigest()
        out.content_hash = content_hash(source, params)
        out.params = msgspec.to_builtins(params)
    return out
