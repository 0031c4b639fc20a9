"""The risk engine's incremental state, kept from events and approvals (no replay per check).

* :class:`MarkCell` — last market price of a symbol (last trade or mid, whichever the feed
  sends; our own fills count as trades) and its UTC ns timestamp.
* :class:`Exposure` — one position key: filled signed quantity plus the leaves of open orders
  per side (and the part of them already asked to cancel).
* :class:`ScopeCounters` — per scope key: open orders, approvals in the last second, approvals
  in the current trading day, time of the last approval.
* :class:`SpikeMeter` — a strategy's orders in the current second against an EWMA of its
  per-second rate (the order-rate spike check).

Quantities are instrument units (Decimal), prices quote currency (Decimal), times UTC ns.
"""

from __future__ import annotations

import math
from collections import deque
from decimal import Decimal
from typing import Final

ZERO: Final = Decimal(0)
NS: Final = 1_000_000_000


class MarkCell:
    """Last price of one symbol (``price`` None until the first tick or fill)."""

    __slots__ = ("price", "ts_ns")

    def __init__(self) -> None:
        self.price: Decimal | None = None
        self.ts_ns = 0


class Cell:
    """A mutable Decimal shared by reference (e.g. an account's current equity, currency)."""

    __slots__ = ("value",)

    def __init__(self, value: Decimal) -> None:
        self.value = value


class Exposure:
    """Signed filled position ``qty`` and open-order leaves of one position key.

    ``buy_open``/``sell_open`` are the leaves of open orders per side; ``buy_cxl``/``sell_cxl``
    the part of those already asked to cancel (only kill-switch flattens may ignore them).
    """

    __slots__ = ("buy_cxl", "buy_open", "qty", "sell_cxl", "sell_open")

    def __init__(self) -> None:
        self.qty = ZERO
        self.buy_open = ZERO
        self.sell_open = ZERO
        self.buy_cxl = ZERO
        self.sell_cxl = ZERO

    def worst(self, buy: bool, add: Decimal = ZERO) -> Decimal:
        """Signed position if every open order on one side (plus ``add``) filled."""
        return self.qty + self.buy_open + add if buy else self.qty - self.sell_open - add

    def gross(self) -> Decimal:
        """Largest absolute worst-case position over both sides."""
        return max(abs(self.qty + self.buy_open), abs(self.qty - self.sell_open))

    def reduces(self, buy: bool, qty: Decimal, *, ignore_canceling: bool = False) -> bool:
        """True when an order of ``qty`` on this side, together with the open orders already
        on that side, only reduces the position (never opens or flips it)."""
        if buy:
            pending = self.buy_open - (self.buy_cxl if ignore_canceling else ZERO)
            return self.qty < 0 and qty + pending <= -self.qty
        pending = self.sell_open - (self.sell_cxl if ignore_canceling else ZERO)
        return self.qty > 0 and qty + pending <= self.qty

    def add_open(self, buy: bool, leaves: Decimal, canceling: bool) -> None:
        """Add (or with a negative ``leaves`` remove) an open order's contribution."""
        if buy:
            self.buy_open += leaves
            if canceling:
                self.buy_cxl += leaves
        else:
            self.sell_open += leaves
            if canceling:
                self.sell_cxl += leaves


class ScopeCounters:
    """Order counters of one scope key (GLOBAL, an account, a strategy or a symbol)."""

    __slots__ = ("day", "day_count", "last_ns", "open_orders", "recent")

    def __init__(self) -> None:
        self.open_orders = 0
        self.recent: deque[int] = deque()  # approval times within the last second, UTC ns
        self.day = ""
        self.day_count = 0
        self.last_ns: int | None = None

    def in_last_second(self, now_ns: int) -> int:
        """Approvals in ``(now - 1 s, now]``."""
        recent, floor = self.recent, now_ns - NS
        while recent and recent[0] <= floor:
            recent.popleft()
        return len(recent)

    def today(self, day: str) -> int:
        """Approvals in trading day ``day``."""
        return self.day_count if self.day == day else 0

    def record(self, now_ns: int, day: str) -> None:
        """Count one approval at ``now_ns`` in trading day ``day``."""
        record_approval((self,), now_ns, day)


def record_approval(counters: tuple[ScopeCounters, ...], now_ns: int, day: str) -> None:
    """Count one approval at ``now_ns`` (UTC ns) in trading day ``day`` in each of
    ``counters`` (an order's GLOBAL, ACCOUNT, STRATEGY and SYMBOL counters, in one call)."""
    floor = now_ns - NS
    for c in counters:
        recent = c.recent
        while recent and recent[0] <= floor:
            recent.popleft()
        recent.append(now_ns)
        if c.day == day:
            c.day_count += 1
        else:
            c.day, c.day_count = day, 1
        c.last_ns = now_ns


class SpikeMeter:
    """A strategy's approvals per second: the current (partial) second against an EWMA of
    completed seconds (half-life ``halflife_s``). Idle seconds count as zero."""

    __slots__ = ("count", "decay", "ewma", "sec")

    def __init__(self, halflife_s: float) -> None:
        self.decay = math.exp(-math.log(2) / halflife_s)
        self.sec = 0
        self.count = 0
        self.ewma = 0.0

    def current(self, now_ns: int) -> tuple[int, float]:
        """``(orders in the current second, trailing normal rate per second)``, no mutation."""
        sec = now_ns // NS
        if sec == self.sec:
            return self.count, self.ewma
        return 0, self._rolled(sec)

    def add(self, now_ns: int) -> None:
        """Count one approval."""
        sec = now_ns // NS
        if sec != self.sec:
            self.ewma, self.sec, self.count = self._rolled(sec), sec, 0
        self.count += 1

    def _rolled(self, sec: int) -> float:
        d = self.decay
        ewma = self.ewma * d + self.count * (1 - d)
        gap = sec - self.sec - 1
        return ewma * d**gap if gap > 0 else ewma


class OpenOrder:
    """What the engine remembers of one open order to keep exposures and counters right."""

    __slots__ = ("account", "bot", "buy", "canceling", "counters", "exposures", "leaves",
                 "symbol")

    def __init__(
        self, bot: str, account: str, symbol: str, buy: bool, leaves: Decimal,
        exposures: tuple[Exposure, ...], counters: tuple[ScopeCounters, ...],
    ) -> None:
        self.bot, self.account, self.symbol, self.buy = bot, account, symbol, buy
        self.leaves = leaves
        self.canceling = False
        self.exposures = exposures
        self.counters = counters
