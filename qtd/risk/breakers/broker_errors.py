"""``broker_errors``: the failed share of an account's broker requests in a sliding
window."""

from __future__ import annotations

from collections import deque
from typing import Annotated

from msgspec import Meta

from qtd.events import Scope
from qtd.risk.breakers.base import Breaker, BreakerConfig, BreakerContext
from qtd.risk.exposure import NS
from qtd.risk.fields import Count, TripState


class BrokerErrorConfig(BreakerConfig, frozen=True, kw_only=True):
    """Broker request error rate of one account over a sliding window (on by default).

    Attributes:
        max_error_rate: failed / all requests above which the account trips (fraction).
        window_s: the sliding window, seconds.
        min_requests: requests in the window before the rate is judged.
        trip: the account's state when it trips.
    """

    max_error_rate: Annotated[float, Meta(gt=0, le=1)] | None = 0.10
    window_s: Annotated[float, Meta(gt=0, le=86400)] = 60.0
    min_requests: Count = 10
    trip: TripState = "REDUCING"

    def build(self, ctx: BreakerContext) -> BrokerErrors | None:
        rate = self.max_error_rate
        return None if rate is None else BrokerErrors(self, rate, ctx)


class _Window:
    """One account's request outcomes within the window."""

    __slots__ = ("errors", "results")

    def __init__(self) -> None:
        self.results: deque[tuple[int, bool]] = deque()  # (UTC ns, ok), oldest first
        self.errors = 0  # results that are not ok


class BrokerErrors(Breaker):
    """Trips an account whose broker requests fail too often."""

    __slots__ = ("cfg", "ctx", "limit", "windows")

    def __init__(self, cfg: BrokerErrorConfig, limit: float, ctx: BreakerContext) -> None:
        self.cfg, self.limit, self.ctx = cfg, limit, ctx
        self.windows: dict[str, _Window] = {}

    def on_broker_result(self, account: str, ok: bool, now_ns: int) -> None:
        window = self.windows.get(account)
        if window is None:
            window = self.windows[account] = _Window()
        results = window.results
        results.append((now_ns, ok))
        window.errors += not ok
        floor = now_ns - int(self.cfg.window_s * NS)
        while results and results[0][0] <= floor:
            window.errors -= not results.popleft()[1]
        errors = window.errors
        if len(results) >= self.cfg.min_requests and errors / len(results) > self.limit:
            self.ctx.trip("broker_error_rate", Scope.ACCOUNT, account, self.cfg.trip,
                          self.limit, errors / len(results), "ratio", now_ns)
