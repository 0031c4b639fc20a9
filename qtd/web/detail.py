"""Drill-down of one bot: order blotter, equity curve, strategy metrics, admission.

Built from the bot's events in fleet.db (:meth:`~qtd.web.protocol.FleetSource.bot_events`;
the leader's source reads them through a read-only connection). The metrics are
:mod:`qtd.metrics`'s pure functions on the bot's fill-by-fill curve:

* **equity curve** points are ``(ts_ns, pnl)`` after each fill: the bot's net realized PnL
  plus its open positions at their last fill price (quote currency);
* **Sharpe** and **max drawdown** use equity = fleet capital + that PnL, one period per fill
  (annualised from the fill spacing, see :func:`qtd.metrics.periods_per_year`);
* **win rate** and **profit factor** use closed round trips (:func:`trades_from_fills`);
* **slippage** is in basis points against the intent's ``decision_price``, positive = cost
  (paid more on a buy, received less on a sell).
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import msgspec

from qtd import metrics
from qtd.events import (
    AnyEvent,
    BrokerError,
    Fill,
    OrderAccepted,
    OrderCanceled,
    OrderExpired,
    OrderIntent,
    OrderRejected,
    OrderState,
    OrderSubmitted,
    Side,
    StrategyAdmitted,
)
from qtd.fleetsnapshot import BotView, PositionView
from qtd.projections import ZERO, Projections

ORDER_KINDS = ("OrderIntent", "OrderSubmitted", "OrderAccepted", "OrderRejected",
               "OrderCanceled", "OrderExpired", "BrokerError", "Fill")


class BlotterRow(msgspec.Struct, kw_only=True):
    """One order: ``latency_ms`` from intent to venue acceptance (None until accepted)."""

    client_order_id: str
    ts_ns: int
    account: str
    symbol: str
    side: str
    qty: float
    state: str
    decision_price: float | None = None
    filled_qty: float = 0.0
    avg_fill_price: float | None = None
    slippage_bps: float | None = None
    latency_ms: float | None = None
    note: str = ""


class BotMetrics(msgspec.Struct, kw_only=True):
    """Strategy figures (fractions: 0.25 = 25 %; ``None`` = undefined, e.g. no losses)."""

    fills: int = 0
    trades: int = 0
    sharpe: float = 0.0
    win_rate: float = 0.0
    max_drawdown: float = 0.0
    profit_factor: float | None = 0.0
    pnl: float = 0.0


class Admission(msgspec.Struct, kw_only=True):
    """The bot's last ``StrategyAdmitted``: what runs and since when (UTC ns)."""

    strategy: str
    params_hash: str
    content_hash: str
    ts_ns: int
    params: dict[str, Any] = {}


class BotDetail(msgspec.Struct, kw_only=True):
    """Everything the drill-down page shows (money in the quote currency); ``view`` and
    ``positions`` are from the fleet snapshot taken at ``ts_ns`` (UTC ns)."""

    node: str
    bot: str
    currency: str
    view: BotView | None
    positions: list[PositionView]
    blotter: list[BlotterRow]
    equity: list[tuple[int, float]]
    metrics: BotMetrics
    admission: Admission | None
    ts_ns: int = 0


class _Order:
    __slots__ = ("cost", "filled", "row", "t0")

    def __init__(self, row: BlotterRow, t0: int) -> None:
        self.row, self.t0, self.filled, self.cost = row, t0, ZERO, ZERO


def blotter(events: list[AnyEvent], limit: int = 200) -> list[BlotterRow]:
    """Orders from the bot's events (oldest first), newest first, at most ``limit``."""
    orders: dict[str, _Order] = {}
    for ev in events:
        if isinstance(ev, OrderIntent):
            row = BlotterRow(
                client_order_id=ev.client_order_id, ts_ns=ev.ts_event, account=ev.account,
                symbol=ev.symbol, side=ev.side.value, qty=float(ev.qty),
                state=OrderState.PENDING_SUBMIT.value,
                decision_price=None if ev.decision_price is None else float(ev.decision_price))
            orders[ev.client_order_id] = _Order(row, ev.ts_event)
            continue
        o = orders.get(getattr(ev, "client_order_id", ""))
        if o is not None:
            _advance(o, ev)
    rows = [o.row for o in orders.values()]
    return rows[::-1][:limit]


