"""``execution_throttle``: too many fills of one strategy within a window."""

from __future__ import annotations

from collections import deque
from typing import Annotated

from msgspec import Meta

from qtd.events import Scope
from qtd.risk.breakers.base import Breaker, BreakerConfig, BreakerContext
from qtd.risk.exposure import NS
from qtd.risk.fields import Count, TripState


class ExecutionThrottleConfig(BreakerConfig, frozen=True, kw_only=True):
    """Repeated-execution throttle: more than ``max_fills`` fills of one strategy within
    ``window_s`` seconds halts it until an operator re-enables it.

    Attributes:
        max_fills: fills in the window above which the strategy trips.
        window_s: the sliding window, seconds.
        trip: the strategy's state when it trips.
    """

    max_fills: Count | None = None
    window_s: Annotated[float, Meta(gt=0, le=86400)] = 60.0
    trip: TripState = "HALTED"

    def build(self, ctx: BreakerContext) -> ExecutionThrottle | None:
        return None if self.max_fills is None else ExecutionThrottle(self, self.max_fills, ctx)


class ExecutionThrottle(Breaker):
    """Trips a strategy that fills more than ``max_fills`` times within the window."""

    __slots__ = ("cfg", "ctx", "fills", "limit")

    def __init__(self, cfg: ExecutionThrottleConfig, limit: int, ctx: BreakerContext) -> None:
        self.cfg, self.limit, self.ctx = cfg, limit, ctx
        self.fills: dict[str, deque[int]] = {}

    def on_fill(self, bot: str, now_ns: int) -> None:
        fills = self.fills.get(bot)
        if fills is None:
            fills = self.fills[bot] = deque()
        fills.append(now_ns)
        floor = now_ns - int(self.cfg.window_s * NS)
        while fills and fills[0] <= floor:
            fills.popleft()
        if len(fills) > self.limit:
            self.ctx.trip("repeated_execution", Scope.STRATEGY, bot, self.cfg.trip,
                          self.limit, len(fills), "fills", now_ns)
