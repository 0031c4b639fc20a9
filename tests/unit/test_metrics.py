"""Performance metrics against hand-computed values and numpy references."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest

from qtd import metrics as m
from qtd.events import Fill, Side

DAY = m.NS_PER_DAY
T0 = 1_577_836_800 * 10**9  # 2020-01-01T00:00Z, a Wednesday


def _fill(side: Side, qty: str, price: str, ts: int, fee: str = "0", sym: str = "X") -> Fill:
    return Fill(node="n", bot="b", ts_event=ts, ts_init=ts, client_order_id=f"c{ts}",
                trade_id=f"t{ts}", account="a", venue="paper", symbol=sym, side=side,
                qty=Decimal(qty), price=Decimal(price), commission=Decimal(fee))


def test_hand_computed_curve() -> None:
    eq = [100.0, 110.0, 99.0, 121.0]
    assert m.returns(eq) == pytest.approx([0.1, -0.1, 121 / 99 - 1])
    assert m.total_return(eq) == pytest.approx(0.21)
    assert m.drawdown_series(eq) == pytest.approx([0, 0, 0.1, 0])
    dd = m.drawdown(eq, [T0 + i * DAY for i in range(4)])
    assert (dd.max_drawdown, dd.duration_bars, dd.duration_days) == (pytest.approx(0.1), 2, 2.0)
    # one year at 21 %: CAGR = 21 %
    assert m.cagr([100.0, 121.0], [T0, T0 + int(365.25 * DAY)]) == pytest.approx(0.21)


def test_drawdown_not_recovered_runs_to_the_end() -> None:
    dd = m.drawdown([100.0, 120.0, 90.0, 100.0], [T0 + i * DAY for i in range(4)])
    assert dd.max_drawdown == pytest.approx(0.25) and dd.duration_bars == 2


def test_sharpe_sortino_volatility_match_numpy() -> None:
    rng = np.random.default_rng(7)
    r = rng.normal(0.0005, 0.01, 500)
    eq = list(100_000 * np.cumprod(np.concatenate([[1.0], 1 + r])))
    q = 252.0
    assert m.volatility(eq, q) == pytest.approx(np.std(r, ddof=1) * math.sqrt(q), rel=1e-9)
    assert m.sharpe(eq, q) == pytest.approx(r.mean() / np.std(r, ddof=1) * math.sqrt(q),
                                            rel=1e-9)
    downside = np.sqrt(np.mean(np.minimum(r, 0) ** 2))
    assert m.sortino(eq, q) == pytest.approx(r.mean() / downside * math.sqrt(q), rel=1e-9)
    peak = np.maximum.accumulate(eq)
    assert m.drawdown(eq, list(range(len(eq)))).max_drawdown == pytest.approx(
        np.max(1 - np.array(eq) / peak))


def test_degenerate_curves() -> None:
    assert m.sharpe([100.0, 100.0, 100.0], 252) == 0.0  # undefined: the report prints 0
    assert m.sortino([100.0, 101.0, 102.0], 252) == math.inf
    assert m.total_return([100.0]) == 0.0


@pytest.mark.parametrize("values", [
    [], [1.5], [0.0, 0.0], [-5.0, -5.0, -5.0], [0.1, 0.1, 0.1], [0.7, 0.7, 0.7], [2.0] * 30,
])
def test_sharpe_is_undefined_at_zero_dispersion(values: list[float]) -> None:
    """The one zero-dispersion rule: no Sharpe (None), never ±inf nor a huge ratio from a
    standard deviation rounded to ~1e-17 (fsum of three 0.1 / 3 is not 0.1)."""
    assert m.sharpe_ratio(values) is None
    assert m.sharpe_ratio(values, 252.0) is None
    assert m.mean_std([0.1, 0.1, 0.1])[1] > 0  # why equality is tested, not the std


def test_sharpe_ratio_per_value_and_annualised() -> None:
    assert m.sharpe_ratio([1.0, 3.0]) == pytest.approx(2 / math.sqrt(2))
    assert m.sharpe_ratio([1.0, 3.0], 4.0) == pytest.approx(2 * 2 / math.sqrt(2))
    assert m.sharpe_ratio([-1.0, -1.0, -1.5]) == pytest.approx(
        (-3.5 / 3) / float(np.std([-1.0, -1.0, -1.5], ddof=1)))


def test_tracking_error_is_the_annualised_std_of_return_differences() -> None:
    a, b = [100.0, 101.0, 100.0, 102.0], [100.0, 100.5, 100.5, 101.0]
    diff = np.array(m.returns(a)) - np.array(m.returns(b))
    assert m.tracking_error(a, b, 252.0) == pytest.approx(np.std(diff, ddof=1) * math.sqrt(252))
    assert m.tracking_error(a, a, 252.0) == 0.0
    assert m.tracking_error([1.0], [1.0], 252.0) == 0.0


@pytest.mark.parametrize(("step", "weekend", "want"), [
    (DAY, False, 252.0), (DAY, True, 365.0), (7 * DAY, False, 52.0), (30 * DAY, True, 12.0),
    (3600 * 10**9, True, 24 * 365.0),
])
def test_periods_per_year(step: int, weekend: bool, want: float) -> None:
    ts = [T0 + i * step for i in range(400)]
    if not weekend and step == DAY:  # drop Saturdays and Sundays
        ts = [t for t in ts if (t // DAY + 3) % 7 < 5]
    assert m.periods_per_year(ts) == want


def test_trade_stats_hand_computed() -> None:
    pnls = [100.0, -50.0, 30.0, -20.0, 0.0]
    assert m.win_rate(pnls) == pytest.approx(0.4)
    assert m.profit_factor(pnls) == pytest.approx(130 / 70)
    assert m.profit_factor([5.0]) == math.inf and m.profit_factor([]) == 0.0
    assert m.exposure([True, False, True, True]) == 0.75


def test_round_trips_from_fills_with_scale_in_flip_and_commissions() -> None:
    fills = [
        _fill(Side.BUY, "10", "100", 1, "1"), _fill(Side.BUY, "10", "110", 2, "1"),
        _fill(Side.SELL, "20", "120", 3, "2"),          # closes the long: avg entry 105
        _fill(Side.SELL, "5", "50", 4, "0.5"),          # opens a short
        _fill(Side.BUY, "10", "40", 5, "1"),            # closes it (5) and opens a long (5)
    ]
    long1, short, long2 = m.trades_from_fills(fills)
    assert (long1.side, long1.qty, long1.entry_price, long1.exit_price) == (
        "LONG", 20, 105, 120)
    assert (long1.gross_pnl, long1.commission, long1.pnl) == (300, 4, 296)
    assert (short.side, short.gross_pnl, short.commission, short.exit_ts_ns) == (
        "SHORT", 50, Decimal("1.0"), 5)
    assert long2.is_open and long2.qty == 5 and long2.entry_price == 40


def test_report_from_curve_and_trades() -> None:
    ts = [T0 + i * DAY for i in range(4)]
    trades = m.trades_from_fills([_fill(Side.BUY, "1", "10", 1), _fill(Side.SELL, "1", "12", 2)])
    rep = m.report(ts, [100.0, 110.0, 99.0, 121.0], [False, True, True, False], trades, 1.5,
                   ppy=252)
    assert (rep.trades, rep.avg_trade, rep.win_rate, rep.commissions) == (1, 2.0, 1.0, 1.5)
    assert rep.exposure == 0.5 and rep.max_drawdown == pytest.approx(0.1)
    with pytest.raises(ValueError, match="empty"):
        m.report([], [], [], [], 0.0)
