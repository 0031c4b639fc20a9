"""Loading a risk file: TOML -> a validated :class:`~qtd.risk.config.RiskConfig`, and
binding bots to their risk profiles.

Every table is validated on its own and then the cross-field rules of :mod:`qtd.risk.rules`
run, so one load reports all problems at once in a single :class:`~qtd.errors.ConfigError`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from qtd.errors import ConfigError
from qtd.files import read_capped_text
from qtd.risk.breakers.registry import BREAKER_NAMES, Breakers, unknown_breakers
from qtd.risk.config import RiskConfig
from qtd.risk.rules import check_consistency, config_error
from qtd.risk.scope_limits import AccountConfig, GlobalConfig, StrategyConfig, SymbolConfig


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
