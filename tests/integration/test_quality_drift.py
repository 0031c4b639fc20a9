"""Drift: a bot's paper run (the live order path on a simulated clock, real GOOG bars) against
the backtest replay of the same bars (``qtd report drift``)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from qtd import metrics
from qtd.cli import build_parser
from qtd.commands.report import EXIT_FINDINGS, run_drift
from qtd.data import load_dataset
from qtd.feeds import available_ns
from qtd.quality.drift import equity_on_bars, rolling_sharpe
from qtd.sweep import Job, run_job

ROOT = Path(__file__).resolve().parents[2]
BOT = str(ROOT / "etc/bots/momo-goog.toml")


async def _live(tmp: Path, name: str, **costs: float) -> Path:
    """A paper run of momo-goog over goog_1d with these broker costs (its store)."""
    db = tmp / f"{name}.db"
    res = await run_job(Job(target=BOT, data="goog_1d", db=str(db), **costs))  # type: ignore[arg-type]
    assert not res.error and res.report is not None and res.report.trades > 10
    return db


async def _drift(db: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    args = build_parser().parse_args(["report", "drift", "--db", str(db), "--config", BOT,
                                      "--data", "goog_1d", "--json", *extra])
    out = io.StringIO()
    rc = await run_drift(args, out)
    return rc, json.loads(out.getvalue())


async def test_replay_of_the_same_bars_tracks_the_paper_run(tmp_path: Path) -> None:
    db = await _live(tmp_path, "same")
    rc, r = await _drift(db, "--floor", "-100")
    assert rc == 0 and r["gate_ok"] and not r["decay"]
    assert r["sharpe_fraction"] == pytest.approx(1.0, abs=0.01)
    assert r["tracking_error"] < 1e-3
    assert r["live_sharpe"] > 0 and r["bars"] > 2000


async def test_costlier_live_execution_fails_the_80_percent_gate(tmp_path: Path) -> None:
    db = await _live(tmp_path, "costly", slippage_bps=40.0, commission_bps=20.0)
    rc, r = await _drift(db, "--floor", "-100")
    assert rc == EXIT_FINDINGS and not r["gate_ok"]
    assert r["sharpe_fraction"] < 0.8 and r["live_pnl"] < r["backtest_pnl"]
    assert r["tracking_error"] > 0
    # the same costs in the replay: the two agree again
    rc, r = await _drift(db, "--floor", "-100", "--slippage-bps", "40", "--commission-bps",
                         "20")
    assert rc == 0 and r["sharpe_fraction"] == pytest.approx(1.0, abs=0.01)


async def test_decay_when_rolling_sharpe_is_below_its_floor(tmp_path: Path) -> None:
    db = await _live(tmp_path, "decay")
    rc, r = await _drift(db, "--window", "60", "--floor", "100")
    assert rc == EXIT_FINDINGS and r["decay"] and r["gate_ok"]
    assert r["rolling_sharpe"] < 100 and r["rolling_min"] <= r["rolling_sharpe"]


def test_rolling_sharpe_is_the_sharpe_of_the_trailing_window() -> None:
    bars = [b for b in load_dataset("goog_1d")][:300]
    eq = [100_000.0 + float(b.close) * 10 for b in bars]  # long 10 shares, no fills needed
    ppy = metrics.periods_per_year([available_ns(b) for b in bars])
    roll = rolling_sharpe(eq, 60, ppy)
    assert len(roll) == len(eq) - 60
    assert roll[-1] == pytest.approx(metrics.sharpe(eq[-61:], ppy))
    assert roll[0] == pytest.approx(metrics.sharpe(eq[:61], ppy))
    assert equity_on_bars([], bars[:5], 1000.0) == [1000.0] * 5


def test_a_flat_window_has_no_rolling_sharpe_and_is_not_judged() -> None:
    """Zero dispersion (qtd.metrics): a bot that sat flat over the window has no rolling
    Sharpe, so no decay is reported on it (it used to read 0.0, below any positive floor)."""
    from qtd.quality.drift import DriftConfig, compare

    bars = [b for b in load_dataset("goog_1d")][:100]
    assert rolling_sharpe([1000.0] * 100, 60, 252.0) == [None] * 40
    r = compare("flat", bars, [], [], 1000.0, DriftConfig(window=60, floor=0.5))
    assert r.rolling_sharpe is None and r.rolling_min is None and not r.decay
    assert "Sharpe n/a" in r.message
