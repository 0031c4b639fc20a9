"""Fleet view aggregates and fleet caps on a simulated clock (no NATS)."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest

from qtd.clock import SimClock
from qtd.events import (
    Event,
    Fill,
    OrderIntent,
    OrderRejected,
    PnLSnapshot,
    PositionSnapshot,
    Scope,
    Side,
)
from qtd.fleetsnapshot import FleetSnapshot
from qtd.leader.caps import Breach, FleetCaps
from qtd.leader.config import (
    CapsConfig,
    DrawdownCap,
    ErrorRateCap,
    ExposureCap,
    LossCap,
    OrderSpikeCap,
    SelfTradeCap,
    SymbolExposureCap,
)
from qtd.leader.view import FleetView
from qtd.projections import TradingDay

T0 = 1_750_000_000 * 10**9  # 2025-06-15, a fixed "now"
_n = 0


def _view(clock: SimClock) -> FleetView:
    return FleetView(trading_day=TradingDay(), capital=Decimal(10_000), currency="USD",
                     clock=clock)


def _intent(node: str, bot: str, symbol: str, side: Side, qty: str, *, ts: int = T0,
            account: str = "acct") -> OrderIntent:
    global _n
    _n += 1
    return OrderIntent(node=node, bot=bot, ts_event=ts, ts_init=ts,
                       client_order_id=f"{node}.{bot}.{_n}", cid_counter=_n, account=account,
                       venue="paper", symbol=symbol, side=side, qty=Decimal(qty))


def _fill(i: OrderIntent, price: str) -> Fill:
    return Fill(node=i.node, bot=i.bot, ts_event=i.ts_event, ts_init=i.ts_event,
                client_order_id=i.client_order_id, trade_id="t" + i.client_order_id,
                account=i.account, venue="paper", symbol=i.symbol, side=i.side, qty=i.qty,
                price=Decimal(price))


def _feed(view: FleetView, caps: FleetCaps | None, *events: Event) -> list[Breach]:
    out: list[Breach] = []
    for ev in events:
        view.apply(ev)  # type: ignore[arg-type]
        if caps is not None:
            out += caps.on_event(ev)  # type: ignore[arg-type]
    return out


def test_aggregates_per_node_bot_account_symbol_and_snapshot_shape() -> None:
    clock = SimClock(T0)
    view = _view(clock)
    a = _intent("n1", "b1", "SPY", Side.BUY, "10")
    b = _intent("n2", "b1", "SPY", Side.SELL, "4")  # same bot name, other node
    c = _intent("n2", "b2", "QQQ", Side.BUY, "1", account="acct2")
    _feed(view, None, a, _fill(a, "100"), _fill(a, "100"), b, _fill(b, "101"), c, _fill(c, "50"))
    view.apply(PositionSnapshot(node="n1", ts_event=T0, ts_init=T0, account="acct",
                                symbol="SPY", qty=Decimal(10), avg_price=Decimal(100),
                                mark_price=Decimal(102)))
    snap = view.snapshot()
    assert isinstance(snap, FleetSnapshot)
    assert snap.totals.fills == 3 and snap.totals.orders == 3  # the duplicate fill dropped
    bots = {(b.node, b.bot): b.agg for b in snap.bots}
    assert bots[("n1", "b1")].unrealized == 20.0  # 10 x (102 - 100)
    assert bots[("n2", "b1")].unrealized == -4.0  # short 4 from 101, mark 102
    sym = {s.symbol: s for s in snap.symbols}
    assert sym["SPY"].net_qty == 6.0 and sym["SPY"].agg.net_exposure == 612.0
    assert sym["SPY"].agg.gross_exposure == 1428.0  # 1020 + 408
    assert {x.account for x in snap.accounts} == {"acct", "acct2"}
    assert snap.totals.pnl_today == 16.0 and snap.equity == 10_016.0
    decoded = msgspec.json.decode(msgspec.json.encode(snap), type=FleetSnapshot)
    assert decoded.totals == snap.totals


def test_loss_drawdown_and_exposure_caps_trip_once_until_reset() -> None:
    clock = SimClock(T0)
    view = _view(clock)
    caps = FleetCaps(CapsConfig(
        daily_loss=LossCap(limit=500), drawdown=DrawdownCap(limit_pct=4.0),
        gross_exposure=ExposureCap(limit=50_000),
        symbol_exposure=SymbolExposureCap(limit=100_000, per_symbol={"SPY": 30_000},
                                          level="L4")), clock)
    up = _intent("n1", "b1", "SPY", Side.BUY, "200")
    _feed(view, caps, up, _fill(up, "100"))
    assert caps.evaluate(view) == []  # 20k SPY, no loss
    more = _intent("n2", "b9", "SPY", Side.BUY, "150")  # another node: SPY now 35k
    _feed(view, caps, more, _fill(more, "100"))
    [sym] = caps.evaluate(view)
    assert (sym.cap, sym.symbol, sym.scope()) == ("symbol_exposure", "SPY",
                                                  (Scope.SYMBOL, "SPY"))
    crash = _intent("n1", "b1", "SPY", Side.SELL, "1")
    _feed(view, caps, crash, _fill(crash, "97"))  # mark 97: 350 x -3 = -1050
    names = sorted(b.cap for b in caps.evaluate(view))
    assert names == ["daily_loss", "drawdown"]  # -1050 today; 10.5 % below the 10k peak
    assert caps.evaluate(view) == []  # latched
    util = {c.name: c for c in view.caps}
    assert util["drawdown"].value == pytest.approx(10.5) and util["drawdown"].tripped
    assert util["gross_exposure"].utilisation == pytest.approx(349 * 97 / 50_000)
    caps.reset()
    assert sorted(b.cap for b in caps.evaluate(view)) == ["daily_loss", "drawdown",
                                                          "symbol_exposure"]


def test_error_rate_and_order_spike_use_event_time_windows() -> None:
    clock = SimClock(T0)
    view = _view(clock)
    caps = FleetCaps(CapsConfig(
        error_rate=ErrorRateCap(max_pct=10, window_s=60, min_orders=20),
        order_spike=OrderSpikeCap(factor=10, window_s=5, baseline_s=600,
                                  min_baseline_per_s=1.0)), clock)
    old = [_intent("n1", "b", "SPY", Side.BUY, "1", ts=T0 - 3600 * 10**9) for _ in range(500)]
    _feed(view, caps, *old)  # an hour-old backlog is no spike now
    assert caps.evaluate(view) == []
    for i in range(30):
        o = _intent("n1", "b", "SPY", Side.BUY, "1", ts=T0 - i * 10**9)
        _feed(view, caps, o)
        if i % 7 == 0:  # 5 rejects / 30 orders = 16.7 %
            _feed(view, caps, OrderRejected(node="n1", bot="b", ts_event=o.ts_event,
                                            ts_init=o.ts_event,
                                            client_order_id=o.client_order_id, reason="x"))
    assert [b.cap for b in caps.evaluate(view)] == ["error_rate"]
    burst = [_intent("n1", "b", "SPY", Side.BUY, "1", ts=T0) for _ in range(60)]
    _feed(view, caps, *burst)  # 60+5 in 5 s = 13/s vs baseline floor 1/s
    assert [b.cap for b in caps.evaluate(view)] == ["order_spike"]


def test_self_trade_two_bots_one_account_opposite_sides_within_window() -> None:
    clock = SimClock(T0)
    view = _view(clock)
    caps = FleetCaps(CapsConfig(self_trade=SelfTradeCap(window_s=2, level="L2")), clock)
    assert _feed(view, caps, _intent("n1", "a", "SPY", Side.BUY, "1"),
                 _intent("n2", "b", "SPY", Side.BUY, "1"),  # same side: fine
                 _intent("n2", "c", "SPY", Side.SELL, "1", account="other")) == []  # other acct
    late = _intent("n2", "b", "SPY", Side.SELL, "1", ts=T0 + 3 * 10**9)  # outside 2 s
    assert _feed(view, caps, late) == []
    clock.set(T0 + 3 * 10**9)
    [b] = _feed(view, caps, _intent("n1", "a", "SPY", Side.BUY, "1", ts=T0 + 3 * 10**9))
    assert b.scope() == (Scope.ACCOUNT, "acct") and "SPY" in b.message


def test_breach_scope_falls_back_to_global_without_a_key() -> None:
    b = Breach(cap="daily_loss", limit=1, value=2, unit="USD", level="L3")
    assert b.scope() == (Scope.GLOBAL, "")


def test_disarmed_caps_measure_but_fire_nothing_and_arming_fires_the_pending_self_trade(
) -> None:
    clock = SimClock(T0)
    view = _view(clock)
    caps = FleetCaps(CapsConfig(self_trade=SelfTradeCap(window_s=2, level="L2"),
                                daily_loss=LossCap(limit=100)), clock)
    caps.arm(False)  # a standby leader
    a = _intent("n1", "a", "SPY", Side.BUY, "10")
    crash = _intent("n1", "a", "SPY", Side.SELL, "1")
    _feed(view, caps, a, _fill(a, "100"), crash, _fill(crash, "80"))  # 9 x -20 - 20 = -200
    assert _feed(view, caps, _intent("n1", "a", "SPY", Side.BUY, "1"),
                 _intent("n2", "b", "SPY", Side.SELL, "1")) == []  # self-trade risk, disarmed
    assert caps.evaluate(view) == [] and not caps.tripped
    assert {c.name: c.value for c in view.caps}["daily_loss"] == pytest.approx(200.0)
    [st] = caps.arm(True)  # takeover: the self-trade seen while disarmed fires now
    assert (st.cap, st.scope()) == ("self_trade", (Scope.ACCOUNT, "acct"))
    assert [b.cap for b in caps.evaluate(view)] == ["daily_loss"]
    clock.advance(3 * 10**9)
    caps.reset()
    caps.arm(False)
    assert caps.arm(True) == []  # outside the window: nothing left to fire


def test_daily_loss_row_shows_a_gain_as_no_loss() -> None:
    clock = SimClock(T0)
    view = _view(clock)
    caps = FleetCaps(CapsConfig(daily_loss=LossCap(limit=100)), clock)
    a = _intent("n1", "a", "SPY", Side.BUY, "10")
    win = _intent("n1", "a", "SPY", Side.SELL, "10")
    _feed(view, caps, a, _fill(a, "100"), win, _fill(win, "150"))  # +500 today
    assert caps.evaluate(view) == []
    row = {c.name: c for c in view.caps}["daily_loss"]
    assert view.snapshot().totals.pnl_today == 500.0
    assert (row.value, row.utilisation, row.unit) == (0.0, 0.0, "USD")


def _tick(node: str, bot: str, unrealized: str, ts: int) -> PnLSnapshot:
    return PnLSnapshot(node=node, bot=bot, ts_event=ts, ts_init=ts, account="acct",
                       realized=Decimal(0), unrealized=Decimal(unrealized), fees=Decimal(0))


def test_unrealized_pnl_from_fresh_agent_ticks_else_fill_marks() -> None:
    clock = SimClock(T0)
    view = FleetView(trading_day=TradingDay(), capital=Decimal(10_000), currency="USD",
                     clock=clock, pnl_stale_s=5.0)
    caps = FleetCaps(CapsConfig(daily_loss=LossCap(limit=500)), clock)
    a = _intent("n1", "a", "SPY", Side.BUY, "10")
    b = _intent("n1", "b", "QQQ", Side.BUY, "1")
    _feed(view, caps, a, _fill(a, "100"), b, _fill(b, "50"))

    def agg(key: str) -> tuple[float, float]:
        snap = view.snapshot()
        if key == "fleet":
            return snap.totals.unrealized, snap.totals.pnl_today
        x = next(x.agg for x in snap.bots if x.bot == key)
        return x.unrealized, x.pnl_today

    assert agg("a") == (0.0, 0.0)  # fill marks: SPY last traded at 100
    clock.advance(10**9)
    view.on_pnl(_tick("n1", "a", "-600", clock.now_ns()))  # the agent marks SPY at 40
    assert agg("a") == (-600.0, -600.0) and agg("b") == (0.0, 0.0)
    snap = view.snapshot()
    assert snap.totals.unrealized == -600.0 and snap.equity == 9_400.0
    assert {p.symbol: p.unrealized for p in snap.positions}["SPY"] == -600.0
    assert {s.symbol: s.agg.unrealized for s in snap.symbols}["SPY"] == -600.0
    assert [x.cap for x in caps.evaluate(view)] == ["daily_loss"]  # invisible at fill marks
    clock.advance(6 * 10**9)  # the tick is stale now: back to fill marks
    assert agg("a") == (0.0, 0.0)
    view.on_pnl(_tick("n1", "a", "-100", clock.now_ns()))
    assert agg("a") == (-100.0, -100.0)
    sell = _intent("n1", "a", "SPY", Side.SELL, "5", ts=clock.now_ns() + 1)
    _feed(view, caps, sell, _fill(sell, "90"))  # newer than the tick: fill marks at 90
    assert agg("a") == (-50.0, -100.0)  # 5 x (90 - 100) open; -50 realized today
    view.on_pnl(_tick("n1", "a", "-40", clock.now_ns() + 2))  # a tick after the fill
    assert agg("a") == (-40.0, -90.0)
    assert agg("fleet") == (-40.0, -90.0)
