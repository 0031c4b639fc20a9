"""Incremental technical indicators for the strategy DSL: O(1) (amortized) work per update.

Every indicator is a small stateful object. ``update(...)`` feeds one bar and returns the
current value, or ``None`` until the indicator is warm; ``.value`` repeats the last result
and ``.ready`` says whether it is warm. ``.warmup`` is the number of updates needed before
the first value. Inputs are plain floats (indicators drive decisions, never money); NaN and
±inf are rejected with :class:`ValueError`, as are bad constructor arguments.

Conventions, each matched by a pandas reference in ``tests/unit/test_indicators.py``:

* EMA is seeded with the SMA of its first ``period`` inputs (TA-Lib's default
  ``TA_COMPATIBILITY_DEFAULT``), then ``ema += alpha * (x - ema)`` with
  ``alpha = 2 / (period + 1)``.
* RSI and ATR use Wilder's smoothing (J. Welles Wilder Jr., *New Concepts in Technical
  Trading Systems*, 1978): seed with the plain mean of the first ``period`` changes / true
  ranges, then ``avg += (x - avg) / period`` (pandas ``ewm(alpha=1/period, adjust=False)``).
  Both need a previous close, so their first value comes at update ``period + 1``.
* Rolling standard deviation keeps shifted running sums and recomputes the window exactly
  (``math.fsum`` two-pass) every ``period`` updates or sooner on cancellation, so error
  cannot build up over long runs; a window of identical values reports exactly 0 (as
  pandas does).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final

__all__ = [
    "ATR",
    "EMA",
    "RSI",
    "RSI_FLAT",
    "SMA",
    "BollingerBands",
    "Cross",
    "Donchian",
    "RollingStdev",
    "crossed_above",
    "crossed_below",
]

RSI_FLAT: Final = 50.0  # RSI when the average gain and average loss are both 0.
# Recompute a rolling variance exactly once rounding absorbed by its running sums (about
# 2**-52 of their churn) could exceed 1e-12 of what is left: churn / m2 > 1e-12 / 2**-52.
_CANCELLATION: Final = 2.0**-52 / 1e-12


def _check_period(name: str, period: object, minimum: int = 1) -> int:
    if isinstance(period, bool) or not isinstance(period, int) or period < minimum:
        raise ValueError(f"{name} period={period!r}: must be an int >= {minimum}")
    return period


def _check_input(name: str, field: str, x: float) -> float:
    if not math.isfinite(x):
        raise ValueError(f"{name} input {field}={x!r}: must be a finite number")
    return float(x)


def _check_bar(name: str, high: float, low: float) -> tuple[float, float]:
    high, low = _check_input(name, "high", high), _check_input(name, "low", low)
    if high < low:
        raise ValueError(f"{name} input high={high!r}, low={low!r}: must have high >= low")
    return high, low


class SMA:
    """Simple moving average: the mean of the last ``period`` inputs.

    Args:
        period: window length in updates (int >= 1). Warm-up: ``period`` updates.

    Raises:
        ValueError: ``period`` is not an int >= 1, or an input is NaN/inf.

    The running sum is recomputed exactly with ``math.fsum`` every ``period`` updates, so
    add/remove rounding cannot drift over long runs (O(1) amortized).
    """

    def __init__(self, period: int) -> None:
        self.period = _check_period("SMA", period)
        self.warmup = self.period
        self._window: deque[float] = deque(maxlen=self.period)
        self._sum = 0.0
        self._since_exact = 0
        self._value: float | None = None

    @property
    def value(self) -> float | None:
        return self._value

    @property
    def ready(self) -> bool:
        return self._value is not None

    def update(self, x: float) -> float | None:
        if type(x) is not float or x - x:  # x - x is NaN (truthy) for NaN and ±inf
            x = _check_input("SMA", "x", x)
        window, period = self._window, self.period
        if len(window) == period:  # full: slide (the sum loses the oldest, then adds x)
            total = self._sum - window[0]
            window.append(x)
            total += x
        else:
            window.append(x)
            total = self._sum + x
        since = self._since_exact + 1
        if since >= period:  # re-sum exactly now and then: no drift from the running sum
            total, since = math.fsum(window), 0
        self._sum, self._since_exact = total, since
        if len(window) == period:
            self._value = total / period
        return self._value


class EMA:
    """Exponential moving average with ``alpha = 2 / (period + 1)``, seeded with an SMA.

    The first value (after ``period`` updates) is the SMA of those inputs; after that
    ``ema += alpha * (x - ema)``. This is TA-Lib's default EMA; it equals pandas
    ``ewm(span=period, adjust=False)`` run over ``[sma_seed, x[period], x[period+1], ...]``.

    Args:
        period: span in updates (int >= 1). Warm-up: ``period`` updates.

    Raises:
        ValueError: ``period`` is not an int >= 1, or an input is NaN/inf.
    """

    def __init__(self, period: int) -> None:
        self.period = _check_period("EMA", period)
        self.warmup = self.period
        self.alpha = 2.0 / (self.period + 1)
        self._seed: list[float] = []
        self._value: float | None = None

    @property
    def value(self) -> float | None:
        return self._value

    @property
    def ready(self) -> bool:
        return self._value is not None

    def update(self, x: float) -> float | None:
        x = _check_input("EMA", "x", x)
        if self._value is not None:
            self._value += self.alpha * (x - self._value)
        else:
            self._seed.append(x)
            if len(self._seed) == self.period:
                self._value = math.fsum(self._seed) / self.period
                self._seed.clear()
        return self._value


class RollingStdev:
    """Standard deviation of the last ``period`` inputs (same units as the input).

    Keeps running sums of ``d = x - K`` and ``d**2`` over a deque, where the shift ``K`` is
    the window mean at the last exact recomputation (the "shifted data" algorithm), so the
    sums stay near the window's own scale instead of the price level. The window is
    recomputed exactly (two-pass ``math.fsum``, which also re-centres ``K``) every
    ``period`` updates, and early when the running sums have moved far more than the
    variance that is left (cancellation: the rounding already absorbed could exceed
    ~1e-12 of the result). Each recomputation is O(period) and runs at most about once per
    ``period`` updates, so updates are O(1) amortized and long runs cannot drift. A window
    of identical values reports exactly 0.0.

    Args:
        period: window length in updates (int >= 1 for ddof=0, >= 2 for ddof=1).
            Warm-up: ``period`` updates.
        ddof: 0 for the population stdev, 1 for the sample stdev (divisor ``period - ddof``).

    Raises:
        ValueError: bad ``period`` or ``ddof``, or an input is NaN/inf.
    """

    def __init__(self, period: int, ddof: int = 0) -> None:
        if isinstance(ddof, bool) or ddof not in (0, 1):
            raise ValueError(f"RollingStdev ddof={ddof!r}: must be 0 or 1")
        self.ddof = ddof
        self.period = _check_period("RollingStdev", period, minimum=ddof + 1)
        self.warmup = self.period
        self._window: deque[float] = deque(maxlen=self.period)
        self._shift = 0.0  # K
        self._s1 = 0.0  # sum of (x - K) over the window
        self._s2 = 0.0  # sum of (x - K)**2 over the window
        self._churn = 0.0  # magnitude of everything added to/removed from _s2 since exact
        self._since_exact = 0
        self._same_run = 0  # how many of the latest inputs equal the latest input
        self._value: float | None = None

    @property
    def value(self) -> float | None:
        return self._value

    @property
    def ready(self) -> bool:
        return self._value is not None

    @property
    def mean(self) -> float | None:
        """Mean of the current window (input units), or None until warm."""
        if self._value is None:
            return None
        if self._same_run >= self.period:
            return self._window[-1]
        return self._shift + self._s1 / self.period

    def update(self, x: float) -> float | None:
        x = _check_input("RollingStdev", "x", x)
        window = self._window
        self._same_run = self._same_run + 1 if window and window[-1] == x else 1
        if not window:
            self._shift = x
        if len(window) == self.period:
            self._add(self._shift - window[0], -1.0)
        window.append(x)
        self._add(x - self._shift, 1.0)
        self._since_exact += 1
        if self._since_exact >= self.period or self._m2() < self._churn * _CANCELLATION:
            self._recompute()
        if len(window) == self.period:
            self._value = self._stdev()
        return self._value

    def _add(self, d: float, sign: float) -> None:
        self._s1 += d
        self._s2 += sign * d * d
        self._churn += d * d

    def _m2(self) -> float:
        return self._s2 - self._s1 * self._s1 / len(self._window)

    def _recompute(self) -> None:
        n = len(self._window)
        self._shift = math.fsum(self._window) / n
        self._s1 = math.fsum(v - self._shift for v in self._window)
        self._s2 = math.fsum((v - self._shift) ** 2 for v in self._window)
        self._churn = self._s2
        self._since_exact = 0

    def _stdev(self) -> float:
        if self._same_run >= self.period:
            return 0.0
        return math.sqrt(max(self._m2(), 0.0) / (self.period - self.ddof))


class BollingerBands:
    """Bollinger Bands: ``(mid - k*sd, mid, mid + k*sd)`` over the last ``period`` inputs.

    ``mid`` is the SMA and ``sd`` the population stdev (ddof=0, as John Bollinger specifies
    in *Bollinger on Bollinger Bands*, 2001), both in input units.

    Args:
        period: window length in updates (int >= 2). Warm-up: ``period`` updates.
        k: band width in standard deviations (finite float > 0), commonly 2.
        ddof: 0 (default, Bollinger's convention) or 1.

    Raises:
        ValueError: bad ``period``, ``k`` or ``ddof``, or an input is NaN/inf.
    """

    def __init__(self, period: int, k: float = 2.0, ddof: int = 0) -> None:
        self.period = _check_period("BollingerBands", period, minimum=2)
        if isinstance(k, bool) or not isinstance(k, int | float) or not (0 < k < math.inf):
            raise ValueError(f"BollingerBands k={k!r}: must be a finite number > 0")
        self.k = float(k)
        self.warmup = self.period
        self._stdev = RollingStdev(self.period, ddof)
        self._value: tuple[float, float, float] | None = None

    @property
    def value(self) -> tuple[float, float, float] | None:
        """``(lower, mid, upper)``, or None until warm."""
        return self._value

    @property
    def ready(self) -> bool:
        return self._value is not None

    def update(self, x: float) -> tuple[float, float, float] | None:
        sd = self._stdev.update(_check_input("BollingerBands", "x", x))
        mid = self._stdev.mean
        if sd is not None and mid is not None:
            self._value = (mid - self.k * sd, mid, mid + self.k * sd)
        return self._value


class _Wilder:
    # Wilder smoothing: mean of the first ``period`` inputs, then ``avg += (x - avg) / period``.

    def __init__(self, period: int) -> None:
        self.period = period
        self._seed: list[float] = []
        self.value: float | None = None

    def update(self, x: float) -> float | None:
        if self.value is not None:
            self.value += (x - self.value) / self.period
        else:
            self._seed.append(x)
            if len(self._seed) == self.period:
                self.value = math.fsum(self._seed) / self.period
                self._seed.clear()
        return self.value


class RSI:
    """Relative Strength Index with Wilder's smoothing, in [0, 100].

    Gains/losses are the positive/negative parts of ``close - prev_close``; each is
    Wilder-smoothed (J. Welles Wilder Jr., *New Concepts in Technical Trading Systems*,
    1978): seeded with the mean of the first ``period`` values, then
    ``avg += (x - avg) / period`` (pandas ``ewm(alpha=1/period, adjust=False)``).
    ``RSI = 100 * avg_gain / (avg_gain + avg_loss)`` (= ``100 - 100 / (1 + RS)``); it is
    100 when there are no losses and :data:`RSI_FLAT` (50) when price has not moved at all.
    TA-Lib returns 0 in that flat case instead.

    Args:
        period: smoothing length in price changes (int >= 2), commonly 14.
            Warm-up: ``period + 1`` closes.

    Raises:
        ValueError: ``period`` is not an int >= 2, or an input is NaN/inf.
    """

    def __init__(self, period: int) -> None:
        self.period = _check_period("RSI", period, minimum=2)
        self.warmup = self.period + 1
        self._prev: float | None = None
        self._gain = _Wilder(self.period)
        self._loss = _Wilder(self.period)
        self._value: float | None = None

    @property
    def value(self) -> float | None:
        return self._value

    @property
    def ready(self) -> bool:
        return self._value is not None

    def update(self, close: float) -> float | None:
        close = _check_input("RSI", "close", close)
        prev, self._prev = self._prev, close
        if prev is None:
            return None
        change = close - prev
        gain = self._gain.update(max(change, 0.0))
        loss = self._loss.update(max(-change, 0.0))
        if gain is not None and loss is not None:
            total = gain + loss
            self._value = RSI_FLAT if total == 0.0 else 100.0 * gain / total
        return self._value


class ATR:
    """Average True Range with Wilder's smoothing, in price units.

    True range = ``max(high - low, |high - prev_close|, |low - prev_close|)``; it needs a
    previous close, so the first bar only primes it (as in TA-Lib). The first ``period``
    true ranges are averaged, then ``atr += (tr - atr) / period`` (Wilder, 1978).

    Args:
        period: smoothing length in bars (int >= 1), commonly 14.
            Warm-up: ``period + 1`` bars.

    Raises:
        ValueError: ``period`` is not an int >= 1, an input is NaN/inf, or high < low.
    """

    def __init__(self, period: int) -> None:
        self.period = _check_period("ATR", period)
        self.warmup = self.period + 1
        self._prev_close: float | None = None
        self._avg = _Wilder(self.period)

    @property
    def value(self) -> float | None:
        return self._avg.value

    @property
    def ready(self) -> bool:
        return self._avg.value is not None

    def update(self, high: float, low: float, close: float) -> float | None:
        high, low = _check_bar("ATR", high, low)
        close = _check_input("ATR", "close", close)
        prev, self._prev_close = self._prev_close, close
        if prev is None:
            return None
        return self._avg.update(max(high - low, abs(high - prev), abs(low - prev)))


class Donchian:
    """Donchian channel: ``(lowest low, highest high)`` over the last ``period`` bars.

    Monotonic deques give O(1) amortized updates (each bar enters and leaves once).

    Args:
        period: window length in bars (int >= 1). Warm-up: ``period`` bars.

    Raises:
        ValueError: ``period`` is not an int >= 1, an input is NaN/inf, or high < low.
    """

    def __init__(self, period: int) -> None:
        self.period = _check_period("Donchian", period)
        self.warmup = self.period
        self._count = 0
        self._highs: deque[tuple[int, float]] = deque()  # values strictly decreasing
        self._lows: deque[tuple[int, float]] = deque()  # values strictly increasing
        self._value: tuple[float, float] | None = None

    @property
    def value(self) -> tuple[float, float] | None:
        """``(lower, upper)``, or None until warm."""
        return self._value

    @property
    def ready(self) -> bool:
        return self._value is not None

    def update(self, high: float, low: float) -> tuple[float, float] | None:
        high, low = _check_bar("Donchian", high, low)
        i, self._count = self._count, self._count + 1
        while self._highs and self._highs[-1][1] <= high:
            self._highs.pop()
        self._highs.append((i, high))
        while self._lows and self._lows[-1][1] >= low:
            self._lows.pop()
        self._lows.append((i, low))
        oldest = i - self.period + 1
        if self._highs[0][0] < oldest:
            self._highs.popleft()
        if self._lows[0][0] < oldest:
            self._lows.popleft()
        if self._count >= self.period:
            self._value = (self._lows[0][1], self._highs[0][1])
        return self._value


def crossed_above(prev_a: float, prev_b: float, a: float, b: float) -> bool:
    """True if ``a`` moved from at-or-below ``b`` to strictly above it.

    Same rule as freqtrade's ``qtpylib.crossed_above``: ``prev_a <= prev_b and a > b``.
    """
    return prev_a <= prev_b and a > b


def crossed_below(prev_a: float, prev_b: float, a: float, b: float) -> bool:
    """True if ``a`` moved from at-or-above ``b`` to strictly below it."""
    return prev_a >= prev_b and a < b


class Cross:
    """Tracks two series and reports +1 when ``a`` crosses above ``b``, -1 below, else 0.

    Unlike :func:`crossed_above`, it remembers the last *strict* side, so touching
    (``a == b``) and returning to the same side is not a cross, and
    below → equal → above reports +1 once, on the bar where ``a`` becomes strictly above.
    ``None`` inputs (an indicator still warming up) report 0 and leave the state unchanged,
    so ``cross.update(fast.update(x), slow.update(x))`` works from the first bar.
    """

    def __init__(self) -> None:
        self._side = 0  # sign of (a - b) at the last update where a != b
        self.value = 0

    @property
    def ready(self) -> bool:
        """True once ``a`` and ``b`` have been seen on a strict side of each other."""
        return self._side != 0

    def update(self, a: float | None, b: float | None) -> int:
        if a is None or b is None:
            self.value = 0
            return 0
        if type(a) is not float or a - a:
            a = _check_input("Cross", "a", a)
        if type(b) is not float or b - b:
            b = _check_input("Cross", "b", b)
        side = (a > b) - (a < b)
        self.value = side if side and self._side and side != self._side else 0
        if side:
            self._side = side
        return self.value
