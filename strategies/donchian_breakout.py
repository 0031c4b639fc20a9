"""Donchian volatility breakout: enter long on a close above the prior ``entry`` -bar high,
exit on a close below the prior ``exit`` -bar low or ``stop_atr`` ATRs under the entry."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from qtd.feeds import Bar
from qtd.indicators import ATR, Donchian
from qtd.strategy import Strategy


class DonchianBreakout(Strategy):
    class Params(Strategy.Params):
        entry: Annotated[int, Meta(ge=5, le=400)] = 20
        exit: Annotated[int, Meta(ge=2, le=400)] = 10
        atr_period: Annotated[int, Meta(ge=2, le=200)] = 14
        stop_atr: Annotated[float, Meta(gt=0, le=20)] = 2.0
        qty: Annotated[float, Meta(gt=0)] = 1.0

    @classmethod
    def validate(cls, params: Params) -> list[str]:
        return [] if params.exit < params.entry else ["exit must be < entry"]

    def on_start(self) -> None:
        self.upper_ch, self.lower_ch = Donchian(self.params.entry), Donchian(self.params.exit)
        self.atr = ATR(self.params.atr_period)
        self.prev: tuple[float | None, float | None] = (None, None)

    def on_bar(self, bar: Bar) -> None:
        high, low, close = float(bar.high), float(bar.low), float(bar.close)
        prior_high, prior_low = self.prev  # channels of the bars *before* this one
        atr = self.atr.update(high, low, close)
        up, lo = self.upper_ch.update(high, low), self.lower_ch.update(high, low)
        self.prev = (up[1] if up else None, lo[0] if lo else None)
        pos = self.position
        if pos.qty == 0 and prior_high is not None and atr is not None and close > prior_high:
            self.target_position(self.params.qty, reason="breakout above channel")
        elif pos.qty > 0:
            stop = float(pos.avg_price) - self.params.stop_atr * (atr or 0.0)
            if (prior_low is not None and close < prior_low) or close < stop:
                self.flatten(reason="channel exit or ATR stop")
