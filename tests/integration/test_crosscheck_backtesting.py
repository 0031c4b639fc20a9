"""qtd agrees with an independent backtester: backtesting.py (AGPL, test-only dependency).

Same data (the bundled GOOG daily series is backtesting.py's own GOOG.csv), same strategy
(fixed 10-share SMA(10)/SMA(30) crossover, long only), same rules: market orders at the next
bar's open (backtesting.py's ``trade_on_close=False`` default), commission 0.2 % of notional
on entry and on exit (backtesting.py ``commission=0.002``; qtd ``commission_bps=20``), no
spread/slippage, whole shares, cash large enough that no order is refused, and the trade
still open at the end left open (``finalize_trades=False``: both mark it at the last close).
"""

from __future__ import annotations

import warnings
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from qtd.backtest import BacktestBot, BacktestResult, run_backtest
from qtd.data import load_dataset
from qtd.metrics import report, trades_from_fills
from qtd.risk.load import parse_risk_config
from qtd.runner import BotSpec
from qtd.store import EventStore
from strategies.ma_cross import MaCross

bt = pytest.importorskip("backtesting")
pd = pytest.importorskip("pandas")

CASH = 100_000
QTY = 10
COMMISSION = 0.002  # 20 bps
CENT = 0.005


def _bt_run() -> Any:
    from backtesting import Backtest, Strategy
    from backtesting.lib import crossover
    from backtesting.test import GOOG, SMA

    class SmaCross(Strategy):  # type: ignore[misc]
        def init(self) -> None:
            self.fast = self.I(SMA, self.data.Close, 10)
            self.slow = self.I(SMA, self.data.Close, 30)

        def next(self) -> None:
            if crossover(self.fast, self.slow):
                self.buy(size=QTY)
            elif crossover(self.slow, self.fast):
                self.position.close()

    run = Backtest(GOOG, SmaCross, cash=CASH, commission=COMMISSION)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = run.run()
    expected = ("remain open", "dayofweek is deprecated")  # the open trade; pandas 3 vs bt 0.6
    assert all(any(e in str(w.message) for e in expected) for w in caught), [
        str(w.message) for w in caught]
    return stats


async def _qtd_run(tmp: Path) -> BacktestResult:
    risk = parse_risk_config({
        "global": {"duplicate_window_s": 0.0, "order_spike_factor": 0.0},
        "accounts": {"bt": {"equity": 1e9}}, "strategies": {"sma": {}}, "symbols": {"GOOG": {}},
    })
    bot = BacktestBot(strategy=MaCross, params=MaCross.Params(fast=10, slow=30, qty=QTY),
                      spec=BotSpec(name="sma", account="bt", venue="paper", symbols=("GOOG",)))
    store = await EventStore.open(tmp / "cross.db", node="bt")
    try:
        return await run_backtest(
            [bot], load_dataset("goog_1d"), store=store, risk=risk,
            accounts={"bt": {"cash": Decimal(CASH), "commission_bps": Decimal(20),
                             "fill_at": "next_open"}})
    finally:
        await store.close()


def _day(ts_ns: int) -> Any:
    return pd.Timestamp(ts_ns, unit="ns").normalize()


async def test_trades_and_final_equity_match_backtesting_py_to_the_cent(tmp_path: Path) -> None:
    stats = _bt_run()
    result = await _qtd_run(tmp_path)
    assert result.bots["sma"].denials == 0 and not result.bots["sma"].error
    ours = trades_from_fills(result.fills)
    closed = [t for t in ours if not t.is_open]
    theirs = stats["_trades"]
    assert len(closed) == len(theirs) > 20
    for t, (_, row) in zip(closed, theirs.iterrows(), strict=True):
        assert (_day(t.entry_ts_ns), _day(t.exit_ts_ns)) == (row.EntryTime, row.ExitTime)
        assert float(t.qty) == abs(row.Size)
        assert abs(float(t.entry_price) - row.EntryPrice) < CENT
        assert abs(float(t.exit_price) - row.ExitPrice) < CENT
        assert abs(float(t.pnl) - row.PnL) < CENT
    assert abs(float(result.final_equity) - stats["Equity Final [$]"]) < CENT
    # the equity curves agree bar by bar once both have started (bt skips the warm-up)
    curve = pd.Series(result.curve.equity)
    assert abs(curve.iloc[-1] - stats["_equity_curve"]["Equity"].iloc[-1]) < CENT
    assert abs(float(result.curve.equity[-1]) - float(result.final_equity)) < CENT
    # figures defined the same way in both: drawdown, its duration, win rate, trade count
    rep = report(result.curve.ts_ns, result.curve.equity, result.curve.exposed, ours, 0.0)
    assert rep.max_drawdown == pytest.approx(-stats["Max. Drawdown [%]"] / 100, abs=1e-9)
    assert rep.max_drawdown_days == stats["Max. Drawdown Duration"].days
    assert rep.win_rate == pytest.approx(stats["Win Rate [%]"] / 100)
    assert rep.trades == stats["# Trades"] and rep.periods_per_year == 252
