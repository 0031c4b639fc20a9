"""Risk limits and circuit-breaker configuration: frozen msgspec Structs loaded from TOML.

Layout of a risk file (see ``etc/risk.toml``)::

    [global]               engine-wide limits (GLOBAL scope) and controls
    [accounts.<name>]      per-account limits, starting equity and daily-loss limits
    [strategies.<bot>]     per-strategy (bot) limits, incl. gross / net notional caps
    [strategy_defaults]    limits for bots without their own table (omit: unknown bots denied)
    [symbols.<symbol>]     per-symbol limits; the keys form the instrument allow-list
    [breakers.<name>]      circuit breakers and the trading state each trips to (names:
                           :mod:`qtd.risk.breakers.registry`; an unknown one is an error)

Units: quantities in instrument units (shares, contracts, coins); notional and money in the
account's quote currency; percentages in percent (``3.0`` = 3 %); collars in basis points
(1 bps = 0.01 %); durations in seconds. A limit that is absent (or ``None``) is not checked.

Every table is validated on its own and then the cross-field rules of :mod:`qtd.risk.rules`
run, so one load reports all problems at once in a single :class:`~qtd.errors.ConfigError`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from qtd.errors import ConfigError
from qtd.files import read_capped_text
from qtd.risk.breakers.registry import BREAKER_NAMES, Breakers, unknown_breakers
from qtd.risk.fields import Amount, ConfigStruct, Count, Pct, Seconds
from qtd.risk.rules import check_consistency, config_error


class Limits(ConfigStruct, frozen=True, kw_only=True):
    """Pre-trade limits shared by every scope (global, account, strategy, symbol).

    Attributes:
        max_order_qty: largest quantity of one order, instrument units.
        max_order_notional: largest notional of one order (qty × reference price), currency.
        max_position_qty: largest worst-case position (filled + open orders on the order's
            side) in one symbol at this scope, instrument units.
        max_position_notional: the same position at the reference price, currency.
        max_position_pct_equity: the same position notional as % of the account's equity.
        max_open_orders: open (non-terminal) orders at this scope.
        max_orders_per_s: orders approved in any sliding 1-second window at this scope.
        max_trades_per_day: orders approved per trading day at this scope.
        trade_cooldown_s: minimum seconds between two approved orders at this scope.
        price_collar_bps: a limit price may differ from the last trade / mid by at most this.
        max_data_age_s: no new exposure when the symbol's last market data is older.
    """

    max_order_qty: Amount | None = None
    max_order_notional: Amount | None = None
    max_position_qty: Amount | None = None
    max_position_notional: Amount | None = None
    max_position_pct_equity: Pct | None = None
    max_open_orders: Count | None = None
    max_orders_per_s: Count | None = None
    max_trades_per_day: Count | None = None
    trade_cooldown_s: Seconds | None = None
    price_collar_bps: Amount | None = None
    max_data_age_s: Seconds | None = None


class GlobalConfig(Limits, frozen=True, kw_only=True):
    """Engine-wide limits and controls.

    Attributes:
        restricted_symbols: symbols no order may trade (compliance restricted list); only a
            kill-switch flatten may reduce a position in them.
        duplicate_window_s: an order with the same bot, account, symbol, side and qty as one
            approved less than this many seconds ago is a duplicate (0 disables).
        order_spike_factor: deny and HALT a strategy whose orders in the current second
            exceed this multiple of its trailing normal rate (0 disables).
        order_spike_halflife_s: half-life of the trailing normal rate (EWMA), seconds.
        order_spike_min_baseline: floor of the trailing normal rate, orders per second.
    """

    restricted_symbols: tuple[str, ...] = ()
    duplicate_window_s: Seconds = 1.0
    order_spike_factor: Annotated[float, Meta(ge=0, le=1e6)] = 10.0
    order_spike_halflife_s: Annotated[float, Meta(gt=0, le=86400)] = 300.0
    order_spike_min_baseline: Annotated[float, Meta(gt=0, le=1e6)] = 1.0


class AccountConfig(Limits, frozen=True, kw_only=True):
    """Limits of one broker account.

    Attributes:
        equity: the account's equity at start, currency; realised and unrealised PnL of the
            account's positions are added to it (for % limits and breakers).
        currency: the account's quote currency.
        max_daily_loss: daily-loss breaker in currency (overrides ``breakers.daily_loss``;
            resolved by :meth:`~qtd.risk.breakers.daily_loss.DailyLossConfig.limits`).
        max_daily_loss_pct: daily-loss breaker in % of the day's opening equity (overrides).
    """

    equity: Amount
    currency: str = "USD"
    max_daily_loss: Amount | None = None
    max_daily_loss_pct: Pct | None = None


class StrategyConfig(Limits, frozen=True, kw_only=True):
    """Limits of one strategy (bot).

    Attributes:
        max_gross_notional: Σ |worst-case position| × price over the bot's symbols, currency.
        max_net_notional: |Σ worst-case signed position × price| over its symbols, currency.
    """

    max_gross_notional: Amount | None = None
    max_net_notional: Amount | None = None


class SymbolConfig(Limits, frozen=True, kw_only=True):
    """Limits of one instrument; having a table puts the symbol on the allow-list."""


class RiskConfig(ConfigStruct, frozen=True, kw_only=True):
    """The whole risk configuration (module docstring for the layout).

    Attributes:
        source: where it was loaded from (for error messages).
    """

    global_: GlobalConfig = msgspec.field(default_factory=GlobalConfig, name="global")
    accounts: dict[str, AccountConfig] = msgspec.field(default_factory=dict)
    strategies: dict[str, StrategyConfig] = msgspec.field(default_factory=dict)
    strategy_defaults: StrategyConfig | None = None
    symbols: dict[str, SymbolConfig] = msgspec.field(default_factory=dict)
    breakers: Breakers = Breakers()
    trading_day_tz: str = "UTC"
    trading_day_rollover: str = "00:00"
    source: str = "<memory>"

    def strategy(self, bot: str) -> StrategyConfig | None:
        """The bot's own table, else ``strategy_defaults`` (None: the bot is unknown)."""
        return self.strategies.get(bot, self.strategy_defaults)