def _advance(o: _Order, ev: AnyEvent) -> None:
    row = o.row
    if isinstance(ev, Fill):
        o.filled += ev.qty
        o.cost += ev.qty * ev.price
        row.filled_qty = float(o.filled)
        avg = o.cost / o.filled
        row.avg_fill_price = float(avg)
        row.state = (OrderState.FILLED if row.filled_qty >= row.qty
                     else OrderState.PARTIALLY_FILLED).value
        row.slippage_bps = slippage_bps(row.side, row.decision_price, float(avg))
    elif isinstance(ev, OrderAccepted):
        row.latency_ms = (ev.ts_event - o.t0) / 1e6
        row.state = _later(row.state, OrderState.ACCEPTED)
    elif isinstance(ev, OrderSubmitted):
        row.state = _later(row.state, OrderState.SUBMITTED)
    elif isinstance(ev, OrderRejected | OrderCanceled | OrderExpired):
        row.state = {OrderRejected: OrderState.REJECTED, OrderCanceled: OrderState.CANCELED,
                     OrderExpired: OrderState.EXPIRED}[type(ev)].value
        row.note = getattr(ev, "reason", "")
    elif isinstance(ev, BrokerError):
        row.note = f"{ev.operation}: {ev.error_type}"


_RANK = {s.value: i for i, s in enumerate(OrderState)}


def _later(current: str, new: OrderState) -> str:
    return new.value if _RANK[new.value] > _RANK.get(current, 0) else current


def slippage_bps(side: str, decision: float | None, fill: float) -> float | None:
    """Fill vs decision price in basis points, positive = cost; None without a decision."""
    if not decision:
        return None
    sign = 1.0 if side == Side.BUY.value else -1.0
    return sign * (fill - decision) / decision * 1e4


def equity_curve(events: list[AnyEvent]) -> tuple[list[tuple[int, float]], list[Fill]]:
    """``(ts_ns, pnl)`` after each fill (module docstring) and the fills, oldest first."""
    proj = Projections()
    points: list[tuple[int, float]] = []
    fills: list[Fill] = []
    for ev in events:
        if type(ev).__name__ not in ORDER_KINDS:
            continue
        proj.apply(ev)
        if isinstance(ev, Fill):
            fills.append(ev)
            pnl = sum((p.net_realized + p.unrealized() for p in proj.positions.values()),
                      Decimal(0))
            points.append((ev.ts_event, float(pnl)))
    return points, fills


def bot_metrics(points: list[tuple[int, float]], fills: list[Fill], base: float
                ) -> BotMetrics:
    """Strategy figures of a bot from its curve and fills (module docstring)."""
    pnls = [float(t.pnl) for t in metrics.trades_from_fills(fills) if not t.is_open]
    if len(points) < 2:
        return BotMetrics(fills=len(fills), trades=len(pnls), win_rate=metrics.win_rate(pnls),
                          profit_factor=_finite(metrics.profit_factor(pnls)),
                          pnl=points[-1][1] if points else 0.0)
    ts = [t for t, _ in points]
    equity = [base + p for _, p in points]
    ppy = metrics.periods_per_year(ts) if ts[-1] > ts[0] else 0.0
    return BotMetrics(
        fills=len(fills), trades=len(pnls), sharpe=metrics.sharpe(equity, ppy),
        win_rate=metrics.win_rate(pnls), max_drawdown=metrics.drawdown(equity, ts).max_drawdown,
        profit_factor=_finite(metrics.profit_factor(pnls)), pnl=points[-1][1])


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def admission(events: list[AnyEvent]) -> Admission | None:
    """The last :class:`~qtd.events.StrategyAdmitted` among ``events``, if any."""
    for ev in reversed(events):
        if isinstance(ev, StrategyAdmitted):
            return Admission(strategy=ev.strategy, params_hash=ev.params_hash,
                             content_hash=ev.content_hash, ts_ns=ev.ts_event,
                             params=dict(ev.params))
    return None
