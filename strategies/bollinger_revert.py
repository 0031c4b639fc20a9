"""Bollinger mean-reversion: buy when the close falls below the lower band, exit when it
returns to the middle band (and the mirror image for shorts if ``allow_short``)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from qtd.feeds import Bar
from qtd.indicators import BollingerBands
from qtd.strategy import Strategy


class BollingerRevert(Strategy):
    class Params(Strategy.Params):
        period: Annotated[int, Meta(ge=5, le=500)] = 20
        k: Annotated[float, Meta(gt=0, le=5)] = 2.0
        qty: Annotated[float, Meta(gt=0)] = 1.0
        allow_short: bool = False

    def on_start(self) -> None:
        self.bands = BollingerBands(self.params.period, self.params.k)

    def on_bar(self, bar: Bar) -> None:
        close = float(bar.close)
        bands = self.bands.update(close)
        if bands is None:
            return
        lower, middle, upper = bands
        qty = self.position.qty
        if qty == 0 and close < lower:
            self.target_position(self.params.qty, reason="close below lower band")
        elif qty == 0 and close > upper and self.params.allow_short:
            self.target_position(-self.params.qty, reason="close above upper band")
        elif (qty > 0 and close >= middle) or (qty < 0 and close <= middle):
            self.flatten(reason="back to the middle band")
