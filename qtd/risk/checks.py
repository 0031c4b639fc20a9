"""Pre-trade checks: each a small callable ``check(request, ctx) -> Denial | None``.

A check reads the order and the engine's state (through :class:`OrderContext` and the
references it was built with) and never changes anything; the engine records an approval
only after every check passed. Each check object is built once per (bot, account, symbol)
for one family of controls (:mod:`qtd.risk.plan`) and holds only the limits configured for
it, so the hot path runs only enabled controls; a denial is built only when a limit fails.
Money stays exact: quantities, prices and notionals are :class:`~decimal.Decimal` and limits
are Decimals made from the configured value's repr; counts and times are ints.

Units: quantities in instrument units, notional in the account currency, collars in bps,
durations in seconds (held as ns internally), counts in orders.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

import msgspec

from qtd.events import OrderType, Scope, Severity, TradingState
from qtd.orders import OrderRequest
from qtd.risk.exposure import NS, Cell, Exposure, MarkCell, ScopeCounters, SpikeMeter

ZERO: Final = Decimal(0)
_BPS: Final = Decimal(10_000)
_HUNDRED: Final = Decimal(100)
_LIMIT: Final = OrderType.LIMIT  # bound once (an enum class attribute lookup costs)


class Denial(msgspec.Struct, frozen=True, kw_only=True):
    """Why the engine refused an order: the ``check``, its ``scope``/``scope_key``, the
    configured ``limit`` against the observed ``value`` (both in ``unit``), a paging
    ``severity`` and, for bad input, the request ``field`` at fault. ``trip`` names a trading
    state the scope moves to because of this denial (order-rate spike)."""

    check: str
    scope: Scope
    scope_key: str
    limit: float
    value: float
    unit: str
    message: str
    severity: Severity = Severity.P4
    field: str = ""
    trip: TradingState | None = None


def deny(
    check: str, scope: Scope, key: str, limit: float | Decimal, value: float | Decimal,
    unit: str, rule: str, *, field: str = "", severity: Severity = Severity.P4,
    trip: TradingState | None = None,
) -> Denial:
    """Build a :class:`Denial` whose message names the check, scope, value, limit and rule."""
    where = f"{scope.value}:{key}" if key else scope.value
    msg = f"{check} at {where}: {value} {unit} {rule} {limit} {unit}".replace("  ", " ")
    return Denial(
        check=check, scope=scope, scope_key=key, limit=float(limit), value=float(value),
        unit=unit, message=msg, severity=severity, field=field, trip=trip,
    )


class OrderContext:
    """Per-request values shared by the checks (computed once).

    Attributes:
        now_ns: check time, UTC ns.
        buy: the order buys.
        price: reference price (limit price for LIMIT orders, else the last mark), currency.
        notional: ``qty × price``, currency.
        reducing: the order only reduces the bot's position in the symbol (open orders
            included).
        mark: the symbol's last price cell.
        day: trading-day label of ``now_ns``.
    """

    __slots__ = ("buy", "day", "mark", "notional", "now_ns", "price", "reducing")

    def __init__(
        self, now_ns: int, buy: bool, price: Decimal, notional: Decimal, reducing: bool,
        mark: MarkCell, day: str,
    ) -> None:
        self.now_ns, self.buy, self.price, self.notional = now_ns, buy, price, notional
        self.reducing, self.mark, self.day = reducing, mark, day


# --- bad input -----------------------------------------------------------------------------


def validate_request(req: OrderRequest) -> Denial | None:
    """Refuse NaN / infinite / zero / negative quantities and prices and inconsistent order
    types, naming the field and the rule."""
    qty = req.qty
    if not isinstance(qty, Decimal) or not qty.is_finite() or qty <= 0:
        return _bad("qty", qty, "must be a finite number > 0")
    lp = req.limit_price
    if req.order_type is _LIMIT:
        if lp is None:
            return _bad("limit_price", lp, "is required for a LIMIT order")
    elif lp is not None:
        return _bad("limit_price", lp, "must be empty for a MARKET order")
    if lp is not None and (not isinstance(lp, Decimal) or not lp.is_finite() or lp <= 0):
        return _bad("limit_price", lp, "must be a finite number > 0")
    dp = req.decision_price
    if dp is not None and (not isinstance(dp, Decimal) or not dp.is_finite() or dp <= 0):
        return _bad("decision_price", dp, "must be a finite number > 0")
    return None


def _bad(field: str, value: object, rule: str) -> Denial:
    return Denial(
        check="bad_input", scope=Scope.GLOBAL, scope_key="", limit=0.0, value=float("nan"),
        unit="", message=f"{field} = {value}: {rule}", field=field,
    )


def unknown(field: str, value: str, rule: str) -> Denial:
    """Denial for an unknown symbol, account or strategy."""
    return Denial(
        check=f"unknown_{field}", scope=Scope.GLOBAL, scope_key="", limit=0.0, value=0.0,
        unit="", message=f"{field} = {value!r}: {rule}", field=field,
    )


# --- per-order size and price, reduce-only ------------------------------------------------


Bound = tuple[Scope, str, Decimal]  # a limit, with the scope and scope key that configure it


class OrderLimits:
    """Per-order limits, each the tightest over the order's four scopes (None when no scope
    sets it): quantity ≤ ``qty`` (instrument units, ``max_order_qty``); notional (qty ×
    reference price) ≤ ``notional`` (currency, ``max_order_notional``); a limit price
    within ``collar`` bps of the last trade / mid (``price_collar``); no new exposure when
    the symbol's last market data is older than ``max_age`` ns (``stale_data``). Checked in
    that order."""

    __slots__ = ("collar", "max_age", "notional", "qty")

    def __init__(
        self, qty: Bound | None, notional: Bound | None, collar: Bound | None,
        max_age: tuple[Scope, str, int] | None,
    ) -> None:
        self.qty, self.notional, self.collar, self.max_age = qty, notional, collar, max_age

    def __call__(self, req: OrderRequest, ctx: OrderContext) -> Denial | None:
        lim = self.qty
        if lim is not None and req.qty > lim[2]:
            return deny("max_order_qty", *lim, req.qty, "units", ">")
        lim = self.notional
        if lim is not None and ctx.notional > lim[2]:
            return deny("max_order_notional", *lim, ctx.notional, "currency", ">")
        lim, lp = self.collar, req.limit_price
        if lim is not None and lp is not None:
            mark = ctx.mark.price
            if mark is None:
                return deny("price_collar", *lim, float("inf"), "bps", "(no reference price) >")
            if abs(lp - mark) * _BPS > lim[2] * mark:
                return deny("price_collar", *lim, abs(lp - mark) * _BPS / mark, "bps", ">")
        age = self.max_age
        if age is not None and not ctx.reducing:
            seen = ctx.now_ns - ctx.mark.ts_ns
            if seen > age[2]:
                return deny("stale_data", age[0], age[1], float(age[2]) / NS, seen / NS, "s", ">")
        return None


def reduce_only(req: OrderRequest, ctx: OrderContext) -> Denial | None:
    """A reduce-only order must only reduce the bot's position (never open or flip it)."""
    if req.reduce_only and not ctx.reducing:
        return Denial(
            check="reduce_only", scope=Scope.STRATEGY, scope_key=req.bot, limit=0.0,
            value=float(req.qty), unit="units", field="reduce_only",
            message=f"reduce_only order of {req.qty} {req.symbol} would open or flip a position",
        )
    return None


