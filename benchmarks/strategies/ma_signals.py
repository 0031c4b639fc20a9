"""``strategies/ma_cross.py``'s per-bar work without its orders: the same SMA(fast)/SMA(slow)
and crossover test on every bar, counting the crosses instead of trading them.

``benchmarks/backtest.py`` runs it on the same bars as the real strategy, so the difference
between the two rates is what the order path costs (see that module's *Breakdown*).
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from qtd.feeds import Bar
from qtd.indicators import SMA, Cross
from qtd.strategy import Strategy


class MaSignals(Strategy):
    class Params(Strategy.Params):
        fast: Annotated[int, Meta(ge=2, le=500)] = 10
        slow: Annotated[int, Meta(ge=3, le=1000)] = 30
        qty: Annotated[float, Meta(gt=0)] = 1.0

    def on_start(self) -> None:
        self.fast, self.slow, self.cross = SMA(self.params.fast), SMA(self.params.slow), Cross()
        self.crosses = 0

    def on_bar(self, bar: Bar) -> None:
        close = float(bar.close)
        if self.cross.update(self.fast.update(close), self.slow.update(close)):
            self.crosses += 1
