"""``win_streak``: the "greed" cooldown after winning closing trades of one strategy in a
row."""

from __future__ import annotations

from qtd.events import Scope
from qtd.risk.breakers.base import Breaker, BreakerConfig, BreakerContext
from qtd.risk.exposure import NS
from qtd.risk.fields import Count, Seconds, TripState


class WinStreakConfig(BreakerConfig, frozen=True, kw_only=True):
    """Win-streak ("greed") cooldown: after ``max_wins`` winning trades in a row the strategy
    goes to ``trip`` for ``cooldown_s`` (REDUCING expires by itself; HALTED never does).

    Attributes:
        max_wins: winning trades in a row that trip (a losing trade resets the count).
        cooldown_s: how long the trip state lasts, seconds.
        trip: the strategy's state when it trips.
    """

    max_wins: Count | None = None
    cooldown_s: Seconds = 300.0
    trip: TripState = "REDUCING"

    def build(self, ctx: BreakerContext) -> WinStreak | None:
        return None if self.max_wins is None else WinStreak(self, self.max_wins, ctx)


class WinStreak(Breaker):
    """Cools a strategy down after ``max_wins`` winning trades in a row; the count restarts
    once it tripped."""

    __slots__ = ("cfg", "ctx", "limit", "wins")

    def __init__(self, cfg: WinStreakConfig, limit: int, ctx: BreakerContext) -> None:
        self.cfg, self.limit, self.ctx = cfg, limit, ctx
        self.wins: dict[str, int] = {}

    def on_trade(self, bot: str, pnl: float, now_ns: int) -> None:
        n = self.wins.get(bot, 0)
        if pnl > 0:
            n += 1
        elif pnl < 0:
            n = 0
        self.wins[bot] = n
        if n >= self.limit:
            until = now_ns + int(self.cfg.cooldown_s * NS)
            if self.ctx.trip("win_streak", Scope.STRATEGY, bot, self.cfg.trip, self.limit, n,
                             "trades", now_ns, until_ns=until):
                self.wins[bot] = 0
