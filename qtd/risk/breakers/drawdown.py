"""``drawdown``: equity below its peak, in %, of all accounts together (GLOBAL) or of each
ACCOUNT."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from qtd.events import Scope
from qtd.risk.breakers.base import AccountBook, Breaker, BreakerConfig, BreakerContext
from qtd.risk.exposure import ZERO
from qtd.risk.fields import Pct, TripState


class DrawdownConfig(BreakerConfig, frozen=True, kw_only=True):
    """Drawdown from peak equity, of all accounts together (GLOBAL) or each ACCOUNT.

    Attributes:
        max_drawdown_pct: ``(peak − equity) / peak`` in % that trips.
        scope: ``GLOBAL`` (Σ of every account's equity) or ``ACCOUNT``.
        trip: the scope's state when it trips.
    """

    max_drawdown_pct: Pct | None = None
    scope: Literal["GLOBAL", "ACCOUNT"] = "GLOBAL"
    trip: TripState = "HALTED"

    def build(self, ctx: BreakerContext) -> Drawdown | None:
        return None if self.max_drawdown_pct is None else Drawdown(self, self.max_drawdown_pct,
                                                                   ctx)


class Drawdown(Breaker):
    """Trips the fleet of accounts (or one account) whose equity fell too far below its
    peak."""

    __slots__ = ("cfg", "ctx", "global_peak", "limit")

    def __init__(self, cfg: DrawdownConfig, limit: float, ctx: BreakerContext) -> None:
        self.cfg, self.limit, self.ctx = cfg, limit, ctx
        self.global_peak = sum((b.start for b in ctx.books.values()), ZERO)

    def on_equity(self, account: str, book: AccountBook, now_ns: int) -> None:
        peak: Decimal
        if self.cfg.scope == "ACCOUNT":
            peak, eq, scope, key = book.peak, book.equity.value, Scope.ACCOUNT, account
        else:
            eq = sum((b.equity.value for b in self.ctx.books.values()), ZERO)
            self.global_peak = peak = max(self.global_peak, eq)
            scope, key = Scope.GLOBAL, ""
        dd = float((peak - eq) / peak * 100) if peak > 0 else 0.0
        if dd > self.limit:
            self.ctx.trip("drawdown", scope, key, self.cfg.trip, self.limit, dd, "%", now_ns)
