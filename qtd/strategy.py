"""The strategy DSL: a :class:`Strategy` base class, its ``Params`` schema and order verbs.

A strategy is one class in one file::

    from typing import Annotated
    from msgspec import Meta
    from qtd.indicators import SMA, Cross
    from qtd.strategy import Strategy

    class MaCross(Strategy):
        class Params(Strategy.Params):
            fast: Annotated[int, Meta(ge=2)] = 10
            slow: Annotated[int, Meta(ge=3)] = 30
            qty: Annotated[float, Meta(gt=0)] = 1.0

        @classmethod
        def validate(cls, params):
            return [] if params.fast < params.slow else ["fast must be < slow"]

        def on_start(self):
            self.fast, self.slow, self.cross = SMA(self.params.fast), SMA(...), Cross()

        def on_bar(self, bar):
            if self.cross.update(self.fast.update(...), self.slow.update(...)) > 0:
                self.target_position(self.params.qty)

``Params`` subclasses inherit ``frozen=True, forbid_unknown_fields=True, kw_only=True``; the
``Annotated[..., Meta(...)]`` constraints, enums and ``Literal`` types *are* the schema that
admission (:mod:`qtd.admit`) checks params files against. Numeric constraints need ``int`` or
``float`` fields (msgspec cannot constrain ``Decimal``).

A strategy never sees a broker: the order verbs build :class:`~qtd.orders.OrderRequest`
objects and hand them to the :class:`StrategyContext` outbox, which the bot runner
(:mod:`qtd.runner`) drains after each hook and submits through the risk engine. Quantities
are in instrument units, prices in the quote currency. Hooks are synchronous, must not block
(no I/O, no sleeping) and run inline under a time budget (see :mod:`qtd.runner`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, ClassVar

import msgspec

from qtd.clock import Clock
from qtd.events import Fill, OrderType, PositionTransfer, Side, TimeInForce
from qtd.feeds.bars import Bar, Trade
from qtd.orders import OrderRequest
from qtd.projections import Position

ZERO = Decimal(0)
Number = int | float | str | Decimal


class CancelAll(msgspec.Struct, frozen=True, kw_only=True):
    """A strategy's request to cancel its working orders (``symbol`` ``None`` = all symbols)."""

    bot: str
    account: str
    venue: str
    symbol: str | None = None
    reason: str = "strategy"


Request = OrderRequest | CancelAll


class PositionView(msgspec.Struct, frozen=True, kw_only=True):
    """Read-only copy of the bot's position in one symbol.

    Attributes:
        symbol: the instrument.
        qty: signed quantity in instrument units (negative = short).
        avg_price: average entry price, quote currency (0 when flat).
        realized: realized PnL, gross of fees, quote currency.
        unrealized: unrealized PnL at the last seen price, quote currency.
        fees: fees paid in the quote currency.
    """

    symbol: str
    qty: Decimal = ZERO
    avg_price: Decimal = ZERO
    realized: Decimal = ZERO
    unrealized: Decimal = ZERO
    fees: Decimal = ZERO


class PnLView(msgspec.Struct, frozen=True, kw_only=True):
    """Read-only PnL of the bot over all its symbols, quote currency.

    ``total = realized + unrealized - fees``.
    """

    realized: Decimal = ZERO
    unrealized: Decimal = ZERO
    fees: Decimal = ZERO
    total: Decimal = ZERO


