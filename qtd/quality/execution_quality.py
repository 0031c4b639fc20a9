"""Execution quality per (bot, venue, symbol), computed from stored order events.

Fed event by event (:meth:`ExecutionQuality.feed`), so the same code serves
``qtd report execution`` (a store replayed once) and the leader (events as it ingests them).

Definitions (an *order* is an :class:`~qtd.events.OrderIntent`; *done* orders are those in
a terminal state: filled, canceled, rejected or expired):

* **latency** (ms): decision → ack. The decision time is the bot's last
  :class:`~qtd.events.Signal` for the symbol if one came within ``signal_window_s`` before
  the intent, else the intent's own time (the router stamps it when the strategy's request
  reaches it). The ack is the first :class:`~qtd.events.OrderAccepted` (or, from a venue that
  fills without an ack, the first :class:`~qtd.events.Fill`). p50/p99 by the nearest-rank
  method over the last ``max_samples`` orders. A venue stamps its acks with its own clock,
  so the figure includes the offset between the venue's clock and the agent's (keep the
  agent on NTP).
* **slippage** (bps, signed so that an adverse execution is positive), notional-weighted over
  every fill, the execution-cost term of Perold's implementation shortfall (A. F. Perold,
  "The Implementation Shortfall: Paper versus Reality", J. Portfolio Management 14(3),
  1988)::

      slippage_bps = 10_000 × Σ side × (fill_price − ref) × fill_qty / Σ ref × fill_qty

  with ``side`` +1 for a buy, −1 for a sell, and ``ref`` the benchmark price:
  the intent's ``decision_price`` (what the strategy saw when it decided) or the
  ``arrival_price`` of :class:`~qtd.events.OrderSubmitted` (the last price when the order
  went to the venue; the arrival-price benchmark of R. Kissell and M. Glantz, *Optimal
  Trading Strategies*, 2003). Fills of orders without that price are left out (``n/a``).
* **fill rate**: filled quantity / ordered quantity over done orders (1.0 = every done order
  completely filled; canceled and rejected orders lower it).
* **cancel rate**, **reject rate**: canceled (resp. rejected) orders / done orders.

Default alert thresholds (:class:`Thresholds`): latency p99 > 50 ms, slippage > 5 bps
(either benchmark), fill rate < 95 %, cancel rate > 15 %, reject rate > 5 %; the rate
thresholds apply once a row has ``min_orders`` done orders.
"""

from __future__ import annotations

import math
from collections import deque
from decimal import Decimal
from typing import Annotated, Final

import msgspec
from msgspec import Meta

from qtd.events import (
    AnyEvent,
    Fill,
    OrderAccepted,
    OrderCanceled,
    OrderExpired,
    OrderIntent,
    OrderRejected,
    OrderSubmitted,
    Signal,
)

_NS_PER_MS: Final = 1_000_000
_ZERO: Final = Decimal(0)
Key = tuple[str, str, str]  # (bot, venue, symbol)


