"""Trade surveillance over the fleet's own orders: wash trading, spoofing-like cancels and
layering, each finding naming the events behind it (seq, client_order_id).

Fed event by event (:meth:`Surveillance.feed` returns the findings an event completes), so
``qtd surveil`` (a store replayed once) and the leader (events as it ingests them) run the
same code. The patterns follow the descriptions of the abusive practices in ESMA's MAR
guidelines (Commission Delegated Regulation (EU) 2016/522, Annex II: "wash trades",
"placing orders with no intention of executing them", "layering and spoofing"); the
thresholds are qtd's defaults, configurable in :class:`SurveilConfig`:

* **wash**: two fills of one symbol on one account, opposite sides, by *different* bots,
  within ``wash_window_s`` (5 s) of each other: the fleet traded with itself (or could have).
* **spoof**: a *large* order canceled within ``spoof_cancel_ms`` (100 ms) of its intent with
  nothing filled. Large: notional (qty × limit, else decision price) ≥
  ``spoof_size_factor`` (5) × the bot's median order notional over its last
  ``median_window`` orders (the order itself included; at least ``spoof_min_orders`` orders
  seen), and ≥ ``spoof_min_notional``.
* **layer**: ``layer_levels`` (3) or more resting LIMIT orders on one side of one symbol and
  account at distinct prices, canceled one after the other (each cancel within
  ``layer_gap_s`` (1 s) of the previous one) with nothing filled.

Cancels whose reason starts with one of ``exempt_reasons`` (the kill switch, flattening,
reconciliation) are risk actions, not trading intent: they are not surveilled.
:class:`~qtd.events.PositionTransfer` events (a canary moving a share of a position between
``<bot>`` and ``<bot>~canary`` without an order) are not trades: they are not surveilled.
"""

from __future__ import annotations

import statistics
from collections import deque
from decimal import Decimal
from typing import Annotated

import msgspec
from msgspec import Meta

from qtd.events import (
    AnyEvent,
    Fill,
    OrderCanceled,
    OrderCancelRequested,
    OrderExpired,
    OrderIntent,
    OrderRejected,
    OrderType,
    Side,
)

_NS = 1_000_000_000


class SurveilConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Surveillance thresholds (module docstring for each pattern)."""

    wash_window_s: Annotated[float, Meta(gt=0)] = 5.0
    spoof_cancel_ms: Annotated[float, Meta(gt=0)] = 100.0
    spoof_size_factor: Annotated[float, Meta(ge=1)] = 5.0
    spoof_min_notional: Annotated[float, Meta(ge=0)] = 0.0
    spoof_min_orders: Annotated[int, Meta(ge=1)] = 5
    median_window: Annotated[int, Meta(ge=1)] = 500
    layer_levels: Annotated[int, Meta(ge=2)] = 3
    layer_gap_s: Annotated[float, Meta(gt=0)] = 1.0
    exempt_reasons: tuple[str, ...] = ("kill switch", "flatten", "reconcil")


class EventRef(msgspec.Struct, frozen=True, kw_only=True):
    """One event behind a finding."""

    seq: int
    kind: str
    node: str
    bot: str
    client_order_id: str
    ts_ns: int
    detail: str = ""


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    """A surveillance finding: ``pattern`` (wash, spoof, layer), where, why, and the events.
    ``key`` identifies the condition (one alert per key); ``value``/``limit`` in ``unit``."""

    pattern: str
    key: str
    account: str
    symbol: str
    bots: list[str]
    ts_ns: int
    message: str
    value: float
    limit: float
    unit: str
    events: list[EventRef]


class _Order:
    __slots__ = ("account", "bot", "cid", "limit", "node", "notional", "seq", "side", "symbol",
                 "ts")

    def __init__(self, ev: OrderIntent, notional: Decimal | None) -> None:
        self.cid, self.bot, self.node, self.seq, self.ts = (
            ev.client_order_id, ev.bot, ev.node, ev.seq, ev.ts_event)
        self.account, self.symbol, self.side = ev.account, ev.symbol, ev.side
        self.limit = ev.limit_price if ev.order_type is OrderType.LIMIT else None
        self.notional = notional


class Surveillance:
    """Incremental surveillance (module docstring).

    Args:
        cfg: thresholds (defaults: :class:`SurveilConfig`).
        max_orders: orders remembered for cancels to refer to (the oldest are forgotten).
            An order is dropped at its first fill, cancel, reject or expiry: after that no
            cancel of it can be a spoof or a layer (nothing filled, not yet canceled), so
            only open orders are held.
    """

    def __init__(self, cfg: SurveilConfig | None = None, max_orders: int = 200_000) -> None:
        self.cfg = cfg or SurveilConfig()
        self.max_orders = max_orders
        self.orders: dict[str, _Order] = {}
        self._sizes: dict[tuple[str, str], deque[float]] = {}
        # (account, symbol) -> (bot, side) -> (arrival number, fill), in arrival order
        self._fills: dict[tuple[str, str], dict[tuple[str, Side], deque[tuple[int, Fill]]]] = {}
        self._arrivals = 0
        self._runs: dict[tuple[str, str, Side], list[tuple[_Order, AnyEvent]]] = {}
        self.findings: list[Finding] = []

    def feed(self, ev: AnyEvent) -> list[Finding]:
        """Apply one event; returns the findings it completes (also kept in
        :attr:`findings`)."""
        if isinstance(ev, OrderIntent):
            self._intent(ev)
            return []
        found: list[Finding] = []
        if isinstance(ev, Fill):
            self.orders.pop(ev.client_order_id, None)  # filled: a later cancel is no spoof
            found = self._wash(ev)
        elif isinstance(ev, OrderCancelRequested | OrderCanceled):
            found = self._cancel(ev)
        elif isinstance(ev, OrderRejected | OrderExpired):
            self.orders.pop(ev.client_order_id, None)
        self.findings += found
        return found

    def feed_many(self, events: list[AnyEvent]) -> list[Finding]:
        """:meth:`feed` each event; the findings in order."""
        out: list[Finding] = []
        for ev in events:
            out += self.feed(ev)
        return out

    # --- orders ---------------------------------------------------------------------------

    def _intent(self, ev: OrderIntent) -> None:
        if ev.client_order_id in self.orders:
            return
        price = ev.limit_price if ev.limit_price is not None else ev.decision_price
        o = _Order(ev, ev.qty * price if price else None)
        self.orders[o.cid] = o
        if len(self.orders) > self.max_orders:
            del self.orders[next(iter(self.orders))]
        if o.notional is not None:
            key = (ev.node, ev.bot)
            sizes = self._sizes.get(key)
            if sizes is None:
                sizes = self._sizes[key] = deque(maxlen=self.cfg.median_window)
            sizes.append(float(o.notional))

    # --- wash -----------------------------------------------------------------------------

    def _wash(self, f: Fill) -> list[Finding]:
        """A fill of ``f``'s account and symbol on the other side, by another bot, within the
        window: the earliest such fill seen. Fills are kept per (account, symbol) and per
        (bot, side), so a fill only looks at other bots' opposite-side fills: O(1) for the
        usual one bot per account, however busy it is."""
        window = int(self.cfg.wash_window_s * _NS)
        floor = f.ts_event - 2 * window  # events may arrive a little out of time order
        books = self._fills.setdefault((f.account, f.symbol), {})
        best: tuple[int, Fill] | None = None
        for (bot, side), recent in books.items():
            while recent and recent[0][1].ts_event < floor:
                recent.popleft()
            if bot == f.bot or side is f.side:
                continue
            for order, other in recent:
                if best is not None and order > best[0]:
                    break
                if abs(f.ts_event - other.ts_event) <= window:
                    best = (order, other)
                    break
        self._arrivals += 1
        mine = books.get((f.bot, f.side))
        if mine is None:
            mine = books[(f.bot, f.side)] = deque()
        mine.append((self._arrivals, f))
        if best is None:
            return []
        other = best[1]
        gap = abs(f.ts_event - other.ts_event) / _NS
        return [Finding(
            pattern="wash", key=f"wash:{f.account}:{f.symbol}", account=f.account,
            symbol=f.symbol, bots=sorted({other.bot, f.bot}), ts_ns=f.ts_event,
            message=f"{f.account} {f.symbol}: {other.bot} {other.side} "
                    f"{other.qty} @ {other.price} and {f.bot} {f.side} {f.qty} @ "
                    f"{f.price} {gap:.3f} s apart (window {self.cfg.wash_window_s:g} s)",
            value=gap, limit=self.cfg.wash_window_s, unit="s",
            events=[_ref(other, f"{other.side} {other.qty} @ {other.price}"),
                    _ref(f, f"{f.side} {f.qty} @ {f.price}")])]

    # --- cancels: spoof and layer ---------------------------------------------------------

    def _cancel(self, ev: OrderCancelRequested | OrderCanceled) -> list[Finding]:
        o = self.orders.pop(ev.client_order_id, None)
        if o is None:
            return []  # unknown, filled, or the second event of one cancel
        if ev.reason.lower().startswith(self.cfg.exempt_reasons):
            return []
        return [*self._spoof(o, ev), *self._layer(o, ev)]

    def _spoof(self, o: _Order, ev: AnyEvent) -> list[Finding]:
        c = self.cfg
        age_ms = (ev.ts_event - o.ts) / 1e6
        sizes = self._sizes.get((o.node, o.bot))
        if (o.notional is None or age_ms > c.spoof_cancel_ms or sizes is None
                or len(sizes) < c.spoof_min_orders):
            return []
        median = statistics.median(sizes)
        size = float(o.notional)
        if size < c.spoof_size_factor * median or size < c.spoof_min_notional:
            return []
        return [Finding(
            pattern="spoof", key=f"spoof:{o.account}:{o.symbol}:{o.bot}", account=o.account,
            symbol=o.symbol, bots=[o.bot], ts_ns=ev.ts_event,
            message=f"{o.bot} {o.account} {o.symbol}: {o.side} order of notional {size:,.2f} "
                    f"({size / median:.1f}x the bot's median {median:,.2f}) canceled "
                    f"{age_ms:.1f} ms after its intent, nothing filled",
            value=age_ms, limit=c.spoof_cancel_ms, unit="ms",
            events=[_order_ref(o), _ref(ev, f"cancel after {age_ms:.1f} ms")])]

    def _layer(self, o: _Order, ev: AnyEvent) -> list[Finding]:
        if o.limit is None:
            return []
        key = (o.account, o.symbol, o.side)
        run = self._runs.get(key, [])
        gap = int(self.cfg.layer_gap_s * _NS)
        if run and ev.ts_event - run[-1][1].ts_event > gap:
            run = []
        run = [*run[-99:], (o, ev)]  # a long run at one or two prices stays bounded
        self._runs[key] = run
        levels = sorted({r[0].limit for r in run if r[0].limit is not None})
        if len(levels) < self.cfg.layer_levels:
            return []
        del self._runs[key]
        bots = sorted({r[0].bot for r in run})
        return [Finding(
            pattern="layer", key=f"layer:{o.account}:{o.symbol}:{o.side}", account=o.account,
            symbol=o.symbol, bots=bots, ts_ns=ev.ts_event,
            message=f"{o.account} {o.symbol}: {len(run)} {o.side} limit orders at "
                    f"{len(levels)} price levels ({', '.join(str(p) for p in levels)}) "
                    f"canceled in sequence, nothing filled",
            value=float(len(levels)), limit=float(self.cfg.layer_levels), unit="levels",
            events=[x for r in run for x in (_order_ref(r[0]), _ref(r[1], "cancel"))])]


def _ref(ev: AnyEvent, detail: str = "") -> EventRef:
    return EventRef(seq=ev.seq, kind=type(ev).__name__, node=ev.node, bot=ev.bot,
                    client_order_id=getattr(ev, "client_order_id", ""), ts_ns=ev.ts_event,
                    detail=detail)


def _order_ref(o: _Order) -> EventRef:
    price = f" limit {o.limit}" if o.limit is not None else ""
    notional = f" notional {float(o.notional):,.2f}" if o.notional is not None else ""
    return EventRef(seq=o.seq, kind="OrderIntent", node=o.node, bot=o.bot,
                    client_order_id=o.cid, ts_ns=o.ts, detail=f"{o.side}{price}{notional}")
