"""A fleet cap raised by an operator for the rest of the trading day, and a resume check
that says why a cap still holds (issue 22, item 4), on a simulated clock (no NATS)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import msgspec
import pytest

from qtd.clock import SimClock
from qtd.errors import ConfigError
from qtd.events import CapOverride, Fill, OrderIntent, Side
from qtd.leader.caps import FleetCaps
from qtd.leader.config import (
    CapsConfig,
    DrawdownCap,
    ExposureCap,
    LossCap,
    SelfTradeCap,
    SymbolExposureCap,
)
from qtd.leader.fleetdb import LEADER_NODE
from qtd.leader.view import FleetView
from qtd.projections import TradingDay

# 2026-12-04 15:00 New York: two hours before the 17:00 rollover ends the trading day that
# began at 17:00 on 12-03 (TradingDay labels a day by the date it starts).
T0 = int(datetime(2026, 12, 4, 20, 0, tzinfo=UTC).timestamp()) * 10**9
HOUR = 3600 * 10**9


def _fleet(cfg: CapsConfig) -> tuple[SimClock, FleetView, FleetCaps]:
    clock = SimClock(T0)
    day = TradingDay("America/New_York", "17:00")
    view = FleetView(trading_day=day, capital=Decimal(10_000), currency="USD", clock=clock)
    return clock, view, FleetCaps(cfg, clock, day)


def _trade(view: FleetView, side: Side, qty: str, price: str, n: int) -> None:
    i = OrderIntent(node="n1", bot="b1", ts_event=T0, ts_init=T0, client_order_id=f"c{n}",
                    cid_counter=n, account="acct", venue="paper", symbol="SPY", side=side,
                    qty=Decimal(qty))
    view.apply(i)
    view.apply(Fill(node="n1", bot="b1", ts_event=T0, ts_init=T0, client_order_id=f"c{n}",
                    trade_id=f"t{n}", account="acct", venue="paper", symbol="SPY", side=side,
                    qty=Decimal(qty), price=Decimal(price)))


def _losing(view: FleetView) -> None:
    _trade(view, Side.BUY, "100", "100", 1)
    _trade(view, Side.SELL, "50", "90", 2)  # realized -500, 50 open at mark 90: -500


def test_a_breached_cap_holds_its_kill_and_says_value_limit_and_what_to_do() -> None:
    _, view, caps = _fleet(CapsConfig(daily_loss=LossCap(limit=600)))
    _losing(view)
    [tripped] = caps.evaluate(view)
    assert tripped.trip_key == "daily_loss"
    [held] = caps.held({"daily_loss"}, view)
    assert (held.cap, held.value, held.limit) == ("daily_loss", 1000.0, 600.0)
    text = held.advice()
    assert "fleet cap daily_loss is still breached: 1,000.00 USD against limit 600.00 USD" \
        in text
    assert "qtd caps raise daily_loss --limit L --operator NAME --reason WHY" in text
    assert "L above 1000.00" in text and "trading-day rollover" in text
    assert caps.held({"gross_exposure"}, view) == []  # not this kill's cap
    assert caps.held(set(), view) == []


def test_a_raise_lifts_the_limit_until_the_trading_day_rollover() -> None:
    clock, view, caps = _fleet(CapsConfig(daily_loss=LossCap(limit=600)))
    _losing(view)
    assert [b.cap for b in caps.evaluate(view)] == ["daily_loss"]
    ev = caps.raise_limit(view, "daily_loss", "", 2500.0, "alice", "loss is the replay")
    assert (ev.node, ev.old_limit, ev.new_limit, ev.unit, ev.trading_day) == (
        LEADER_NODE, 600.0, 2500.0, "USD", "2026-12-03")
    assert (ev.operator, ev.reason) == ("alice", "loss is the replay")
    caps.apply_override(ev)
    assert caps.held({"daily_loss"}, view) == []
    caps.reset()  # the operator resumed
    assert caps.evaluate(view) == []  # 1,000 against 2,500: no new trip
    [cap] = view.caps
    assert cap.limit == 2500.0 and cap.override is not None
    assert (cap.override.operator, cap.override.configured_limit) == ("alice", 600.0)
    again = caps.raise_limit(view, "daily_loss", "", 3000.0, "bob", "more room")
    assert again.old_limit == 2500.0  # the limit in force, not the configured one
    clock.advance(2 * HOUR + 10**9)  # 17:00:01 New York: trading day 2026-12-04 begins
    assert caps.overrides.current("daily_loss") is None and caps.overrides.active() == []
    caps.evaluate(view)
    [cap] = view.caps
    assert (cap.limit, cap.override) == (600.0, None)  # the configured limit again


def test_a_symbol_cap_is_raised_per_symbol() -> None:
    _, view, caps = _fleet(CapsConfig(symbol_exposure=SymbolExposureCap(
        limit=5000, per_symbol={"SPY": 4000}, level="L4")))
    _trade(view, Side.BUY, "100", "100", 1)  # SPY 10k
    [b] = caps.evaluate(view)
    assert b.trip_key == "symbol_exposure:SPY"
    assert "--key SPY" in caps.held({b.trip_key}, view)[0].advice()
    caps.apply_override(caps.raise_limit(view, "symbol_exposure", "SPY", 20_000, "al", "ok"))
    assert caps.held({b.trip_key}, view) == []
    assert caps.overrides.limit("symbol_exposure", "QQQ", 5000) == 5000


@pytest.mark.parametrize(("cap", "key", "limit", "who", "why", "field", "says"), [
    ("daily_loss", "", 900.0, "", "x", "operator", "non-empty operator"),
    ("daily_loss", "", 900.0, "al", " ", "reason", "non-empty reason"),
    ("self_trade", "", 9.0, "al", "x", "cap", "has no limit to raise"),
    ("drawdown", "", 9.0, "al", "x", "cap", "is off in the leader config"),
    ("daily_loss", "SPY", 900.0, "al", "x", "key", "only for symbol_exposure"),
    ("symbol_exposure", "", 9e9, "al", "x", "key", "required for symbol_exposure"),
    ("daily_loss", "", 600.0, "al", "x", "limit", "must be above the limit in force (600)"),
    ("daily_loss", "", float("nan"), "al", "x", "limit", "must be above"),
    ("daily_loss", "", None, "al", "x", "limit", "must be above"),
])
def test_a_raise_request_is_refused_naming_field_value_and_rule(
        cap: str, key: str, limit: float | None, who: str, why: str, field: str,
        says: str) -> None:
    _, view, caps = _fleet(CapsConfig(daily_loss=LossCap(limit=600),
                                      symbol_exposure=SymbolExposureCap(limit=5000),
                                      self_trade=SelfTradeCap()))
    with pytest.raises(ConfigError) as err:
        caps.raise_limit(view, cap, key, limit, who, why)
    assert err.value.field == field and says in str(err.value) and err.value.rule


def test_a_percentage_cap_is_raised_at_most_to_100() -> None:
    _, view, caps = _fleet(CapsConfig(drawdown=DrawdownCap(limit_pct=5.0)))
    with pytest.raises(ConfigError, match="at most 100"):
        caps.raise_limit(view, "drawdown", "", 150.0, "al", "x")
    assert caps.raise_limit(view, "drawdown", "", 8.0, "al", "x").unit == "%"


def test_only_the_leaders_stored_overrides_come_back_at_start() -> None:
    _, view, caps = _fleet(CapsConfig(gross_exposure=ExposureCap(limit=1000)))
    ev = caps.raise_limit(view, "gross_exposure", "", 50_000, "al", "x")
    forged = msgspec.structs.replace(ev, node="node-a")  # an agent cannot raise a cap
    caps.apply_override(forged)
    assert caps.overrides.current("gross_exposure") is None
    caps.on_event(ev)  # never from the event stream either
    caps.on_event(ev, live=False)
    assert caps.overrides.current("gross_exposure") is None
    caps.apply_override(ev)  # the leader's own, read back from fleet.db at start
    assert caps.overrides.current("gross_exposure") == ev
    assert isinstance(msgspec.json.decode(msgspec.json.encode(ev), type=CapOverride),
                      CapOverride)
