"""Projections derived from the event stream: orders, positions and PnL by bot and day.

They are kept incrementally (apply each event as it is appended) and can be rebuilt by replay
from seq 0; both paths run the same :meth:`Projections.apply`, so they agree exactly.

**Netting rule — average cost.** Positions are netted per (bot, account, symbol). ``qty`` is
signed (shares/contracts/coins; negative = short) and ``cost`` is the signed cost basis of the
open quantity in the quote currency (``avg_price = cost / qty``). A fill that opens or adds
adds ``qty × price`` to the cost. A fill that reduces realizes
``closed × price × sign(qty) − cost × closed / |qty|`` and removes that share of the cost; a
fill that crosses zero closes the whole position and opens the rest at the fill price. This
is the average-cost method brokers use for netted positions (e.g. Interactive Brokers'
"average cost" basis); unlike FIFO it needs no lot list.

The cost share removed by a partial close is rounded to 1e-12 of the quote currency; every
other operation is exact. Realized PnL depends on the order fills are applied in (true of
any cost method); total PnL, ``realized - cost + mark × qty``, does not:
:meth:`Position.total_pnl` is exactly order-independent. Fees paid in the position's quote
currency are kept in ``fees`` and subtracted in :attr:`Position.net_realized`; fees in
another currency (e.g. BNB) are kept per currency in ``other_fees``.

**Trading day.** A trading day labelled D runs from ``rollover`` (local time in ``tz``) on D
to ``rollover`` on D+1; the default is midnight UTC. DST transitions are handled by
:mod:`zoneinfo`.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Context, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from qtd.events import AnyEvent, Event, Fill, PositionTransfer, Side
from qtd.orders import ApplyResult, OrderBook

ZERO = Decimal(0)
COST_QUANTUM = Decimal("1e-12")  # cost-basis shares are rounded to this, quote currency
_WIDE = Context(prec=60)


def _share(cost: Decimal, part: Decimal, whole: Decimal) -> Decimal:
    """``cost × part / whole`` rounded half-even to :data:`COST_QUANTUM`, so every later
    addition stays exact in the default 28-digit context (notionals below 10^15)."""
    return _WIDE.divide(_WIDE.multiply(cost, part), whole).quantize(COST_QUANTUM, context=_WIDE)


class Position:
    """Net position of one (bot, account, symbol), average-cost method (module docstring)."""

    __slots__ = (
        "account", "bot", "cost", "currency", "fees", "fills", "last_price", "other_fees",
        "qty", "realized", "symbol",
    )

    def __init__(self, bot: str, account: str, symbol: str, currency: str) -> None:
        self.bot, self.account, self.symbol, self.currency = bot, account, symbol, currency
        self.qty = ZERO
        self.cost = ZERO
        self.realized = ZERO
        self.fees = ZERO
        self.other_fees: dict[str, Decimal] = {}
        self.last_price: Decimal | None = None
        self.fills = 0

    def copy(self) -> Position:
        """An independent copy (its own ``other_fees``; every other field is immutable)."""
        new = Position(self.bot, self.account, self.symbol, self.currency)
        new.qty, new.cost, new.realized, new.fees = self.qty, self.cost, self.realized, self.fees
        new.other_fees = dict(self.other_fees)
        new.last_price, new.fills = self.last_price, self.fills
        return new

    @property
    def avg_price(self) -> Decimal:
        """Average entry price of the open quantity (0 when flat), quote currency."""
        return self.cost / self.qty if self.qty else ZERO

    @property
    def net_realized(self) -> Decimal:
        """Realized PnL minus fees paid in the quote currency."""
        return self.realized - self.fees

    def unrealized(self, mark: Decimal | None = None) -> Decimal:
        """Unrealized PnL at ``mark`` (default: the last fill price), quote currency."""
        m = self.last_price if mark is None else mark
        return ZERO if m is None or not self.qty else m * self.qty - self.cost

    def total_pnl(self, mark: Decimal | None = None) -> Decimal:
        """Realized + unrealized at ``mark``, gross of fees (order-independent)."""
        return self.realized + self.unrealized(mark)

    def apply(self, fill: Fill) -> Decimal:
        """Apply one fill; return the realized PnL it produced (gross of fees)."""
        price = fill.price
        dq = fill.qty if fill.side == Side.BUY else -fill.qty  # == also holds for a plain "BUY"
        q = self.qty
        realized = ZERO
        if not q or (q > 0) == (dq > 0):
            self.qty = q + dq
            self.cost += dq * price
        else:
            sign = 1 if q > 0 else -1
            closed = min(abs(dq), abs(q))
            removed = self.cost if closed == abs(q) else _share(self.cost, closed, abs(q))
            realized = sign * closed * price - removed
            self.cost -= removed
            self.qty = q + dq
            if closed < abs(dq):  # crossed zero: the rest opens at the fill price
                self.cost = self.qty * price
        self.realized += realized
        if fill.commission:
            if fill.commission_currency == self.currency:
                self.fees += fill.commission
            else:
                cur = fill.commission_currency
                self.other_fees[cur] = self.other_fees.get(cur, ZERO) + fill.commission
        self.last_price = price
        self.fills += 1
        return realized

    def give(self, qty: Decimal) -> Decimal:
        """Take signed ``qty`` (same side as the position, ``|qty| <= |self.qty|``) out of
        the position at its average cost, realizing nothing; return the signed cost basis
        removed (:class:`~qtd.events.PositionTransfer`).

        Raises:
            ValueError: ``qty`` is on the other side or larger than the position.
        """
        q = self.qty
        if not qty or not q or (qty > 0) != (q > 0) or abs(qty) > abs(q):
            raise ValueError(f"position {self.bot}/{self.symbol}: transfer qty {qty} must be "
                             f"on the side of and at most the position {q}")
        removed = self.cost if qty == q else _share(self.cost, abs(qty), abs(q))
        self.cost -= removed
        self.qty = q - qty
        return removed

    def take(self, qty: Decimal, cost: Decimal) -> Decimal:
        """Receive signed ``qty`` with signed cost basis ``cost`` (a transfer at the giver's
        average cost ``cost / qty``); return the realized PnL (non-zero only when netting
        against an opposite position, at that price, as a fill would)."""
        q = self.qty
        if not qty:
            return ZERO
        if not q or (q > 0) == (qty > 0):
            self.qty, self.cost = q + qty, self.cost + cost
            return ZERO
        closed = min(abs(qty), abs(q))
        removed = self.cost if closed == abs(q) else _share(self.cost, closed, abs(q))
        used = cost if closed == abs(qty) else _share(cost, closed, abs(qty))
        realized = -used - removed  # sign × closed × price, price = cost / qty
        self.cost -= removed
        self.qty = q + qty
        if closed < abs(qty):  # crossed zero: the rest keeps the giver's cost
            self.cost = cost - used
        self.realized += realized
        return realized

    def as_tuple(self) -> tuple[object, ...]:
        return (self.bot, self.account, self.symbol, self.qty, self.cost, self.realized,
                self.fees, tuple(sorted(self.other_fees.items())))


class TradingDay:
    """Maps UTC ns timestamps to trading-day labels (``YYYY-MM-DD``).

    Args:
        tz: IANA time zone of the trading day, e.g. ``"America/New_York"``.
        rollover: local time at which a new trading day starts (``"HH:MM"``).

    Raises:
        zoneinfo.ZoneInfoNotFoundError: unknown ``tz``.
        ValueError: ``rollover`` is not ``HH:MM``.
    """

    def __init__(self, tz: str = "UTC", rollover: str = "00:00") -> None:
        self.tz = ZoneInfo(tz)
        self.rollover = time.fromisoformat(rollover)
        self._lo = self._hi = 0
        self._label = ""

    def label(self, ts_ns: int) -> str:
        if self._lo <= ts_ns < self._hi:
            return self._label
        local = datetime.fromtimestamp(ts_ns // 1_000_000_000, UTC).astimezone(self.tz)
        d = local.date()
        if local.time() < self.rollover:
            d -= timedelta(days=1)
        self._lo, self._hi = self._bound(d), self._bound(d + timedelta(days=1))
        self._label = d.isoformat()
        return self._label

    def _bound(self, d: date) -> int:
        start = datetime.combine(d, self.rollover, self.tz)
        return int(start.timestamp()) * 1_000_000_000


class DayPnL:
    """Realized PnL of one bot on one trading day (quote currency, gross and fees)."""

    __slots__ = ("fees", "fills", "realized", "traded_notional")

    def __init__(self) -> None:
        self.realized = ZERO
        self.fees = ZERO
        self.fills = 0
        self.traded_notional = ZERO

    def as_tuple(self) -> tuple[object, ...]:
        return (self.realized, self.fees, self.fills, self.traded_notional)


class Projections:
    """Orders, positions and daily PnL derived from one event stream.

    Args:
        trading_day: the day boundary for :attr:`daily`.
        keep_terminal: bound on the terminal orders kept in :attr:`orders` (see
            :class:`~qtd.orders.OrderBook`); ``None`` keeps every order.

    Attributes:
        orders: the :class:`~qtd.orders.OrderBook`.
        positions: ``(bot, account, symbol) -> Position``.
        daily: ``(bot, trading_day) -> DayPnL``.
        anomalies: ``(seq, message)`` for events that need an operator's eye
            (e.g. a fill for an order we never sent).
        last_seq: seq of the last event applied.
    """

    def __init__(self, trading_day: TradingDay | None = None, *,
                 keep_terminal: int | None = None) -> None:
        self.orders = OrderBook(keep_terminal)
        self.positions: dict[tuple[str, str, str], Position] = {}
        self.daily: dict[tuple[str, str], DayPnL] = {}
        self.anomalies: list[tuple[int, str]] = []
        self.trading_day = trading_day or TradingDay()
        self.last_seq = 0
        self.transfers: set[str] = set()  # PositionTransfer ids applied (idempotent)

    def apply(self, event: Event) -> ApplyResult:
        """Apply one event; idempotent for order events (duplicates change nothing)."""
        result = self.orders.apply(event)
        if event.seq:
            self.last_seq = event.seq
        if type(event) is Fill and result is not ApplyResult.DUPLICATE:
            if result is ApplyResult.ORPHAN:
                self.anomalies.append((event.seq, _orphan_message(event)))
            self._apply_fill(event)
        elif type(event) is PositionTransfer:
            return self._apply_transfer(event)
        return result

    def _apply_transfer(self, tr: PositionTransfer) -> ApplyResult:
        """Move ``tr.qty`` at the giver's average cost (:class:`PositionTransfer`); a
        duplicate id, or one the giver's position cannot cover, changes nothing (the latter
        is kept in :attr:`anomalies`)."""
        tid = tr.transfer_id or f"{tr.node}:{tr.seq}"
        if tid in self.transfers:
            return ApplyResult.DUPLICATE
        self.transfers.add(tid)
        giver = self.positions.get((tr.from_bot, tr.account, tr.symbol))
        try:
            if giver is None:
                raise ValueError(f"{tr.from_bot} holds no {tr.symbol} on {tr.account}")
            cost = giver.give(tr.qty)
        except ValueError as e:
            self.anomalies.append((tr.seq, f"transfer {tid} not applied: {e}"))
            return ApplyResult.IGNORED
        if cost != tr.cost:  # the giver's cost here differs from the sender's: use ours
            self.anomalies.append((tr.seq, f"transfer {tid}: cost {tr.cost} stored, "
                                           f"{cost} here (applied at {cost})"))
        key = (tr.to_bot, tr.account, tr.symbol)
        pos = self.positions.get(key)
        if pos is None:
            pos = self.positions[key] = Position(tr.to_bot, tr.account, tr.symbol, tr.currency)
            pos.last_price = giver.last_price
        realized = pos.take(tr.qty, cost)
        if realized:
            dkey = (tr.to_bot, self.trading_day.label(tr.ts_event))
            day = self.daily.get(dkey)
            if day is None:
                day = self.daily[dkey] = DayPnL()
            day.realized += realized
        return ApplyResult.APPLIED

    def _apply_fill(self, fill: Fill) -> None:
        key = (fill.bot, fill.account, fill.symbol)
        pos = self.positions.get(key)
        if pos is None:
            pos = self.positions[key] = Position(fill.bot, fill.account, fill.symbol, fill.currency)
        realized = pos.apply(fill)
        dkey = (fill.bot, self.trading_day.label(fill.ts_event))
        day = self.daily.get(dkey)
        if day is None:
            day = self.daily[dkey] = DayPnL()
        day.realized += realized
        if fill.commission_currency == fill.currency:
            day.fees += fill.commission
        day.fills += 1
        day.traded_notional += fill.qty * fill.price

    async def rebuild(self, events: AsyncIterator[list[AnyEvent]]) -> Projections:
        """Apply every batch of ``events`` (``store.replay_batches()``) and return self.

        The cyclic garbage collector is paused while replaying (projections hold no
        reference cycles; a bulk load of many small objects otherwise triggers repeated
        full collections) and restored afterwards.
        """
        paused = gc.isenabled()
        gc.disable()
        try:
            apply = self.apply
            async for batch in events:
                for ev in batch:
                    apply(ev)
        finally:
            if paused:
                gc.enable()
        return self

    def position(self, bot: str, account: str, symbol: str) -> Position | None:
        return self.positions.get((bot, account, symbol))

    def net_qty(self, account: str, symbol: str) -> Decimal:
        """Net position of an account in a symbol, summed over its bots."""
        return sum(
            (p.qty for p in self.positions.values() if p.account == account and p.symbol == symbol),
            ZERO,
        )

    def state(self) -> dict[str, Any]:
        """Comparable snapshot of everything (for rebuild-equals-incremental checks)."""
        return {
            "orders": sorted((r.as_tuple() for r in self.orders.orders.values()), key=str),
            "orphans": sorted(
                (cid, tuple(sorted(f.trade_id for f in fills)))
                for cid, fills in self.orders.orphan_fills.items()
            ),
            "positions": sorted((p.as_tuple() for p in self.positions.values()), key=str),
            "daily": sorted((k, d.as_tuple()) for k, d in self.daily.items()),
        }


def _orphan_message(fill: Fill) -> str:
    return (
        f"fill {fill.trade_id} for unknown client_order_id {fill.client_order_id!r} "
        f"({fill.side} {fill.qty} {fill.symbol} @ {fill.price} on {fill.account}): "
        "counted in positions; reconcile with the broker"
    )
