"""Performance metrics of a backtest: pure functions on an equity curve and a trade list.

Conventions (all documented per function):

* **Returns** are simple per-period returns of the equity curve, ``r_t = E_t / E_{t-1} − 1``,
  one period per curve point (per bar).
* **Periods per year** ``q`` (:func:`periods_per_year`) are inferred from the bar spacing:
  daily bars → 252 when bars fall on at most 5 distinct weekdays (exchange-traded equities:
  closed at weekends), 365 when they fall on all 7 (crypto trades every day); weekly → 52;
  monthly → 12; intraday → median bars per UTC day × 252 (or × 365 with weekend bars).
* **Annualisation** multiplies per-period volatility by √q (i.i.d. returns; Lo, "The
  Statistics of Sharpe Ratios", Financial Analysts Journal 58(4), 2002).
* The risk-free rate is 0; standard deviations are sample (``ddof = 1``).
* **Zero dispersion** (the one rule for every Sharpe in qtd: backtest, breakers, drift,
  the leader's decay alert, the canary): a series with fewer than two values, or whose
  values are all equal, has no dispersion and its Sharpe is *undefined*:
  :func:`sharpe_ratio` returns ``None`` — never ±inf (JSON has no infinity: msgspec writes
  ``null``, which a ``float`` field cannot decode) and never a 0 that reads as a measured
  figure. Equality is tested exactly, not on a computed standard deviation, which rounds
  to ~1e-17 for some constant series. Each caller says what undefined means for it: a
  flat series is no evidence, so nothing trips, decays or rolls back on it. Only the
  backtest :class:`Report`, whose figures are numbers, prints it as 0.0.
* A **trade** is a round trip in one (bot, account, symbol) from flat back to flat; a fill
  that flips the position closes one trade and opens the next (commission split by
  quantity). Trade PnL is net of the commissions of its fills.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from itertools import pairwise
from statistics import median
from typing import Final

import msgspec

from qtd.events import Fill, Side

NS_PER_DAY: Final = 86_400 * 10**9
DAYS_PER_YEAR: Final = 365.25
_ZERO = Decimal(0)


class Trade(msgspec.Struct, kw_only=True):
    """One round trip (module docstring). Prices are quantity-weighted averages.

    Attributes:
        bot, account, symbol: whose trade.
        side: ``"LONG"`` or ``"SHORT"``.
        qty: largest absolute position held during the trade, instrument units.
        entry_ts_ns / exit_ts_ns: first entry fill / last exit fill time, UTC ns
            (``exit_ts_ns`` is 0 while the trade is open).
        entry_price / exit_price: average entry / exit price, quote currency.
        gross_pnl: price PnL of the closed quantity, quote currency.
        commission: commissions of its fills, quote currency.
    """

    bot: str
    account: str
    symbol: str
    side: str
    qty: Decimal = _ZERO
    entry_ts_ns: int = 0
    exit_ts_ns: int = 0
    entry_price: Decimal = _ZERO
    exit_price: Decimal = _ZERO
    gross_pnl: Decimal = _ZERO
    commission: Decimal = _ZERO
    _entry_qty: Decimal = _ZERO
    _entry_cost: Decimal = _ZERO
    _exit_qty: Decimal = _ZERO
    _exit_value: Decimal = _ZERO

    @property
    def pnl(self) -> Decimal:
        """Net PnL: gross PnL minus commissions, quote currency."""
        return self.gross_pnl - self.commission

    @property
    def is_open(self) -> bool:
        return self.exit_ts_ns == 0

    def add_entry(self, f: Fill, qty: Decimal) -> None:
        """``qty`` of fill ``f`` opens or adds to the trade (its share of the commission)."""
        self._entry_qty += qty
        self._entry_cost += qty * f.price
        self.entry_price = self._entry_cost / self._entry_qty
        self.commission += f.commission * qty / f.qty

    def add_exit(self, f: Fill, qty: Decimal) -> None:
        """``qty`` of fill ``f`` closes part of the trade (its share of the commission)."""
        sign = 1 if self.side == "LONG" else -1
        self.gross_pnl += sign * qty * (f.price - self.entry_price)
        self._exit_qty += qty
        self._exit_value += qty * f.price
        self.exit_price = self._exit_value / self._exit_qty
        self.commission += f.commission * qty / f.qty


def trades_from_fills(fills: Iterable[Fill]) -> list[Trade]:
    """Round trips (module docstring) from fills in time order; open trades come last
    with ``exit_ts_ns == 0``."""
    open_: dict[tuple[str, str, str], tuple[Trade, Decimal]] = {}
    closed: list[Trade] = []
    for f in fills:
        key = (f.bot, f.account, f.symbol)
        signed = f.qty if f.side is Side.BUY else -f.qty
        trade, pos = open_.pop(key, (None, _ZERO))
        if trade is not None and (pos > 0) != (signed > 0):  # reduces, closes or flips
            closing = min(abs(signed), abs(pos))
            trade.add_exit(f, closing)
            pos += closing if pos < 0 else -closing
            signed += closing if signed < 0 else -closing
            if pos:
                open_[key] = (trade, pos)
                continue
            trade.exit_ts_ns = f.ts_event
            closed.append(trade)
            trade = None
        if signed:
            if trade is None:
                trade = Trade(bot=f.bot, account=f.account, symbol=f.symbol,
                              side="LONG" if signed > 0 else "SHORT", entry_ts_ns=f.ts_event)
            trade.add_entry(f, abs(signed))
            pos += signed
            trade.qty = max(trade.qty, abs(pos))
            open_[key] = (trade, pos)
    return closed + [t for t, _ in open_.values()]


# --- the equity curve ----------------------------------------------------------------------


def periods_per_year(ts_ns: Sequence[int]) -> float:
    """Bars per year inferred from bar times (UTC ns) as in the module docstring.

    Raises:
        ValueError: fewer than two times.
    """
    if len(ts_ns) < 2:
        raise ValueError("need at least two bar times to infer the bar interval")
    step = median(b - a for a, b in pairwise(ts_ns))
    days = [datetime.fromtimestamp(t // 10**9, UTC) for t in ts_ns]
    # 7 distinct weekdays = trades every day (crypto); works for open- and close-stamped bars
    year_days = 365 if len({d.weekday() for d in days}) > 5 else 252
    if step >= 25 * NS_PER_DAY:
        return 12.0
    if step >= 5 * NS_PER_DAY:
        return 52.0
    if step >= NS_PER_DAY // 2:
        return float(year_days)
    per_day: dict[object, int] = {}
    for d in days:
        per_day[d.date()] = per_day.get(d.date(), 0) + 1
    return float(median(per_day.values()) * year_days)


def returns(equity: Sequence[float]) -> list[float]:
    """Simple per-period returns ``E_t / E_{t−1} − 1`` (fraction)."""
    return [b / a - 1.0 if a else 0.0 for a, b in pairwise(equity)]


def total_return(equity: Sequence[float]) -> float:
    """``E_last / E_first − 1`` (fraction; 0.25 = +25 %)."""
    return equity[-1] / equity[0] - 1.0 if len(equity) > 1 and equity[0] else 0.0


def cagr(equity: Sequence[float], ts_ns: Sequence[int]) -> float:
    """Compound annual growth rate ``(E_last / E_first)^(1 / years) − 1``, years of
    365.25 days between the first and last point (fraction)."""
    years = (ts_ns[-1] - ts_ns[0]) / NS_PER_DAY / DAYS_PER_YEAR if len(ts_ns) > 1 else 0.0
    if years <= 0 or equity[0] <= 0 or equity[-1] <= 0:
        return 0.0
    return float((equity[-1] / equity[0]) ** (1.0 / years) - 1.0)


def mean_std(r: Sequence[float]) -> tuple[float, float]:
    """``(mean(r), std(r, ddof=1))`` with exact (``math.fsum``) sums; std 0 below 2 values."""
    n = len(r)
    if n < 2:
        return (r[0] if r else 0.0), 0.0
    mean = math.fsum(r) / n
    return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in r) / (n - 1))


def volatility(equity: Sequence[float], ppy: float) -> float:
    """Annualised volatility ``std(r, ddof=1) × √q`` (fraction)."""
    return mean_std(returns(equity))[1] * math.sqrt(ppy)


def sharpe_ratio(values: Sequence[float], ppy: float = 1.0) -> float | None:
    """Sharpe ratio of a series, ``mean / std(ddof=1) × √ppy``, zero risk-free rate (Sharpe,
    "The Sharpe Ratio", J. Portfolio Management, 1994; annualised per Lo 2002).

    Args:
        values: per-period returns (fraction) or per-trade PnLs (currency), oldest first.
        ppy: periods per year to annualise with; 1 (the default) leaves it per value,
            e.g. per trade.

    Returns:
        The ratio, or None when undefined: zero dispersion (module docstring).
    """
    if len(values) < 2 or min(values) == max(values):
        return None
    mean, std = mean_std(values)
    if std <= 0.0:  # values that differ by less than the square of a float can represent
        return None
    return mean / std * math.sqrt(ppy)


def sharpe(equity: Sequence[float], ppy: float) -> float:
    """Annualised Sharpe ratio of an equity curve's returns for the backtest report:
    :func:`sharpe_ratio` of ``returns(equity)`` with ``q = ppy``, reported as 0.0 when
    undefined (returns that do not vary: module docstring)."""
    value = sharpe_ratio(returns(equity), ppy)
    return 0.0 if value is None else value


def tracking_error(equity: Sequence[float], benchmark: Sequence[float], ppy: float) -> float:
    """Annualised tracking error ``std(r − r_benchmark, ddof=1) × √q`` of two equity curves
    on the same grid (fraction; Grinold and Kahn, *Active Portfolio Management*, 2nd ed.,
    2000, ch. 4); 0 for fewer than two returns.

    Raises:
        ValueError: the curves differ in length.
    """
    diff = [a - b for a, b in zip(returns(equity), returns(benchmark), strict=True)]
    if not diff:
        return 0.0
    mean = math.fsum(diff) / len(diff)
    return math.sqrt(math.fsum((x - mean) ** 2 for x in diff) / max(len(diff) - 1, 1) * ppy)


def sortino(equity: Sequence[float], ppy: float) -> float:
    """Annualised Sortino ratio ``mean(r) / DD × √q``, downside deviation
    ``DD = √(mean(min(r, 0)²))`` over all periods, target return 0 (Sortino & Price,
    "Performance Measurement in a Downside Risk Framework", J. Investing, 1994).
    ``inf`` with gains and no losing period, 0 without returns."""
    r = returns(equity)
    if not r:
        return 0.0
    dd = math.sqrt(math.fsum(min(x, 0.0) ** 2 for x in r) / len(r))
    mean = math.fsum(r) / len(r)
    if dd == 0:
        return math.inf if mean > 0 else 0.0
    return mean / dd * math.sqrt(ppy)


class Drawdown(msgspec.Struct, frozen=True, kw_only=True):
    """Deepest peak-to-trough fall and the longest time under water.

    Attributes:
        max_drawdown: ``max_t (1 − E_t / max_{s≤t} E_s)`` (fraction; 0.15 = 15 %).
        duration_bars: most curve points from a peak until equity is back at that peak
            (or the end of the curve).
        duration_days: the same span in calendar days.
    """

    max_drawdown: float
    duration_bars: int
    duration_days: float


def drawdown_series(equity: Sequence[float]) -> list[float]:
    """Drawdown at each point ``1 − E_t / running peak`` (fraction, ≥ 0)."""
    peak = -math.inf
    out = []
    for e in equity:
        peak = max(peak, e)
        out.append(1.0 - e / peak if peak > 0 else 0.0)
    return out


def drawdown(equity: Sequence[float], ts_ns: Sequence[int]) -> Drawdown:
    """Max drawdown and its longest duration (see :class:`Drawdown`)."""
    dd = drawdown_series(equity)
    longest = (0, 0)  # (bars, ns)
    start: int | None = None
    for i, d in enumerate([*dd, 0.0]):
        if d > 0 and start is None:
            start = i - 1
        elif d <= 0 and start is not None:
            end = min(i, len(dd) - 1)
            longest = max(longest, (end - start, ts_ns[end] - ts_ns[start]))
            start = None
    return Drawdown(max_drawdown=max(dd, default=0.0), duration_bars=longest[0],
                    duration_days=longest[1] / NS_PER_DAY)


def exposure(exposed: Sequence[bool]) -> float:
    """Fraction of curve points with a position open."""
    return sum(exposed) / len(exposed) if exposed else 0.0


# --- trades --------------------------------------------------------------------------------


def win_rate(pnls: Sequence[float]) -> float:
    """Winning trades (net PnL > 0) / trades (fraction; 0 without trades)."""
    return sum(p > 0 for p in pnls) / len(pnls) if pnls else 0.0


def profit_factor(pnls: Sequence[float]) -> float:
    """Gross profit / gross loss ``Σ wins / |Σ losses|`` over net trade PnLs; ``inf`` with
    wins and no losses, 0 without wins."""
    wins = math.fsum(p for p in pnls if p > 0)
    losses = -math.fsum(p for p in pnls if p < 0)
    if losses == 0:
        return math.inf if wins > 0 else 0.0
    return wins / losses


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """Every figure of a backtest report (fractions are 0.25 = 25 %; money in the quote
    currency; ``periods_per_year`` is the q used to annualise, see the module docstring)."""

    start_equity: float
    final_equity: float
    total_return: float
    cagr: float
    volatility: float
    sharpe: float
    sortino: float
    max_drawdown: float
    max_drawdown_days: float
    max_drawdown_bars: int
    win_rate: float
    profit_factor: float
    exposure: float
    trades: int
    avg_trade: float
    commissions: float
    periods_per_year: float
    bars: int
    start_ts_ns: int
    end_ts_ns: int


def report(
    ts_ns: Sequence[int], equity: Sequence[float], exposed: Sequence[bool],
    trades: Sequence[Trade], commissions: float, *, ppy: float | None = None,
) -> Report:
    """Compute the report from a mark-to-market equity curve (one point per bar) and the
    trade list; only closed trades count for win rate, profit factor and average trade.

    Args:
        ts_ns, equity, exposed: the curve (UTC ns, quote currency, position open?).
        trades: round trips (:func:`trades_from_fills`).
        commissions: every commission paid, quote currency.
        ppy: periods per year; inferred with :func:`periods_per_year` when None.

    Raises:
        ValueError: an empty curve.
    """
    if not equity:
        raise ValueError("empty equity curve: no bars were replayed")
    q = ppy if ppy is not None else (periods_per_year(ts_ns) if len(ts_ns) > 1 else 252.0)
    pnls = [float(t.pnl) for t in trades if not t.is_open]
    dd = drawdown(equity, ts_ns)
    return Report(
        start_equity=equity[0], final_equity=equity[-1], total_return=total_return(equity),
        cagr=cagr(equity, ts_ns), volatility=volatility(equity, q), sharpe=sharpe(equity, q),
        sortino=sortino(equity, q), max_drawdown=dd.max_drawdown,
        max_drawdown_days=dd.duration_days, max_drawdown_bars=dd.duration_bars,
        win_rate=win_rate(pnls), profit_factor=profit_factor(pnls), exposure=exposure(exposed),
        trades=len(pnls), avg_trade=math.fsum(pnls) / len(pnls) if pnls else 0.0,
        commissions=commissions, periods_per_year=q, bars=len(equity),
        start_ts_ns=ts_ns[0], end_ts_ns=ts_ns[-1],
    )