# --- exposure ------------------------------------------------------------------------------

PositionRow = tuple[Exposure, Bound | None, Bound | None, Bound | None]


class PositionLimits:
    """Position limits of the order's distinct exposures. ``rows`` are ``(exposure, qty,
    notional, pct)``, each limit the tightest over the scopes that read that exposure (None
    when no scope sets it): the worst-case position after the order (filled plus open
    orders on its side) ≤ ``qty`` (instrument units, ``max_position_qty``); that position ×
    reference price ≤ ``notional`` (currency, ``max_position_notional``); that notional ≤
    ``pct`` % of the account's current ``equity`` (``max_position_pct_equity``). Reducing
    orders pass. Checked exposure by exposure in that order, in one call.

    Raises:
        ValueError: a row has a % limit and ``equity`` is None.
    """

    __slots__ = ("equity", "rows")

    def __init__(self, rows: list[PositionRow], equity: Cell | None) -> None:
        if equity is None and any(row[3] is not None for row in rows):
            raise ValueError("a % of equity limit needs the account's equity cell")
        self.rows, self.equity = tuple(rows), equity

    def __call__(self, req: OrderRequest, ctx: OrderContext) -> Denial | None:
        if ctx.reducing:
            return None
        buy, add, price = ctx.buy, req.qty, ctx.price
        for e, qty, notional, pct in self.rows:
            pos = abs(e.qty + e.buy_open + add if buy else e.qty - e.sell_open - add)
            if qty is not None and pos > qty[2]:
                return deny("max_position_qty", *qty, pos, "units", ">")
            if notional is None and pct is None:
                continue
            value = pos * price
            if notional is not None and value > notional[2]:
                return deny("max_position_notional", *notional, value, "currency", ">")
            if pct is not None and self.equity is not None:
                value *= _HUNDRED
                eq = self.equity.value
                if value > pct[2] * eq:
                    return deny("max_position_pct_equity", *pct,
                                value / eq if eq > 0 else float("inf"), "%", ">")
        return None


