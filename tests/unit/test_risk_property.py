"""Property: over random order streams (sizes, prices, sides, symbols, times, with fills,
cancels and price moves fed back), no order the engine accepts breaks a configured limit.

The limits are re-checked by a brute-force reference model that recomputes every quantity
from the full list of accepted orders and fills (no incremental state), at each approval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qtd.events import OrderType, Side
from qtd.orders import OrderRequest
from qtd.risk import Approved
from tests.unit.test_risk_harness import NS, Harness

LIMITS = {
    "global": {"max_order_qty": 50.0, "price_collar_bps": 200.0, "max_data_age_s": 5.0,
               "max_open_orders": 6, "max_orders_per_s": 5, "duplicate_window_s": 0.5,
               "order_spike_factor": 0.0},
    "accounts": {"acct1": {"equity": 1e9, "max_order_notional": 5_000.0,
                           "max_trades_per_day": 40}},
    "strategies": {"bot1": {"max_gross_notional": 8_000.0, "max_net_notional": 6_000.0,
                            "max_position_qty": 60.0, "max_open_orders": 3},
                   "bot2": {"max_position_notional": 6_000.0}},
    "symbols": {"AAPL": {"max_position_qty": 120.0},
                "MSFT": {"max_position_notional": 9_000.0, "trade_cooldown_s": 0.2}},
}
SYMS = ("AAPL", "MSFT")


@dataclass
class Order:
    t: int
    bot: str
    symbol: str
    buy: bool
    qty: Decimal
    cid: str
    filled: Decimal = Decimal(0)
    open: bool = True


@dataclass
class Model:
    orders: list[Order] = field(default_factory=list)
    fills: list[tuple[str, str, Decimal]] = field(default_factory=list)  # bot, symbol, signed

    def pos(self, bot: str | None, sym: str) -> Decimal:
        return sum((q for b, s, q in self.fills if s == sym and bot in (None, b)), Decimal(0))

    def leaves(self, bot: str | None, sym: str, buy: bool) -> Decimal:
        return sum((o.qty - o.filled for o in self.orders if o.open and o.symbol == sym
                    and o.buy == buy and bot in (None, o.bot)), Decimal(0))

    def worst(self, bot: str | None, sym: str, buy: bool, add: Decimal) -> Decimal:
        q = self.pos(bot, sym)
        if buy:
            return q + self.leaves(bot, sym, True) + add
        return q - self.leaves(bot, sym, False) - add

    def reducing(self, bot: str, sym: str, buy: bool, qty: Decimal) -> bool:
        q = self.pos(bot, sym)
        if buy:
            return q < 0 and qty + self.leaves(bot, sym, True) <= -q
        return q > 0 and qty + self.leaves(bot, sym, False) <= q


def _qty(n: int) -> Decimal:
    """1..55 units, with a few bad values (NaN, negative, zero) mixed in."""
    return {-2: Decimal("NaN"), -1: Decimal(-3)}.get(n, Decimal(n))


step = st.one_of(
    st.tuples(st.just("order"), st.sampled_from(["bot1", "bot2"]),
              st.sampled_from([*SYMS, *SYMS, *SYMS, "TSLA"]), st.booleans(),
              st.integers(-2, 55).map(_qty), st.one_of(st.none(), st.integers(-250, 250)),
              st.sampled_from([False, False, False, True]), st.integers(0, 500)),
    st.tuples(st.just("price"), st.sampled_from(SYMS), st.integers(-300, 300),
              st.integers(0, 3_000)),
    st.tuples(st.just("fill"), st.integers(0, 50), st.booleans()),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=30, max_size=150))
def test_no_accepted_order_breaks_a_limit(steps: list[tuple]) -> None:
    h = Harness(LIMITS)
    m = Model()
    approvals = 0
    for s in steps:
        if s[0] == "price":
            _, sym, bps, dt_ms = s
            h.advance(dt_ms / 1000)
            old = h.engine.mark(sym).price
            assert old is not None
            h.mark(sym, (old * (1 + Decimal(bps) / 10_000)).quantize(Decimal("0.01")))
        elif s[0] == "fill":
            _, idx, whole = s
            live = [o for o in m.orders if o.open]
            if live:
                o = live[idx % len(live)]
                qty = o.qty - o.filled if whole else ((o.qty - o.filled) / 2).quantize(Decimal(1))
                if qty > 0:
                    h.fill(o.cid, qty=qty, price=str(h.engine.mark(o.symbol).price))
                    o.filled += qty
                    o.open = o.filled < o.qty
                    m.fills.append((o.bot, o.symbol, qty if o.buy else -qty))
        elif s[0] == "cancel":
            live = [o for o in m.orders if o.open]
            if live:
                o = live[s[1] % len(live)]
                h.cancel(o.cid)
                o.open = False
        else:
            approvals += _order(h, m, s)
    assert approvals >= 0


def _order(h: Harness, m: Model, s: tuple) -> int:
    _, bot, sym, buy, qty, collar_bps, reduce_only, dt_ms = s
    h.advance(dt_ms / 1000)
    mark_cell = h.engine.mark(sym)
    limit = None
    if collar_bps is not None and mark_cell.price is not None:
        limit = (mark_cell.price * (1 + Decimal(collar_bps) / 10_000)).quantize(Decimal("0.01"))
    request = OrderRequest(
        bot=bot, account="acct1", venue="paper", symbol=sym,
        side=Side.BUY if buy else Side.SELL, qty=qty,
        order_type=OrderType.LIMIT if limit is not None else OrderType.MARKET,
        limit_price=limit, reduce_only=reduce_only,
    )
    now = h.clock.now_ns()
    res, cid = h.place(request)
    if not isinstance(res, Approved):
        return 0
    assert_within_limits(m, request, now, mark_cell.price, mark_cell.ts_ns, h)
    m.orders.append(Order(now, bot, sym, buy, qty, cid))
    return 1


def assert_within_limits(
    m: Model, r: OrderRequest, now: int, mark: Decimal | None, mark_ts: int, h: Harness
) -> None:
    buy, qty, sym, bot = r.side is Side.BUY, r.qty, r.symbol, r.bot
    assert sym in SYMS and qty.is_finite() and qty > 0
    assert mark is not None
    price = r.limit_price if r.limit_price is not None else mark
    assert qty <= 50
    assert qty * price <= 5_000
    if r.limit_price is not None:
        assert abs(r.limit_price - mark) * 10_000 <= 200 * mark
    reducing = m.reducing(bot, sym, buy, qty)
    if r.reduce_only:
        assert reducing
    if not reducing:
        assert now - mark_ts <= 5 * NS
        if bot == "bot1":
            assert abs(m.worst("bot1", sym, buy, qty)) <= 60
            _assert_book(m, sym, buy, qty, price, h)
        else:
            assert abs(m.worst("bot2", sym, buy, qty)) * price <= 6_000
        if sym == "AAPL":
            assert abs(m.worst(None, sym, buy, qty)) <= 120
        else:
            assert abs(m.worst(None, sym, buy, qty)) * price <= 9_000
    opened = [o for o in m.orders if o.open]
    assert len(opened) + 1 <= 6
    if bot == "bot1":
        assert len([o for o in opened if o.bot == "bot1"]) + 1 <= 3
    assert len([o for o in m.orders if o.t > now - NS]) + 1 <= 5
    assert len(m.orders) + 1 <= 40  # one trading day: the stream spans < 1 day
    if sym == "MSFT":
        last = [o.t for o in m.orders if o.symbol == "MSFT"]
        assert not last or now - last[-1] >= 0.2 * NS
    for o in m.orders:
        if (o.bot, o.symbol, o.buy, o.qty) == (bot, sym, buy, qty):
            assert now - o.t >= 0.5 * NS


def _assert_book(m: Model, sym: str, buy: bool, qty: Decimal, price: Decimal, h: Harness) -> None:
    gross = net = Decimal(0)
    for s in SYMS:
        mk = price if s == sym else h.engine.mark(s).price
        assert mk is not None
        add = qty if s == sym else Decimal(0)
        w_side = m.worst("bot1", s, buy, add)
        w_other = m.worst("bot1", s, not buy, Decimal(0))
        gross += max(abs(w_side), abs(w_other)) * mk
        net += w_side * mk
    assert gross <= 8_000
    assert abs(net) <= 6_000
