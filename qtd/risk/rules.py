"""Cross-field rules of the risk config: each a small named function yielding
:class:`~qtd.errors.ConfigError` s that name the file, the field path, the value and the rule.

A limit that can never be used, or that makes another unusable, is an admission error — for
example a strategy's per-order notional above its gross notional cap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from qtd.errors import ConfigError
from qtd.projections import TradingDay

if TYPE_CHECKING:
    from qtd.risk.config import RiskConfig
    from qtd.risk.scope_limits import Limits, StrategyConfig


def config_error(source: str, field: str, value: Any, rule: str) -> ConfigError:
    """A ConfigError for ``field`` (dotted path) of ``source`` with ``value`` and ``rule``."""
    return ConfigError(
        f"{source}: {field} = {value!r}: {rule}", source=source, field=field, value=value,
        rule=rule,
    )


Rule = Callable[["RiskConfig"], Iterator[ConfigError]]


def _scopes(cfg: RiskConfig) -> Iterator[tuple[str, Limits]]:
    yield "global", cfg.global_
    for name, a in cfg.accounts.items():
        yield f"accounts.{name}", a
    for name, s in cfg.strategies.items():
        yield f"strategies.{name}", s
    if cfg.strategy_defaults is not None:
        yield "strategy_defaults", cfg.strategy_defaults
    for name, y in cfg.symbols.items():
        yield f"symbols.{name}", y


def _strategies(cfg: RiskConfig) -> Iterator[tuple[str, StrategyConfig]]:
    for name, s in cfg.strategies.items():
        yield f"strategies.{name}", s
    if cfg.strategy_defaults is not None:
        yield "strategy_defaults", cfg.strategy_defaults


def _not_above(
    cfg: RiskConfig, path: str, small: str, small_v: float | None, big: str, big_v: float | None
) -> Iterator[ConfigError]:
    if small_v is not None and big_v is not None and small_v > big_v:
        rule = f"must be <= {path}.{big} ({big_v})"
        yield config_error(cfg.source, f"{path}.{small}", small_v, rule)


def order_notional_within_strategy_caps(cfg: RiskConfig) -> Iterator[ConfigError]:
    """A strategy's per-order notional above its gross or net cap could never be used."""
    for path, s in _strategies(cfg):
        yield from _not_above(cfg, path, "max_order_notional", s.max_order_notional,
                              "max_gross_notional", s.max_gross_notional)
        yield from _not_above(cfg, path, "max_order_notional", s.max_order_notional,
                              "max_net_notional", s.max_net_notional)


def position_within_strategy_gross(cfg: RiskConfig) -> Iterator[ConfigError]:
    """A strategy's position notional limit above its gross cap, or net above gross."""
    for path, s in _strategies(cfg):
        yield from _not_above(cfg, path, "max_position_notional", s.max_position_notional,
                              "max_gross_notional", s.max_gross_notional)
        yield from _not_above(cfg, path, "max_net_notional", s.max_net_notional,
                              "max_gross_notional", s.max_gross_notional)


def order_within_position(cfg: RiskConfig) -> Iterator[ConfigError]:
    """In one scope an order larger than the position limit could never be placed."""
    for path, lim in _scopes(cfg):
        yield from _not_above(cfg, path, "max_order_qty", lim.max_order_qty,
                              "max_position_qty", lim.max_position_qty)
        yield from _not_above(cfg, path, "max_order_notional", lim.max_order_notional,
                              "max_position_notional", lim.max_position_notional)


def daily_loss_within_equity(cfg: RiskConfig) -> Iterator[ConfigError]:
    """A currency daily-loss limit at or above the account's equity never trips."""
    for name, a in cfg.accounts.items():
        loss = cfg.breakers.daily_loss.limits(a).max_loss
        if loss is not None and loss >= a.equity:
            field = (f"accounts.{name}.max_daily_loss" if a.max_daily_loss is not None
                     else "breakers.daily_loss.max_loss")
            yield config_error(cfg.source, field, loss,
                               f"must be < accounts.{name}.equity ({a.equity})")


def restricted_symbols_known(cfg: RiskConfig) -> Iterator[ConfigError]:
    """Restricted symbols must be spelt like allow-listed ones (catches typos)."""
    for i, sym in enumerate(cfg.global_.restricted_symbols):
        if cfg.symbols and sym not in cfg.symbols:
            yield config_error(cfg.source, f"global.restricted_symbols[{i}]", sym,
                               "must name a symbol that has a [symbols.<name>] table")


def spike_floor_admits_an_order(cfg: RiskConfig) -> Iterator[ConfigError]:
    """factor × min_baseline < 1 would deny a quiet strategy's very first order."""
    g = cfg.global_
    if 0 < g.order_spike_factor * g.order_spike_min_baseline < 1:
        rule = f"must be >= 1 / global.order_spike_factor ({1 / g.order_spike_factor:g})"
        yield config_error(cfg.source, "global.order_spike_min_baseline",
                           g.order_spike_min_baseline, rule)


def trading_day_valid(cfg: RiskConfig) -> Iterator[ConfigError]:
    """The trading-day time zone and rollover must parse."""
    try:
        TradingDay(cfg.trading_day_tz, cfg.trading_day_rollover)
    except Exception as exc:
        yield config_error(cfg.source, "trading_day_tz/trading_day_rollover",
                           f"{cfg.trading_day_tz} {cfg.trading_day_rollover}",
                           f"must be an IANA zone and HH:MM ({exc})")


RULES: tuple[Rule, ...] = (
    order_notional_within_strategy_caps,
    position_within_strategy_gross,
    order_within_position,
    daily_loss_within_equity,
    restricted_symbols_known,
    spike_floor_admits_an_order,
    trading_day_valid,
)


def check_consistency(cfg: RiskConfig) -> list[ConfigError]:
    """Run every cross-field rule in :data:`RULES`; return all errors (empty: consistent)."""
    return [err for rule in RULES for err in rule(cfg)]