class BookLimits:
    """Limits over all of a strategy's positions (``book``: its (mark, exposure) list;
    ``own``: the order's exposure), each None when not set: Σ |worst-case position| × price
    ≤ ``gross`` (currency, ``max_gross_notional``), then |Σ worst-case signed position on
    the order's side × price| ≤ ``net`` (currency, ``max_net_notional``). Reducing orders
    pass. Both sums are taken in one pass over the book."""

    __slots__ = ("book", "gross", "net", "own")

    def __init__(
        self, book: list[tuple[MarkCell, Exposure]], own: Exposure, gross: Bound | None,
        net: Bound | None,
    ) -> None:
        self.book, self.own, self.gross, self.net = book, own, gross, net

    def __call__(self, req: OrderRequest, ctx: OrderContext) -> Denial | None:
        if ctx.reducing:
            return None
        own, buy, gross, net = self.own, ctx.buy, ZERO, ZERO
        for mark, exp in self.book:
            price = mark.price
            if exp is not own and price is not None:
                q = exp.qty
                long, short = q + exp.buy_open, q - exp.sell_open
                a, b = abs(long), abs(short)
                gross += (b if b > a else a) * price  # max(a, b) without the builtin's call
                net += (long if buy else short) * price
        q, price = own.qty, ctx.price
        long, short = q + own.buy_open, q - own.sell_open
        lim = self.gross
        if lim is not None:
            a, b = (abs(long + req.qty), abs(short)) if buy else (abs(short - req.qty), abs(long))
            gross += (b if b > a else a) * price
            if gross > lim[2]:
                return deny("max_gross_notional", *lim, gross, "currency", ">")
        lim = self.net
        if lim is not None:
            net = abs(net + (long + req.qty if buy else short - req.qty) * price)
            if net > lim[2]:
                return deny("max_net_notional", *lim, net, "currency", ">")
        return None


# --- order flow ----------------------------------------------------------------------------


FlowRow = tuple[Scope, str, ScopeCounters, int | None, int | None, int | None, int | None]


class FlowLimits:
    """Order-flow limits of the order's scopes. ``rows`` (GLOBAL, ACCOUNT, STRATEGY,
    SYMBOL; scopes that set none left out) are ``(scope, key, counters, open_orders, per_s,
    per_day, cooldown_ns)``, None for a limit not set: open orders at the scope, this one
    included, ≤ ``open_orders`` (``max_open_orders``); approvals in any sliding 1-second
    window ≤ ``per_s`` (``order_rate``); approved orders in the current trading day ≤
    ``per_day`` (``max_trades_per_day``); at least ``cooldown_ns`` between two approvals
    (``trade_cooldown``). Checked scope by scope in that order, in one call."""

    __slots__ = ("rows",)

    def __init__(self, rows: list[FlowRow]) -> None:
        self.rows = tuple(rows)

    def __call__(self, req: OrderRequest, ctx: OrderContext) -> Denial | None:
        now, day = ctx.now_ns, ctx.day
        floor = now - NS
        for scope, key, c, open_orders, per_s, per_day, cooldown in self.rows:
            # counts and limits are ints: count + 1 > limit is count >= limit
            if open_orders is not None and c.open_orders >= open_orders:
                return deny("max_open_orders", scope, key, open_orders, c.open_orders + 1,
                            "orders", ">")
            if per_s is not None:
                recent = c.recent
                # oldest approval still inside the window: nothing to prune, len() is exact
                n = (len(recent) if not recent or recent[0] > floor
                     else c.in_last_second(now))
                if n >= per_s:
                    return deny("order_rate", scope, key, per_s, n + 1, "orders/s", ">")
            if per_day is not None:
                n = c.day_count if c.day == day else 0
                if n >= per_day:
                    return deny("max_trades_per_day", scope, key, per_day, n + 1, "orders",
                                ">")
            last = c.last_ns
            if cooldown is not None and last is not None and now - last < cooldown:
                return deny("trade_cooldown", scope, key, float(cooldown) / NS,
                            (now - last) / NS, "s", "<")
        return None


class OrderSpike:
    """Orders this second > ``factor`` × the strategy's trailing normal rate (at least
    ``floor`` orders/s) → deny and HALT the strategy ``key``."""

    __slots__ = ("factor", "floor", "key", "meter")
    name = "order_spike"

    def __init__(self, key: str, factor: float, meter: SpikeMeter, floor: float) -> None:
        self.key, self.factor, self.meter, self.floor = key, factor, meter, floor

    def __call__(self, req: OrderRequest, ctx: OrderContext) -> Denial | None:
        count, normal = self.meter.current(ctx.now_ns)
        cap = self.factor * (normal if normal > self.floor else self.floor)
        if count + 1 <= cap:
            return None
        return deny(self.name, Scope.STRATEGY, self.key, cap, count + 1, "orders/s", ">",
                    severity=Severity.P3, trip=TradingState.HALTED)


DupKey = tuple[str, str, str, bool, Decimal]


class DuplicateOrder:
    """Same bot, account, symbol, side and qty approved less than ``window_ns`` ago."""

    __slots__ = ("seen", "window_ns")
    name = "duplicate_order"

    def __init__(self, window_ns: int, seen: dict[DupKey, int]) -> None:
        self.window_ns, self.seen = window_ns, seen

    def __call__(self, req: OrderRequest, ctx: OrderContext) -> Denial | None:
        last = self.seen.get((req.bot, req.account, req.symbol, ctx.buy, req.qty))
        if last is None or ctx.now_ns - last >= self.window_ns:
            return None
        gap = (ctx.now_ns - last) / NS
        return deny(self.name, Scope.STRATEGY, req.bot, self.window_ns / NS, gap, "s", "<")
