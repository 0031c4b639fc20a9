"""Risk limits for the admission notional check (small and pluggable).

A :class:`LimitSource` answers "what is the largest order (quantity, notional) this bot may
send in this symbol". :class:`RiskFileLimits` reads the risk engine's own file with
:func:`qtd.risk.load.load_risk_config` and takes the tightest ``max_order_qty`` /
``max_order_notional`` of the global, account, strategy (``[strategies.<risk_profile>]``,
else ``strategy_defaults``) and symbol scopes — the same tables the engine checks at run
time. :class:`BotFileLimits` is the fallback when there is no risk file: the bot config's own
``max_order_notional``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import msgspec

from qtd.admit.config import LoadedBot
from qtd.admit.problems import Problem
from qtd.errors import ConfigError


class OrderCaps(msgspec.Struct, frozen=True, kw_only=True):
    """Largest allowed order: ``qty`` in instrument units, ``notional`` in quote currency
    (``None`` = not limited); ``source`` names where the limit came from."""

    qty: float | None = None
    notional: float | None = None
    source: str = ""


class LimitSource(Protocol):
    def caps(self, bot: LoadedBot, symbol: str) -> tuple[OrderCaps | None, list[Problem]]: ...


def _min(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


class BotFileLimits:
    """``max_order_notional`` from the bot config itself."""

    def caps(self, bot: LoadedBot, symbol: str) -> tuple[OrderCaps | None, list[Problem]]:
        cfg = bot.config
        if cfg.max_order_notional is None:
            return None, [Problem(
                file=str(bot.path), field="max_order_notional", value=None,
                rule="no risk file found: set max_order_notional or risk_file")]
        return OrderCaps(notional=cfg.max_order_notional, source=str(bot.path)), []


class RiskFileLimits:
    """Tightest order caps from a risk engine config file.

    Args:
        path: the risk TOML file.
    """

    def __init__(self, path: Path) -> None:
        from qtd.risk.load import load_risk_config

        self.path = path
        self.error: ConfigError | None = None
        self.cfg: Any = None
        try:
            self.cfg = load_risk_config(path)
        except ConfigError as exc:
            self.error = exc

    def caps(self, bot: LoadedBot, symbol: str) -> tuple[OrderCaps | None, list[Problem]]:
        file, cfg = str(bot.path), self.cfg
        if cfg is None:
            return None, [Problem(file=str(self.path), field="<file>", value=None,
                                  rule=f"risk file invalid: {self.error}")]
        strat = cfg.strategies.get(bot.profile, cfg.strategy_defaults)
        if strat is None:
            return None, [Problem(
                file=file, field="risk_profile", value=bot.profile,
                rule=f"no [strategies.{bot.profile}] nor [strategy_defaults] in {self.path}",
                line=bot.lines.get("risk_profile", 0))]
        if cfg.symbols and symbol not in cfg.symbols:
            return None, [Problem(file=file, field="symbols", value=symbol,
                                  rule=f"not on the risk allow-list [symbols] of {self.path}")]
        scopes = [cfg.global_, cfg.accounts.get(bot.config.account), strat,
                  cfg.symbols.get(symbol)]
        scopes = [s for s in scopes if s is not None]
        return OrderCaps(qty=_min([s.max_order_qty for s in scopes]),
                         notional=_min([s.max_order_notional for s in scopes]),
                         source=str(self.path)), []


def limits_for(bot: LoadedBot) -> LimitSource:
    """The limit source for ``bot``: its ``risk_file``, else ``../risk.toml`` beside its
    ``bots/`` directory if present, else the bot file's own ``max_order_notional``."""
    cfg = bot.config
    if cfg.risk_file:
        return RiskFileLimits((bot.path.parent / cfg.risk_file).resolve())
    default = bot.path.parent.parent / "risk.toml"
    if bot.path.parent.name == "bots" and default.is_file():
        return RiskFileLimits(default)
    return BotFileLimits()
