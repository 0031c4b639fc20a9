"""Promotion gates: the figures a backtest must reach before a strategy may trade live.

Lifecycle of a bot (its config's ``stage``): research → backtest → paper → shadow → live.
``qtd backtest --gate`` evaluates the report against :class:`GateThresholds` (defaults:
Sharpe > 1.2, max drawdown < 15 %, win rate > 45 %, profit factor > 1.3; all strict) and,
when run on a bot config, records the result as JSON **next to the bot config**
(``etc/bots/momo-goog.toml`` → ``etc/bots/momo-goog.gate.json``, see :func:`gate_path`).
A file rather than an event: admission (``qtd validate``) runs before any store exists and
on machines without one, and the file can be reviewed and committed with the config.

Admission refuses ``stage = "live"`` unless that file exists, passed, and was computed on
the current strategy source (same sha256 as the admitted file) and the same params.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import msgspec

from qtd.errors import ConfigError
from qtd.events import DECODE_ERRORS
from qtd.files import read_capped
from qtd.metrics import Report

STAGES: Final = ("research", "backtest", "paper", "shadow", "live")


class GateThresholds(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Gate thresholds (fractions: 0.15 = 15 %); every comparison is strict.

    Attributes:
        sharpe: annualised Sharpe must be above this.
        max_drawdown: max drawdown must be below this.
        win_rate: winning-trade fraction must be above this.
        profit_factor: gross profit / gross loss must be above this.
    """

    sharpe: float = 1.2
    max_drawdown: float = 0.15
    win_rate: float = 0.45
    profit_factor: float = 1.3


_RULES: Final[dict[str, tuple[str, str, Callable[[float, float], bool]]]] = {
    # threshold name -> (report field, operator shown, comparison)
    "sharpe": ("sharpe", ">", operator.gt),
    "max_drawdown": ("max_drawdown", "<", operator.lt),
    "win_rate": ("win_rate", ">", operator.gt),
    "profit_factor": ("profit_factor", ">", operator.gt),
}


class GateCheck(msgspec.Struct, frozen=True, kw_only=True):
    """One gate: ``value <op> threshold`` and whether it held."""

    name: str
    value: float
    op: str
    threshold: float
    passed: bool

    def __str__(self) -> str:
        mark = "pass" if self.passed else "FAIL"
        return f"{mark} {self.name}: {self.value:.4g} (needs {self.op} {self.threshold:g})"


class GateResult(msgspec.Struct, frozen=True, kw_only=True):
    """A gate evaluation, as stored in the ``.gate.json`` file.

    Attributes:
        passed: every check held.
        checks: each gate.
        strategy: strategy class name.
        source_hash: sha256 hex of the strategy file the backtest ran.
        params_hash: sha256 hex of the canonical params JSON.
        data: the data set or file backtested.
        ts_ns: when it was evaluated, UTC ns.
    """

    passed: bool
    checks: list[GateCheck]
    strategy: str = ""
    source_hash: str = ""
    params_hash: str = ""
    data: str = ""
    ts_ns: int = 0

    @property
    def failed(self) -> list[GateCheck]:
        return [c for c in self.checks if not c.passed]


def parse_thresholds(pairs: list[str] | None) -> GateThresholds:
    """Thresholds from ``NAME=VALUE`` overrides (e.g. ``["sharpe=1.5"]``).

    Raises:
        ConfigError: unknown name or a value that is not a number.
    """
    values: dict[str, Any] = {}
    for pair in pairs or []:
        name, _, raw = pair.partition("=")
        if name not in _RULES:
            raise ConfigError(f"--gate-threshold {pair!r}: unknown gate; one of "
                              f"{', '.join(_RULES)}", source="<arg>", field="gate",
                              value=pair, rule="NAME=VALUE")
        try:
            values[name] = float(raw)
        except ValueError:
            raise ConfigError(f"--gate-threshold {pair!r}: value must be a number",
                              source="<arg>", field=name, value=raw, rule="float") from None
    return GateThresholds(**values)


def evaluate(report: Report, thresholds: GateThresholds | None = None,
             **identity: Any) -> GateResult:
    """Check ``report`` against ``thresholds``; ``identity`` fills :class:`GateResult`'s
    strategy / source_hash / params_hash / data / ts_ns fields."""
    th = thresholds or GateThresholds()
    checks = []
    for name, (field, op, cmp) in _RULES.items():
        value, limit = float(getattr(report, field)), float(getattr(th, name))
        checks.append(GateCheck(name=name, value=value, op=op, threshold=limit,
                                passed=bool(cmp(value, limit))))
    return GateResult(passed=all(c.passed for c in checks), checks=checks, **identity)


def gate_path(bot_config: Path) -> Path:
    """Where a bot config's last gate result lives: ``<config stem>.gate.json`` beside it."""
    return bot_config.with_name(bot_config.stem + ".gate.json")


def write_gate(bot_config: Path, result: GateResult) -> Path:
    """Record ``result`` as the bot's last gate result; returns the file written."""
    path = gate_path(bot_config)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n")
    return path


def read_gate(bot_config: Path) -> GateResult | None:
    """The bot's last gate result, or None if there is none (or it is unreadable)."""
    try:
        return msgspec.json.decode(read_capped(gate_path(bot_config)), type=GateResult)
    except (OSError, ConfigError, *DECODE_ERRORS):
        return None


def live_refusal(bot_config: Path, source: bytes, params_json: bytes) -> str | None:
    """Why a ``stage = "live"`` bot may not be admitted (None: it may).

    Args:
        bot_config: the bot config file.
        source: the strategy file's bytes as admission loaded them.
        params_json: canonical params JSON (:func:`qtd.admit.params_json`).
    """
    gate = read_gate(bot_config)
    where = gate_path(bot_config)
    if gate is None:
        return f"no gate result at {where}: run `qtd backtest {bot_config} --gate` first"
    if not gate.passed:
        failed = "; ".join(str(c) for c in gate.failed)
        return f"last gate result failed ({where}): {failed}"
    if gate.source_hash != hashlib.sha256(source).hexdigest():
        return f"gate result {where} is for another version of the strategy: re-run --gate"
    if gate.params_hash != hashlib.sha256(params_json).hexdigest():
        return f"gate result {where} is for other params: re-run --gate"
    return None

