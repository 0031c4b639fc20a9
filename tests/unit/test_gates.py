"""Promotion gates: default thresholds, overrides, the gate file, and admission of live bots."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from qtd.admit import admit_bot, params_json
from qtd.errors import ConfigError
from qtd.gates import (
    GateResult,
    GateThresholds,
    evaluate,
    gate_path,
    live_refusal,
    parse_thresholds,
    read_gate,
    write_gate,
)
from qtd.metrics import Report
from strategies.ma_cross import MaCross

ROOT = Path(__file__).resolve().parents[2]


def _report(**kw: float) -> Report:
    base = dict(start_equity=1.0, final_equity=1.0, total_return=0.0, cagr=0.0,
                volatility=0.0, sharpe=1.5, sortino=0.0, max_drawdown=0.10,
                max_drawdown_days=0.0, max_drawdown_bars=0, win_rate=0.5, profit_factor=1.5,
                exposure=0.0, trades=10, avg_trade=0.0, commissions=0.0,
                periods_per_year=252.0, bars=100, start_ts_ns=0, end_ts_ns=1)
    return Report(**{**base, **kw})  # type: ignore[arg-type]


def test_defaults_pass_and_each_gate_fails_strictly() -> None:
    assert GateThresholds() == GateThresholds(sharpe=1.2, max_drawdown=0.15, win_rate=0.45,
                                              profit_factor=1.3)
    assert evaluate(_report()).passed
    bad = evaluate(_report(sharpe=1.2, max_drawdown=0.15, win_rate=0.45, profit_factor=1.3))
    assert not bad.passed
    assert [c.name for c in bad.failed] == ["sharpe", "max_drawdown", "win_rate",
                                            "profit_factor"]
    assert str(bad.failed[0]) == "FAIL sharpe: 1.2 (needs > 1.2)"


def test_threshold_overrides() -> None:
    th = parse_thresholds(["sharpe=2", "max_drawdown=0.05"])
    assert (th.sharpe, th.max_drawdown, th.win_rate) == (2.0, 0.05, 0.45)
    assert [c.name for c in evaluate(_report(), th).failed] == ["sharpe", "max_drawdown"]
    with pytest.raises(ConfigError, match="unknown gate"):
        parse_thresholds(["calmar=1"])
    with pytest.raises(ConfigError, match="number"):
        parse_thresholds(["sharpe=high"])


def test_gate_file_round_trip_and_live_refusals(tmp_path: Path) -> None:
    cfg = tmp_path / "bot.toml"
    source, params = b"class S: pass\n", MaCross.Params()
    ident = {"source_hash": hashlib.sha256(source).hexdigest(),
             "params_hash": hashlib.sha256(params_json(params)).hexdigest()}
    assert read_gate(cfg) is None
    assert "no gate result" in str(live_refusal(cfg, source, params_json(params)))
    write_gate(cfg, evaluate(_report(sharpe=0.3), **ident))
    assert gate_path(cfg) == tmp_path / "bot.gate.json"
    assert "failed" in str(live_refusal(cfg, source, params_json(params)))
    write_gate(cfg, evaluate(_report(), **ident))
    assert isinstance(read_gate(cfg), GateResult)
    assert live_refusal(cfg, source, params_json(params)) is None
    assert "another version" in str(live_refusal(cfg, b"changed", params_json(params)))
    other = params_json(MaCross.Params(fast=5))
    assert "other params" in str(live_refusal(cfg, source, other))


async def test_admission_refuses_live_until_a_passed_gate(tmp_path: Path) -> None:
    strategy = (ROOT / "strategies/ma_cross.py").read_bytes()
    (tmp_path / "ma_cross.py").write_bytes(strategy)
    text = ('name = "live-bot"\nstrategy = "ma_cross.py"\nvenue = "paper"\n'
            'account = "paper-main"\nsymbols = ["GOOG"]\nmax_order_notional = 50000.0\n'
            'stage = "{}"\n')
    cfg = tmp_path / "live-bot.toml"
    cfg.write_text(text.format("paper"))
    assert (await admit_bot(cfg, smoke=False)).ok
    cfg.write_text(text.format("live"))
    adm = await admit_bot(cfg, smoke=False)
    assert [p.field for p in adm.problems] == ["stage"]
    ident = {"source_hash": hashlib.sha256(strategy).hexdigest(),
             "params_hash": hashlib.sha256(params_json(MaCross.Params())).hexdigest()}
    write_gate(cfg, evaluate(_report(), **ident))
    assert (await admit_bot(cfg, smoke=False)).ok
    cfg.write_text(text.format("production"))
    assert [p.field for p in (await admit_bot(cfg, smoke=False)).problems] == ["stage"]