def bind_profiles(cfg: RiskConfig, profiles: Mapping[str, str]) -> RiskConfig:
    """Give each bot the ``[strategies.<profile>]`` table of its risk profile.

    The engine looks strategy limits up by bot name; a bot config (or a route) names a
    *risk profile* instead. This returns a config where ``strategies[bot]`` is the profile's
    table for every ``bot -> profile`` pair whose bot has no table of its own and whose
    profile exists (others keep ``strategy_defaults``).
    """
    extra = {bot: cfg.strategies[prof] for bot, prof in profiles.items()
             if bot not in cfg.strategies and prof in cfg.strategies}
    if not extra:
        return cfg
    return msgspec.structs.replace(cfg, strategies={**cfg.strategies, **extra})


# --- loading -------------------------------------------------------------------------------

_SECTIONS: dict[str, Any] = {
    "global": GlobalConfig, "strategy_defaults": StrategyConfig, "breakers": Breakers,
}
_TABLES: dict[str, Any] = {
    "accounts": AccountConfig, "strategies": StrategyConfig, "symbols": SymbolConfig,
}


def load_risk_config(path: str | Path) -> RiskConfig:
    """Load and validate a risk TOML file.

    Raises:
        ConfigError: unreadable file, bad TOML, or any field / cross-field error. All errors
            found are reported at once: the message lists each as
            ``<file>: <field path> = <value>: <rule>`` and ``.fields["errors"]`` holds them.
    """
    p = Path(path)
    try:
        data = tomllib.loads(read_capped_text(p))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read: {exc}", source=str(p), rule="readable") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}", source=str(p), rule="TOML") from exc
    return parse_risk_config(data, source=str(p))


def parse_risk_config(data: dict[str, Any], source: str = "<memory>") -> RiskConfig:
    """Validate a decoded TOML document (see :func:`load_risk_config`).

    Raises:
        ConfigError: every field and cross-field error found, at once.
    """
    errors: list[ConfigError] = []
    built: dict[str, Any] = {}
    for key, value in data.items():
        if value is None:  # only from to_builtins() of a config built in code
            continue
        if key == "breakers" and isinstance(value, dict):
            value = _known_breakers(value, source, errors)
        if key in _SECTIONS:
            built[key] = _convert(value, _SECTIONS[key], key, source, errors)
        elif key in _TABLES:
            built[key] = _convert_table(value, _TABLES[key], key, source, errors)
        elif key in ("trading_day_tz", "trading_day_rollover") and isinstance(value, str):
            built[key] = value
        else:
            errors.append(config_error(source, key, value, "unknown section or key"))
    cfg: RiskConfig | None = None
    if not errors:
        cfg = _convert({**built, "source": source}, RiskConfig, "", source, errors)
    if cfg is not None:
        errors.extend(check_consistency(cfg))
    if errors or cfg is None:
        raise _combined(errors, source)
    return cfg


def validate_config(cfg: RiskConfig) -> RiskConfig:
    """Re-validate a config built in code (a directly constructed Struct skips msgspec's
    constraint checks): the same field and cross-field rules as a file.

    Raises:
        ConfigError: as for :func:`parse_risk_config`.
    """
    data = msgspec.to_builtins(cfg)
    data.pop("source", None)
    return parse_risk_config(data, source=cfg.source)


def _known_breakers(table: dict[str, Any], source: str, errors: list[ConfigError]
                    ) -> dict[str, Any]:
    """``table`` without the names no breaker is registered under (one error each, naming
    the known ones)."""
    unknown = unknown_breakers(table)
    errors.extend(config_error(source, f"breakers.{name}", table[name],
                               f"unknown breaker; known: {', '.join(BREAKER_NAMES)}")
                  for name in unknown)
    return {k: v for k, v in table.items() if k not in unknown}


def _convert(value: Any, typ: Any, path: str, source: str, errors: list[ConfigError]) -> Any:
    if isinstance(value, msgspec.Struct):
        return value
    try:
        return msgspec.convert(value, typ, from_attributes=False)
    except msgspec.ValidationError as exc:
        text = str(exc)
        rule, _, where = text.partition(" - at `$")
        sub = where.rstrip("`").lstrip(".")
        full = ".".join(p for p in (path, sub) if p)
        errors.append(config_error(source, full or path, _dig(value, sub), rule))
        return None


def _convert_table(
    value: Any, typ: Any, path: str, source: str, errors: list[ConfigError]
) -> dict[str, Any]:
    if not isinstance(value, dict):
        errors.append(config_error(source, path, value, "must be a table of named sub-tables"))
        return {}
    out = {}
    for name, sub in value.items():
        converted = _convert(sub, typ, f"{path}.{name}", source, errors)
        if converted is not None:
            out[name] = converted
    return out


def _dig(value: Any, sub: str) -> Any:
    for part in sub.split(".") if sub else ():
        if isinstance(value, dict):
            value = value.get(part.split("[")[0])
    return value


def _combined(errors: list[ConfigError], source: str) -> ConfigError:
    if len(errors) == 1:
        errors[0].fields["errors"] = errors
        return errors[0]
    first = errors[0]
    lines = "\n  ".join(e.message for e in errors)
    return ConfigError(
        f"{source}: {len(errors)} risk config errors:\n  {lines}", source=source,
        field=first.field, value=first.value, rule=first.rule, errors=errors,
    )
