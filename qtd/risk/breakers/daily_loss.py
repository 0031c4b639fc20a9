"""``daily_loss``: an account's loss since the trading day opened (realised + unrealised),
in currency and in % of the day's opening equity; an account's own ``max_daily_loss`` /
``max_daily_loss_pct`` override this table."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from qtd.events import LimitUsage, Scope
from qtd.risk.breakers.base import AccountBook, Breaker, BreakerConfig, BreakerContext
from qtd.risk.exposure import ZERO
from qtd.risk.fields import Amount, Pct, TripState

if TYPE_CHECKING:
    from qtd.risk.scope_limits import AccountConfig


class DailyLossLimits(NamedTuple):
    """One account's daily-loss limits: currency and % of the day's opening equity (None:
    not checked)."""

    max_loss: float | None
    max_loss_pct: float | None


class DailyLossConfig(BreakerConfig, frozen=True, kw_only=True):
    """Per-account daily loss (realised + unrealised, vs the day's opening equity).

    Attributes:
        max_loss: loss in currency that trips (default for accounts without their own).
        max_loss_pct: loss in % of the day's opening equity that trips (likewise).
        trip: the account's state when it trips.
    """

    max_loss: Amount | None = None
    max_loss_pct: Pct | None = None
    trip: TripState = "HALTED"

    def limits(self, account: AccountConfig | None) -> DailyLossLimits:
        """The daily-loss limits of ``account``: its own ``max_daily_loss`` /
        ``max_daily_loss_pct`` where set, else this table's (``account`` None: this
        table's). The one place the per-account limit is resolved."""
        own, pct = (None, None) if account is None else (
            account.max_daily_loss, account.max_daily_loss_pct)
        return DailyLossLimits(own if own is not None else self.max_loss,
                               pct if pct is not None else self.max_loss_pct)

    def build(self, ctx: BreakerContext) -> DailyLoss | None:
        limits = {name: self.limits(a) for name, a in ctx.accounts.items()}
        limits = {k: v for k, v in limits.items() if v != (None, None)}
        return DailyLoss(self, limits, ctx) if limits else None


class DailyLoss(Breaker):
    """Trips an account whose loss today exceeds its currency or % limit."""

    __slots__ = ("cfg", "ctx", "limits")

    def __init__(self, cfg: DailyLossConfig, limits: dict[str, DailyLossLimits],
                 ctx: BreakerContext) -> None:
        self.cfg, self.limits, self.ctx = cfg, limits, ctx

    def on_equity(self, account: str, book: AccountBook, now_ns: int) -> None:
        lim = self.limits.get(account)
        if lim is None:
            return
        limit, pct = lim
        loss = float(book.day_open - book.equity.value)
        trip = self.ctx.trip
        if limit is not None and loss > limit:
            trip("daily_loss", Scope.ACCOUNT, account, self.cfg.trip, limit, loss, "currency",
                 now_ns)
        if pct is not None and book.day_open > 0 and loss / float(book.day_open) * 100 > pct:
            trip("daily_loss_pct", Scope.ACCOUNT, account, self.cfg.trip, pct,
                 loss / float(book.day_open) * 100, "%", now_ns)

    def usage(self, bot: str, account: str, now_ns: int) -> list[LimitUsage]:
        """``max_daily_loss`` (currency) and ``max_daily_loss_pct`` (% of the day's opening
        equity) of ``account`` with today's loss (a gain counts as 0; 0 before the
        account's first update today)."""
        lim, book = self.limits.get(account), self.ctx.books.get(account)
        if lim is None or book is None:
            return []
        today = book.day == self.ctx.day.label(now_ns)
        loss = max(book.day_open - book.equity.value, ZERO) if today else ZERO
        out = []
        if lim.max_loss is not None:
            out.append(LimitUsage(name="max_daily_loss", scope=Scope.ACCOUNT, key=account,
                                  limit=float(lim.max_loss), used=float(loss), unit="currency"))
        if lim.max_loss_pct is not None:
            used = loss * 100 / book.day_open if book.day_open > 0 else ZERO
            out.append(LimitUsage(name="max_daily_loss_pct", scope=Scope.ACCOUNT, key=account,
                                  limit=float(lim.max_loss_pct), used=float(used), unit="%"))
        return out