class StrategyLogger:
    """Structured log for strategy code: ``self.log.info("entry", price=101.5, qty=3)``.

    Records go to the stdlib logger ``qtd.strategy.<bot>`` with ``extra`` fields ``bot``,
    ``strategy`` and ``fields`` (the keyword arguments), so a JSON formatter can emit them.
    """

    def __init__(self, bot: str, strategy: str) -> None:
        self._logger = logging.getLogger(f"qtd.strategy.{bot}")
        self._bot, self._strategy = bot, strategy

    def log(self, level: int, msg: str, **fields: Any) -> None:
        extra = {"bot": self._bot, "strategy": self._strategy, "fields": fields}
        text = msg + "".join(f" {k}={v}" for k, v in fields.items())
        self._logger.log(level, text, extra=extra)

    def debug(self, msg: str, **fields: Any) -> None:
        self.log(logging.DEBUG, msg, **fields)

    def info(self, msg: str, **fields: Any) -> None:
        self.log(logging.INFO, msg, **fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self.log(logging.WARNING, msg, **fields)

    def error(self, msg: str, **fields: Any) -> None:
        self.log(logging.ERROR, msg, **fields)


class StrategyContext:
    """What the runner gives a strategy: identity, clock, positions, marks and an outbox.

    Owned by the runner; strategies read it only through :class:`Strategy` properties.
    ``inflight`` is the signed quantity requested but not yet filled, per symbol, so
    :meth:`Strategy.target_position` does not order twice while a fill is on its way.

    Args:
        bot: bot name.
        account: trading account the bot's orders go to.
        venue: venue name (``"paper"``, ``"alpaca"``, ``"binance"``).
        symbols: the bot's instruments; the first is the default for order verbs.
        clock: the injected clock (simulated in backtests).
        strategy: strategy class name (for logs).
        currency: quote currency of the positions.

    Attributes:
        share: the fraction of the bot's allocation this runner trades (1: all of it). A
            canary rollout (:mod:`qtd.agent.canary_ramps`) runs the candidate params as a second
            runner with ``share = f`` and the incumbent with ``1 - f``: ``target_position``
            targets ``share × target`` and ``buy``/``sell`` order ``share × qty``, each
            rounded toward zero to a multiple of ``lot`` (so the two runners together never
            hold or order more than the one bot would); ``flatten`` is never scaled.
        lot: instrument lot size the scaled quantities are rounded down to (units).
    """

    share: Decimal = Decimal(1)
    lot: Decimal = Decimal(1)

    def __init__(
        self, *, bot: str, account: str, venue: str, symbols: Sequence[str], clock: Clock,
        strategy: str = "", currency: str = "USD",
    ) -> None:
        if not symbols:
            raise ValueError(f"bot {bot!r}: needs at least one symbol")
        self.bot, self.account, self.venue = bot, account, venue
        self.symbols = tuple(symbols)
        self.clock = clock
        self.log = StrategyLogger(bot, strategy)
        self.positions = {s: Position(bot, account, s, currency) for s in self.symbols}
        self.marks: dict[str, Decimal] = {}
        self.inflight: dict[str, Decimal] = dict.fromkeys(self.symbols, ZERO)
        self.outbox: list[Request] = []
        self.targets: dict[str, Decimal] = {}
        """symbol -> the last whole-allocation target ``target_position`` asked for (signed
        units, before the share): a canary moves the incumbent's exact share of it."""

    def apply_fill(self, fill: Fill) -> None:
        """Update the position and in-flight quantity with one of the bot's fills."""
        pos = self.positions.get(fill.symbol)
        if pos is None:
            pos = self.positions[fill.symbol] = Position(
                self.bot, self.account, fill.symbol, fill.currency)
        pos.apply(fill)
        self.release(fill.symbol, fill.side.sign * fill.qty)

    def apply_transfer(self, tr: PositionTransfer) -> None:
        """Apply a :class:`~qtd.events.PositionTransfer` this bot gives or receives (a
        canary moving a share of the position without an order): the position changes at
        the giver's average cost; in-flight quantities are untouched."""
        if tr.from_bot == self.bot:
            pos = self.positions.get(tr.symbol)
            if pos is not None and pos.qty:
                pos.give(tr.qty if abs(tr.qty) <= abs(pos.qty) else pos.qty)
        elif tr.to_bot == self.bot:
            pos = self.positions.get(tr.symbol)
            if pos is None:
                pos = self.positions[tr.symbol] = Position(
                    self.bot, self.account, tr.symbol, tr.currency)
            pos.take(tr.qty, tr.cost)

    def release(self, symbol: str, signed_qty: Decimal) -> None:
        """Remove ``signed_qty`` from the in-flight quantity (filled, denied or canceled)."""
        cur = self.inflight.get(symbol, ZERO)
        left = cur - signed_qty
        # never grow or flip through over-release (a fill for an order placed elsewhere,
        # a denial after a partial fill): in-flight only shrinks toward zero
        self.inflight[symbol] = left if abs(left) < abs(cur) and (left > 0) == (cur > 0) else ZERO

    def mark(self, symbol: str, price: Decimal) -> None:
        self.marks[symbol] = price

    def take_outbox(self) -> list[Request]:
        out, self.outbox = self.outbox, []
        return out

    def scaled(self, qty: Decimal) -> Decimal:
        """``qty × share`` rounded toward zero to a multiple of ``lot`` (``qty`` when the
        share is 1)."""
        if self.share == 1:
            return qty
        lot = self.lot if self.lot > 0 else Decimal(1)
        return (qty * self.share / lot).to_integral_value(rounding="ROUND_DOWN") * lot


def _qty(value: Number, what: str) -> Decimal:
    q = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    if not q.is_finite() or q <= 0:
        raise ValueError(f"{what}: quantity must be a finite number > 0, got {value!r}")
    return q


def _price(value: Number | None) -> Decimal | None:
    if value is None:
        return None
    p = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    if not p.is_finite() or p <= 0:
        raise ValueError(f"limit price must be a finite number > 0, got {value!r}")
    return p


class Strategy:
    """Base class of every strategy. Override the hooks you need; never ``__init__``.

    Args:
        ctx: the runner's context (identity, clock, positions, outbox).
        params: validated parameters (an instance of this class's ``Params``).
    """

    class Params(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
        """Subclass this inside your strategy; fields with constraints are the schema."""

    name: ClassVar[str] = ""

    def __init__(self, ctx: StrategyContext, params: Strategy.Params) -> None:
        self._ctx = ctx
        self._params = params

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        p = cls.__dict__.get("Params", cls.Params)
        if not (isinstance(p, type) and issubclass(p, Strategy.Params)):
            raise TypeError(f"{cls.__name__}.Params must subclass Strategy.Params")
        if not cls.__dict__.get("name"):
            cls.name = cls.__name__

    # --- hooks (override) -----------------------------------------------------------------

    def on_start(self) -> None:
        """Called once before the first bar or trade (create indicators here)."""

    def on_bar(self, bar: Bar) -> None:
        """Called for every bar of the bot's symbols, at the bar's close."""

    def on_trade(self, trade: Trade) -> None:
        """Called for every trade (tick) of the bot's symbols."""

    def on_fill(self, fill: Fill) -> None:
        """Called for each of the bot's fills, after the position was updated."""

    def on_stop(self) -> None:
        """Called once when the bot stops normally (not after a crash)."""

    @classmethod
    def validate(cls, params: Any) -> list[str]:
        """Cross-field rules on already type-checked params; return one message per broken
        rule (empty list = valid). Override as a ``@classmethod``."""
        return []

    @classmethod
    def max_order_qty(cls, params: Any) -> Decimal | None:
        """Largest quantity (instrument units) one order of this strategy can have, for the
        admission notional check. Default: the ``qty`` param if there is one, else ``None``."""
        q = getattr(params, "qty", None)
        return None if q is None else Decimal(str(q))

    # --- read-only state ------------------------------------------------------------------

    @property
    def params(self) -> Any:
        """The validated params (frozen). Set only by the runner, which swaps in reloaded
        params at a bar boundary and then runs ``on_start`` again."""
        return self._params

    @params.setter
    def params(self, params: Strategy.Params) -> None:
        self._params = params

    @property
    def bot(self) -> str:
        return self._ctx.bot

    @property
    def symbol(self) -> str:
        """The bot's first (default) symbol."""
        return self._ctx.symbols[0]

    @property
    def symbols(self) -> tuple[str, ...]:
        return self._ctx.symbols

    @property
    def clock(self) -> Clock:
        """The injected clock (``now_ns()``: UTC ns; simulated in backtests)."""
        return self._ctx.clock

    @property
    def log(self) -> StrategyLogger:
        return self._ctx.log

    @property
    def position(self) -> PositionView:
        """Position in the default symbol."""
        return self.position_of(self.symbol)

    def position_of(self, symbol: str) -> PositionView:
        """Read-only position in ``symbol`` (flat if never traded)."""
        pos = self._ctx.positions.get(symbol)
        if pos is None:
            return PositionView(symbol=symbol)
        return PositionView(
            symbol=symbol, qty=pos.qty, avg_price=pos.avg_price, realized=pos.realized,
            unrealized=pos.unrealized(self._ctx.marks.get(symbol)), fees=pos.fees,
        )

    @property
    def pnl(self) -> PnLView:
        """PnL over all the bot's symbols, marked at the last seen prices."""
        views = [self.position_of(s) for s in self._ctx.positions]
        r = sum((v.realized for v in views), ZERO)
        u = sum((v.unrealized for v in views), ZERO)
        f = sum((v.fees for v in views), ZERO)
        return PnLView(realized=r, unrealized=u, fees=f, total=r + u - f)

    def last_price(self, symbol: str | None = None) -> Decimal | None:
        """Last bar close or trade price seen for ``symbol`` (default symbol if ``None``)."""
        return self._ctx.marks.get(symbol or self.symbol)

    # --- order verbs ----------------------------------------------------------------------

    def buy(self, qty: Number, *, symbol: str | None = None, limit: Number | None = None,
            tif: TimeInForce = TimeInForce.DAY, reason: str = "strategy") -> OrderRequest | None:
        """Request a buy of ``qty`` units: market, or limit at ``limit`` (quote currency).
        ``None`` only in a canary split whose share of ``qty`` rounds to no lot.

        Raises:
            ValueError: ``qty`` or ``limit`` not > 0, or ``symbol`` not one of the bot's.
        """
        return self._scaled(Side.BUY, _qty(qty, "buy"), symbol, _price(limit), tif, reason)

    def sell(self, qty: Number, *, symbol: str | None = None, limit: Number | None = None,
             tif: TimeInForce = TimeInForce.DAY, reason: str = "strategy"
             ) -> OrderRequest | None:
        """Request a sell of ``qty`` units (see :meth:`buy`)."""
        return self._scaled(Side.SELL, _qty(qty, "sell"), symbol, _price(limit), tif, reason)

    def target_position(
        self, qty: Number, *, symbol: str | None = None, limit: Number | None = None,
        tif: TimeInForce = TimeInForce.DAY, reason: str = "target",
    ) -> OrderRequest | None:
        """Order the difference between the signed target ``qty`` and the current position
        plus quantity already in flight; ``None`` when already there."""
        sym = self._symbol(symbol)
        target = Decimal(str(qty)) if isinstance(qty, float) else Decimal(qty)
        if not target.is_finite():
            raise ValueError(f"target_position: qty must be finite, got {qty!r}")
        self._ctx.targets[sym] = target
        if self._ctx.share != 1:  # a canary split: this runner holds its share of the target
            target = self._ctx.scaled(target)
        pos = self._ctx.positions.get(sym)
        current = (pos.qty if pos else ZERO) + self._ctx.inflight.get(sym, ZERO)
        delta = target - current
        if not delta:
            return None
        side = Side.BUY if delta > 0 else Side.SELL
        return self._order(side, abs(delta), sym, _price(limit), tif, reason)

    def flatten(self, symbol: str | None = None, reason: str = "flatten") -> OrderRequest | None:
        """Market order closing the position in ``symbol`` (reduce-only); ``None`` if flat."""
        sym = self._symbol(symbol)
        pos = self._ctx.positions.get(sym)
        current = (pos.qty if pos else ZERO) + self._ctx.inflight.get(sym, ZERO)
        if not current:
            return None
        side = Side.SELL if current > 0 else Side.BUY
        return self._order(side, abs(current), sym, None, TimeInForce.DAY, reason, reduce=True)

    def cancel_all(self, symbol: str | None = None, reason: str = "strategy") -> None:
        """Ask to cancel the bot's working orders (in ``symbol``, or all symbols)."""
        if symbol is not None:
            self._symbol(symbol)
        ctx = self._ctx
        for s in [symbol] if symbol else list(ctx.inflight):
            ctx.inflight[s] = ZERO
        ctx.outbox.append(CancelAll(bot=ctx.bot, account=ctx.account, venue=ctx.venue,
                                    symbol=symbol, reason=reason))

    def _symbol(self, symbol: str | None) -> str:
        if symbol is None:
            return self.symbol
        if symbol not in self._ctx.symbols:
            raise ValueError(f"symbol {symbol!r} is not one of bot's {self._ctx.symbols}")
        return symbol

    def _scaled(self, side: Side, qty: Decimal, symbol: str | None, limit: Decimal | None,
                tif: TimeInForce, reason: str) -> OrderRequest | None:
        if self._ctx.share != 1:
            qty = self._ctx.scaled(qty)
            if not qty:  # this runner's share rounds to no lot: nothing to order
                self._symbol(symbol)
                return None
        return self._order(side, qty, symbol, limit, tif, reason)

    def _order(self, side: Side, qty: Decimal, symbol: str | None, limit: Decimal | None,
               tif: TimeInForce, reason: str, reduce: bool = False) -> OrderRequest:
        ctx = self._ctx
        sym = self._symbol(symbol)
        req = OrderRequest(
            bot=ctx.bot, account=ctx.account, venue=ctx.venue, symbol=sym, side=side, qty=qty,
            order_type=OrderType.LIMIT if limit is not None else OrderType.MARKET,
            limit_price=limit, tif=tif, reduce_only=reduce,
            decision_price=ctx.marks.get(sym), reason=reason,
        )
        ctx.inflight[sym] = ctx.inflight.get(sym, ZERO) + side.sign * qty
        ctx.outbox.append(req)
        return req

