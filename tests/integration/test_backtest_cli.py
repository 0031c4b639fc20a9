"""`qtd backtest`: report, JSON, event log readable by `qtd events`, charts, gates, sweeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qtd.cli import main
from qtd.gates import read_gate

ROOT = Path(__file__).resolve().parents[2]
MA = str(ROOT / "strategies/ma_cross.py")


def test_report_json_event_log_and_chart(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    db, html = tmp_path / "bt.db", tmp_path / "eq.html"
    assert main(["backtest", MA, "--data", "GOOG", "--db", str(db), "--json",
                 "--params", "qty=10", "--commission-bps", "20", "--slippage-bps", "0",
                 "--plot", str(html)]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    rep = doc["report"]
    assert rep["trades"] == 32 and rep["periods_per_year"] == 252
    assert rep["final_equity"] == pytest.approx(107_120.7682)
    assert doc["trades"][0]["entry_price"] == 186.31 and doc["trades"][-1]["open"]
    assert "2,148/2,148 bars" in err  # the progress line
    page = html.read_text()
    assert "<svg" in page and "<script" not in page and "src=" not in page
    assert main(["events", "--db", str(db), "--kind", "Fill", "--json"]) == 0
    fills = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(fills) == 65 and fills[0]["price"] == "186.31"
    assert main(["backtest", MA, "--data", "goog_1d", "--db", str(db)]) == 78  # never reused


def test_text_report_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "eq.png"
    assert main(["backtest", MA, "--data", "goog_1d", "--db", str(tmp_path / "a.db"),
                 "--fill", "close", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "Sharpe" in out and "sqrt(252)" in out and "fills at close" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gate_fails_with_the_failing_gates_listed_and_recorded(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "momo.toml"
    cfg.write_text(f'name = "momo"\nstrategy = "{MA}"\nvenue = "paper"\naccount = "paper"\n'
                   'symbols = ["GOOG"]\nmax_order_notional = 50000.0\n'
                   '[params]\nfast = 10\nslow = 30\nqty = 10.0\n')
    code = main(["backtest", str(cfg), "--data", "goog_1d", "--db", str(tmp_path / "g.db"),
                 "--gate"])
    out, err = capsys.readouterr()
    assert code == 3
    assert "failing gates: sharpe" in err and "FAIL sharpe" in out
    gate = read_gate(cfg)
    assert gate is not None and not gate.passed and gate.strategy == "MaCross"
    lenient = ["sharpe=0", "win_rate=0.4", "profit_factor=1", "max_drawdown=0.5"]
    assert main(["backtest", str(cfg), "--data", "goog_1d", "--db", str(tmp_path / "h.db"),
                 "--gate", *[a for t in lenient for a in ("--gate-threshold", t)]]) == 0
    passed = read_gate(cfg)
    assert passed is not None and passed.passed


def test_sweep_ranks_the_grid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backtest", MA, "--data", "goog_1d", "--sweep", "fast=5:10:5",
                 "slow=10:30:10", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "6 runs, ranked by sharpe (1 skipped: invalid params)"
    assert lines[1].split()[:3] == ["#", "fast", "slow"] and len(lines) == 2 + 5
    sharpes = [float(line.split()[3]) for line in lines[2:]]
    assert sharpes == sorted(sharpes, reverse=True)
