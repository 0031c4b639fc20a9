"""Short-bar mean reversion on ticks: build ``bar_s``-second bars from trades, keep Bollinger
bands over their closes, buy a trade below the lower band (sell one above the upper band if
``allow_short``), exit back at the middle band, after ``max_hold_bars`` bars, or at a
``stop_bps`` loss.

Meant for the bundled E-mini S&P 500 ticks (``es_ticks``). Bars are built in the strategy
with :class:`qtd.feeds.TickBarBuilder` (UTC-aligned; a bar closes when the first trade of a
later interval arrives; quiet intervals make no bar); entries and exits are decided on every
trade against the bands of the bars closed so far. Fed bars instead of ticks (a bar data
set), it treats each bar as one short bar and its close as the trade price. Quantities are
contracts; qtd applies no contract multiplier, so notional = contracts x index points.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from qtd.feeds import Bar, TickBarBuilder, Trade
from qtd.indicators import BollingerBands
from qtd.strategy import Strategy

NS_PER_S = 1_000_000_000


class ShortBarRevert(Strategy):
    class Params(Strategy.Params):
        bar_s: Annotated[int, Meta(ge=1, le=3600)] = 15         # short-bar length, seconds
        period: Annotated[int, Meta(ge=5, le=500)] = 20         # bands over this many bars
        k: Annotated[float, Meta(gt=0, le=5)] = 2.0             # band width, in stdevs
        max_hold_bars: Annotated[int, Meta(ge=1, le=10_000)] = 40
        stop_bps: Annotated[float, Meta(gt=0, le=1000)] = 15.0  # 15 bps of 1,640 = 2.5 pt
        qty: Annotated[float, Meta(gt=0)] = 1.0                 # contracts
        allow_short: bool = True

    def on_start(self) -> None:
        self.builder = TickBarBuilder(self.params.bar_s * NS_PER_S)
        self.bands_of = BollingerBands(self.params.period, self.params.k)
        self.bands: tuple[float, float, float] | None = None
        self.held = self.bars = 0
        self.entry_bar = -1  # one entry attempt per bar: a denied entry is not retried per tick

    def on_trade(self, trade: Trade) -> None:
        bar = self.builder.update(trade)
        if bar is not None:
            self._close_bar(float(bar.close))
        self._decide(float(trade.price))

    def on_bar(self, bar: Bar) -> None:
        self._close_bar(float(bar.close))
        self._decide(float(bar.close))

    def _close_bar(self, close: float) -> None:
        self.bands = self.bands_of.update(close)
        self.bars += 1
        self.held = self.held + 1 if self.position.qty else 0

    def _decide(self, price: float) -> None:
        if self.bands is None:
            return
        lower, middle, upper = self.bands
        pos = self.position
        qty, avg = float(pos.qty), float(pos.avg_price)
        if qty == 0:
            if self.entry_bar == self.bars:
                return
            if price < lower:
                self.entry_bar = self.bars
                self.target_position(self.params.qty, reason="trade below the lower band")
            elif price > upper and self.params.allow_short:
                self.entry_bar = self.bars
                self.target_position(-self.params.qty, reason="trade above the upper band")
        elif (qty > 0 and price >= middle) or (qty < 0 and price <= middle):
            self.flatten(reason="back to the middle band")
        elif self.held >= self.params.max_hold_bars:
            self.flatten(reason=f"held {self.held} bars")
        elif avg > 0 and (avg - price) / avg * 1e4 * (1 if qty > 0 else -1) >= self.params.stop_bps:
            self.flatten(reason=f"stop {self.params.stop_bps:g} bps")
