"""Moving-average crossover (momentum): long when the fast SMA crosses above the slow SMA,
flat (or short, if ``allow_short``) when it crosses below."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from qtd.feeds import Bar
from qtd.indicators import SMA, Cross
from qtd.strategy import Strategy


class MaCross(Strategy):
    class Params(Strategy.Params):
        fast: Annotated[int, Meta(ge=2, le=500)] = 10
        slow: Annotated[int, Meta(ge=3, le=1000)] = 30
        qty: Annotated[float, Meta(gt=0)] = 1.0
        allow_short: bool = False

    @classmethod
    def validate(cls, params: Params) -> list[str]:
        return [] if params.fast < params.slow else ["fast must be < slow"]

    def on_start(self) -> None:
        self.fast, self.slow, self.cross = SMA(self.params.fast), SMA(self.params.slow), Cross()

    def on_bar(self, bar: Bar) -> None:
        close = float(bar.close)
        signal = self.cross.update(self.fast.update(close), self.slow.update(close))
        if signal > 0:
            self.target_position(self.params.qty, reason="fast crossed above slow")
        elif signal < 0:
            target = -self.params.qty if self.params.allow_short else 0
            self.target_position(target, reason="fast crossed below slow")
