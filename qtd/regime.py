"""Built-in market regime classifier: ``trend``, ``range`` or ``high_vol`` from recent bars.

Two scale-free measures, computed with :mod:`qtd.indicators` on the last ``lookback`` bars:

* **Volatility ratio** — ATR(``atr_period``) / close (ATR%) on the last bar divided by the
  median ATR% over the lookback. Above ``vol_ratio`` (default 1.5) the market is
  ``high_vol``: volatility is half again its own recent norm. Being relative, the same
  threshold works for daily, hourly or monthly bars and for any asset.
* **Efficiency ratio** (Kaufman, *Trading Systems and Methods*) over the last ``er_period``
  closes: ``|close[-1] - close[-1-n]| / Σ|close[i] - close[i-1]|``, in [0, 1]. 1 is a straight
  line, ~0 is chop. At or above ``er_trend`` (default 0.3) the market is ``trend``, else
  ``range``.

High volatility wins over trend/range. With fewer than ``lookback`` bars the regime is
``unknown`` and no regime-conditioned route matches.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from enum import StrEnum

import msgspec

from qtd.feeds import Bar
from qtd.indicators import ATR


class Regime(StrEnum):
    TREND = "trend"
    RANGE = "range"
    HIGH_VOL = "high_vol"
    UNKNOWN = "unknown"


class RegimeParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Classifier settings (module docstring). Periods in bars."""

    lookback: int = 100
    atr_period: int = 14
    er_period: int = 20
    vol_ratio: float = 1.5
    er_trend: float = 0.3


class RegimeReading(msgspec.Struct, frozen=True, kw_only=True):
    """A classification and the figures behind it (ATR% as a fraction of price)."""

    regime: Regime
    efficiency: float = 0.0
    atr_pct: float = 0.0
    atr_pct_median: float = 0.0
    bars: int = 0

    def explain(self) -> str:
        if self.regime is Regime.UNKNOWN:
            return f"unknown (only {self.bars} bars)"
        return (f"{self.regime} (efficiency {self.efficiency:.2f}, ATR% {self.atr_pct:.4f} vs "
                f"median {self.atr_pct_median:.4f}, {self.bars} bars)")


def efficiency_ratio(closes: Sequence[float]) -> float:
    """Kaufman efficiency ratio of ``closes`` (net move / path length), 0 for a flat path."""
    path = sum(abs(b - a) for a, b in itertools.pairwise(closes))
    return abs(closes[-1] - closes[0]) / path if path else 0.0


def classify(bars: Sequence[Bar], params: RegimeParams | None = None) -> RegimeReading:
    """Classify the regime at the last of ``bars`` (oldest first; only the last
    ``params.lookback`` are used)."""
    p = params or RegimeParams()
    recent = list(bars[-p.lookback:])
    if len(recent) < p.lookback or p.lookback <= max(p.atr_period, p.er_period):
        return RegimeReading(regime=Regime.UNKNOWN, bars=len(recent))
    atr = ATR(p.atr_period)
    pcts = []
    for b in recent:
        close = float(b.close)
        value = atr.update(float(b.high), float(b.low), close)
        if value is not None and close > 0:
            pcts.append(value / close)
    median = statistics.median(pcts)
    er = efficiency_ratio([float(b.close) for b in recent[-p.er_period - 1:]])
    if median > 0 and pcts[-1] > p.vol_ratio * median:
        regime = Regime.HIGH_VOL
    else:
        regime = Regime.TREND if er >= p.er_trend else Regime.RANGE
    return RegimeReading(regime=regime, efficiency=er, atr_pct=pcts[-1], atr_pct_median=median,
                         bars=len(recent))
