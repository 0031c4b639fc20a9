"""``sharpe``: a strategy's rolling per-trade Sharpe ratio below a floor."""

from __future__ import annotations

from collections import deque
from typing import Annotated

from msgspec import Meta

from qtd.events import Scope
from qtd.metrics import sharpe_ratio
from qtd.risk.breakers.base import Breaker, BreakerConfig, BreakerContext
from qtd.risk.fields import TripState


class SharpeConfig(BreakerConfig, frozen=True, kw_only=True):
    """Minimum rolling per-trade Sharpe (mean / sample std of the last ``window_trades``
    closing trades' PnL, not annualised) of one strategy.

    Attributes:
        min_sharpe: the floor; below it the strategy trips.
        window_trades: closing trades in the window (judged once it is full).
        trip: the strategy's state when it trips.
    """

    min_sharpe: Annotated[float, Meta(ge=-100, le=100)] | None = None
    window_trades: Annotated[int, Meta(ge=2, le=100_000)] = 30
    trip: TripState = "REDUCING"

    def build(self, ctx: BreakerContext) -> SharpeFloor | None:
        return None if self.min_sharpe is None else SharpeFloor(self, self.min_sharpe, ctx)


class SharpeFloor(Breaker):
    """Trips a strategy whose rolling Sharpe (:func:`qtd.metrics.sharpe_ratio`) is below
    the floor. At zero dispersion the Sharpe is undefined: breakeven or identical winning
    trades never trip; a window of identical losing trades (below any floor) trips with the
    trade's PnL as the value (currency, vs a limit of 0)."""

    __slots__ = ("cfg", "ctx", "floor", "trades")

    def __init__(self, cfg: SharpeConfig, floor: float, ctx: BreakerContext) -> None:
        self.cfg, self.floor, self.ctx = cfg, floor, ctx
        self.trades: dict[str, deque[float]] = {}

    def on_trade(self, bot: str, pnl: float, now_ns: int) -> None:
        window = self.cfg.window_trades
        trades = self.trades.get(bot)
        if trades is None:
            trades = self.trades[bot] = deque(maxlen=window)
        trades.append(pnl)
        if len(trades) < window:
            return
        value = sharpe_ratio(trades)
        if value is not None and value < self.floor:
            self.ctx.trip("min_sharpe", Scope.STRATEGY, bot, self.cfg.trip, self.floor, value,
                          "sharpe", now_ns)
        elif value is None and trades[0] < 0:
            self.ctx.trip("min_sharpe", Scope.STRATEGY, bot, self.cfg.trip, 0.0, trades[0],
                          "currency", now_ns, reason=(
                              f"circuit breaker min_sharpe: each of the last {len(trades)} "
                              f"trades lost {-trades[0]:g} currency (no dispersion: Sharpe "
                              f"undefined, below any floor)"))