class Thresholds(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Alert thresholds of execution quality (see the module docstring).

    Attributes:
        latency_p99_ms: alert when the p99 decision → ack latency exceeds this (ms).
        slippage_bps: alert when slippage vs decision or arrival price exceeds this (bps).
        fill_rate_min: alert when the fill rate is below this (fraction, 0.95 = 95 %).
        cancel_rate_max: alert when the cancel rate is above this (fraction).
        reject_rate_max: alert when the reject rate is above this (fraction).
        min_orders: rates are judged only once a row has this many done orders.
    """

    latency_p99_ms: Annotated[float, Meta(gt=0)] = 50.0
    slippage_bps: Annotated[float, Meta(ge=0)] = 5.0
    fill_rate_min: Annotated[float, Meta(ge=0, le=1)] = 0.95
    cancel_rate_max: Annotated[float, Meta(ge=0, le=1)] = 0.15
    reject_rate_max: Annotated[float, Meta(ge=0, le=1)] = 0.05
    min_orders: Annotated[int, Meta(ge=1)] = 20


class ExecRow(msgspec.Struct, kw_only=True):
    """Execution quality of one (bot, venue, symbol). Rates are fractions (None: no done
    order yet), latencies ms, slippage bps (adverse positive; None: no benchmark price)."""

    bot: str
    venue: str
    symbol: str
    orders: int = 0
    done: int = 0
    filled: int = 0
    canceled: int = 0
    rejected: int = 0
    expired: int = 0
    fills: int = 0
    fill_rate: float | None = None
    cancel_rate: float | None = None
    reject_rate: float | None = None
    latency_n: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    slippage_decision_bps: float | None = None
    slippage_arrival_bps: float | None = None
    filled_notional: float = 0.0


class ExecBreach(msgspec.Struct, frozen=True, kw_only=True):
    """One threshold crossed by one row: ``metric``, its ``limit`` and observed ``value``
    (both in ``unit``)."""

    bot: str
    venue: str
    symbol: str
    metric: str
    limit: float
    value: float
    unit: str
    message: str


class _Order:
    __slots__ = ("acked", "arrival", "cid", "decision", "filled", "key", "qty", "side",
                 "state", "t_decision")

    def __init__(self, intent: OrderIntent, t_decision: int) -> None:
        self.cid = intent.client_order_id
        self.key: Key = (intent.bot, intent.venue, intent.symbol)
        self.side = intent.side.sign
        self.qty = intent.qty
        self.decision = intent.decision_price
        self.arrival: Decimal | None = None
        self.t_decision = t_decision
        self.acked = False
        self.filled = _ZERO
        self.state = ""  # "" open, else filled / canceled / rejected / expired


class _Acc:
    __slots__ = ("canceled", "done", "done_filled_qty", "done_qty", "expired", "fills",
                 "filled", "latencies", "notional", "orders", "rejected", "slip")

    def __init__(self, max_samples: int) -> None:
        self.orders = self.done = self.filled = self.canceled = 0
        self.rejected = self.expired = self.fills = 0
        self.done_qty = self.done_filled_qty = self.notional = _ZERO
        self.latencies: deque[float] = deque(maxlen=max_samples)
        # benchmark -> [Σ side·(px−ref)·q, Σ ref·q]
        self.slip: dict[str, list[Decimal]] = {"decision": [_ZERO, _ZERO],
                                               "arrival": [_ZERO, _ZERO]}


class ExecutionQuality:
    """Accumulates execution quality from order events (module docstring).

    Args:
        since_ns: ignore orders whose intent is earlier (UTC ns; None = all).
        signal_window_s: a Signal this recent before an intent is its decision time.
        max_samples: latency samples kept per row (the most recent ones).
    """

    def __init__(self, since_ns: int | None = None, *, signal_window_s: float = 60.0,
                 max_samples: int = 10_000) -> None:
        self.signal_window_ns = int(signal_window_s * 1e9)
        self.max_samples = max_samples
        self.reset(since_ns)

    def reset(self, since_ns: int | None) -> None:
        """Forget everything; count again from ``since_ns`` (e.g. a new trading day)."""
        self.since_ns = since_ns
        self._orders: dict[str, _Order] = {}  # open orders (done ones are dropped)
        self._acc: dict[Key, _Acc] = {}
        self._signals: dict[tuple[str, str, str], int] = {}

    def feed(self, ev: AnyEvent) -> None:
        """Apply one event (any kind; those that are not about orders are ignored)."""
        if isinstance(ev, OrderIntent):
            self._intent(ev)
            return
        if isinstance(ev, Signal):
            self._signals[(ev.node, ev.bot, ev.symbol)] = ev.ts_event
            return
        cid = getattr(ev, "client_order_id", None)
        o = self._orders.get(cid) if cid else None
        if o is None:
            return
        acc = self._acc[o.key]
        if isinstance(ev, Fill):
            self._fill(o, acc, ev)
        elif isinstance(ev, OrderAccepted):
            self._ack(o, acc, ev.ts_event)
        elif isinstance(ev, OrderSubmitted):
            o.arrival = ev.arrival_price
        elif isinstance(ev, OrderCanceled):
            self._finish(o, acc, "canceled")
        elif isinstance(ev, OrderRejected):
            self._finish(o, acc, "rejected")
        elif isinstance(ev, OrderExpired):
            self._finish(o, acc, "expired")

    def feed_many(self, events: list[AnyEvent]) -> None:
        """:meth:`feed` each event in order."""
        for ev in events:
            self.feed(ev)

    def _intent(self, ev: OrderIntent) -> None:
        if self.since_ns is not None and ev.ts_event < self.since_ns:
            return
        if ev.client_order_id in self._orders:
            return  # a re-delivered intent
        t = ev.ts_event
        sig = self._signals.pop((ev.node, ev.bot, ev.symbol), None)
        if sig is not None and 0 <= t - sig <= self.signal_window_ns:
            t = sig
        o = _Order(ev, t)
        self._orders[ev.client_order_id] = o
        acc = self._acc.get(o.key)
        if acc is None:
            acc = self._acc[o.key] = _Acc(self.max_samples)
        acc.orders += 1

    def _ack(self, o: _Order, acc: _Acc, ts: int) -> None:
        if not o.acked:
            o.acked = True
            acc.latencies.append((ts - o.t_decision) / _NS_PER_MS)

    def _fill(self, o: _Order, acc: _Acc, f: Fill) -> None:
        self._ack(o, acc, f.ts_event)
        acc.fills += 1
        acc.notional += f.qty * f.price
        for name, ref in (("decision", o.decision), ("arrival", o.arrival)):
            if ref:
                s = acc.slip[name]
                s[0] += o.side * (f.price - ref) * f.qty
                s[1] += ref * f.qty
        o.filled += f.qty
        if o.filled >= o.qty:
            self._finish(o, acc, "filled")

    def _finish(self, o: _Order, acc: _Acc, state: str) -> None:
        if o.state:
            return  # already terminal (e.g. a cancel confirmed after the last fill)
        o.state = state
        self._orders.pop(o.cid, None)
        acc.done += 1
        acc.done_qty += o.qty
        acc.done_filled_qty += min(o.filled, o.qty)
        if state == "filled":
            acc.filled += 1
        elif state == "canceled":
            acc.canceled += 1
        elif state == "rejected":
            acc.rejected += 1
        else:
            acc.expired += 1

    def rows(self) -> list[ExecRow]:
        """One row per (bot, venue, symbol), sorted."""
        return [_row(k, a) for k, a in sorted(self._acc.items())]

    def breaches(self, th: Thresholds | None = None) -> list[ExecBreach]:
        """Every threshold crossed, row by row (see :func:`breaches`)."""
        return breaches(self.rows(), th or Thresholds())


def _row(key: Key, a: _Acc) -> ExecRow:
    bot, venue, symbol = key
    lat = sorted(a.latencies)
    done = a.done
    return ExecRow(
        bot=bot, venue=venue, symbol=symbol, orders=a.orders, done=done, filled=a.filled,
        canceled=a.canceled, rejected=a.rejected, expired=a.expired, fills=a.fills,
        fill_rate=float(a.done_filled_qty / a.done_qty) if a.done_qty else None,
        cancel_rate=a.canceled / done if done else None,
        reject_rate=a.rejected / done if done else None,
        latency_n=len(lat), latency_p50_ms=percentile(lat, 50),
        latency_p99_ms=percentile(lat, 99),
        slippage_decision_bps=_bps(a.slip["decision"]),
        slippage_arrival_bps=_bps(a.slip["arrival"]), filled_notional=float(a.notional))


def _bps(s: list[Decimal]) -> float | None:
    return float(s[0] / s[1] * 10_000) if s[1] else None


def percentile(sorted_values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when empty): the smallest
    value with at least ``pct`` % of the values at or below it."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def breaches(rows: list[ExecRow], th: Thresholds) -> list[ExecBreach]:
    """The thresholds each row crosses (module docstring), in row order."""
    out: list[ExecBreach] = []
    for r in rows:
        checks: list[tuple[str, float | None, float, str, bool]] = [
            ("latency_p99", r.latency_p99_ms, th.latency_p99_ms, "ms", True),
            ("slippage_decision", r.slippage_decision_bps, th.slippage_bps, "bps", True),
            ("slippage_arrival", r.slippage_arrival_bps, th.slippage_bps, "bps", True),
        ]
        if r.done >= th.min_orders:
            checks += [("fill_rate", r.fill_rate, th.fill_rate_min, "fraction", False),
                       ("cancel_rate", r.cancel_rate, th.cancel_rate_max, "fraction", True),
                       ("reject_rate", r.reject_rate, th.reject_rate_max, "fraction", True)]
        for metric, value, limit, unit, above in checks:
            if value is None or not (value > limit if above else value < limit):
                continue
            rel = ">" if above else "<"
            out.append(ExecBreach(
                bot=r.bot, venue=r.venue, symbol=r.symbol, metric=metric, limit=limit,
                value=value, unit=unit,
                message=f"{r.bot} {r.venue}:{r.symbol} {metric} {value:.4g} {unit} {rel} "
                        f"{limit:g} {unit} over {r.done} done orders"))
    return out
