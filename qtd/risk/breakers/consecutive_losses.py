"""``consecutive_losses``: losing closing trades of one strategy in a row."""

from __future__ import annotations

from qtd.events import Scope
from qtd.risk.breakers.base import Breaker, BreakerConfig, BreakerContext
from qtd.risk.fields import Count, TripState


class LossStreakConfig(BreakerConfig, frozen=True, kw_only=True):
    """Consecutive losing closing trades of one strategy.

    Attributes:
        max_losses: losing trades in a row that trip (a winning trade resets the count;
            a breakeven one leaves it).
        trip: the strategy's state when it trips.
    """

    max_losses: Count | None = None
    trip: TripState = "HALTED"

    def build(self, ctx: BreakerContext) -> LossStreak | None:
        return None if self.max_losses is None else LossStreak(self, self.max_losses, ctx)


class LossStreak(Breaker):
    """Trips a strategy after ``max_losses`` losing trades in a row."""

    __slots__ = ("cfg", "ctx", "limit", "losses")

    def __init__(self, cfg: LossStreakConfig, limit: int, ctx: BreakerContext) -> None:
        self.cfg, self.limit, self.ctx = cfg, limit, ctx
        self.losses: dict[str, int] = {}

    def on_trade(self, bot: str, pnl: float, now_ns: int) -> None:
        n = self.losses.get(bot, 0)
        if pnl < 0:
            n += 1
        elif pnl > 0:
            n = 0
        self.losses[bot] = n
        if n >= self.limit:  # also after a breakeven trade: a resumed streak re-trips
            self.ctx.trip("consecutive_losses", Scope.STRATEGY, bot, self.cfg.trip,
                          self.limit, n, "trades", now_ns)
