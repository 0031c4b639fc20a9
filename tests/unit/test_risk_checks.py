"""Every pre-trade check: one passing and one failing case each, through a real RiskEngine."""

from __future__ import annotations

from decimal import Decimal

import pytest

from qtd.events import OrderType, Scope, Severity, Side, TradingState
from qtd.risk import Approved
from tests.unit.test_risk_harness import Harness, denied, req

# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"qty": Decimal("NaN")}, "qty"),
        ({"qty": Decimal("Infinity")}, "qty"),
        ({"qty": Decimal(0)}, "qty"),
        ({"qty": Decimal(-5)}, "qty"),
        ({"order_type": OrderType.LIMIT, "limit_price": Decimal("NaN")}, "limit_price"),
        ({"order_type": OrderType.LIMIT, "limit_price": Decimal("-1")}, "limit_price"),
        ({"order_type": OrderType.LIMIT, "limit_price": Decimal(0)}, "limit_price"),
        ({"order_type": OrderType.LIMIT}, "limit_price"),
        ({"limit_price": Decimal(100)}, "limit_price"),
        ({"decision_price": Decimal("-Infinity")}, "decision_price"),
    ],
)
def test_bad_numbers_are_denied_naming_field_and_rule(kwargs: dict, field: str) -> None:
    base = req()
    bad = base.__class__(**{**{f: getattr(base, f) for f in base.__struct_fields__}, **kwargs})
    res = Harness().check(bad)
    denied(res, "bad_input")
    assert res.denial.field == field and field in res.denial.message  # type: ignore[union-attr]
    assert "must" in res.denial.message or "required" in res.denial.message  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kwargs", "check"),
    [({"symbol": "TSLA"}, "unknown_symbol"), ({"account": "nope"}, "unknown_account"),
     ({"bot": "ghost"}, "unknown_bot")],
)
def test_unknown_symbol_account_bot_are_denied(kwargs: dict, check: str) -> None:
    h = Harness()
    assert isinstance(h.check(req()), Approved)
    res = h.check(req(**kwargs))
    denied(res, check)
    assert next(iter(kwargs.values())) in res.denial.message  # type: ignore[union-attr]


def test_strategy_defaults_admit_unlisted_bots() -> None:
    h = Harness({"strategy_defaults": {"max_order_qty": 5.0}})
    assert isinstance(h.check(req(bot="ghost", qty="5")), Approved)
    denied(h.check(req(bot="ghost", qty="6")), "max_order_qty")


# --- allow-list and restricted list --------------------------------------------------------


def test_restricted_symbol_is_denied_allowed_symbol_passes() -> None:
    h = Harness({"global": {"restricted_symbols": ["GME"]}})
    assert isinstance(h.check(req(symbol="AAPL")), Approved)
    denied(h.check(req(symbol="GME")), "restricted_symbol")


# --- order size and price ------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["global", "accounts.acct1", "strategies.bot1", "symbols.AAPL"])
def test_max_order_qty_at_each_scope(scope: str) -> None:
    over: dict = {}
    node = over
    for part in scope.split("."):
        node = node.setdefault(part, {})
    node["max_order_qty"] = 100.0
    h = Harness(over)
    assert isinstance(h.check(req(qty="100")), Approved)
    res = h.check(req(qty="101"))
    denied(res, "max_order_qty")
    d = res.denial  # type: ignore[union-attr]
    assert (d.limit, d.value, d.unit) == (100.0, 101.0, "units")
    assert d.scope.value == scope.split(".")[0].rstrip("s").upper().replace("STRATEGIE", "STRATEGY")


def test_tightest_scope_binds_and_is_named() -> None:
    h = Harness({"global": {"max_order_qty": 500.0}, "symbols": {"AAPL": {"max_order_qty": 50.0}}})
    res = h.check(req(qty="60"))
    denied(res, "max_order_qty")
    assert (res.denial.scope, res.denial.scope_key) == (Scope.SYMBOL, "AAPL")  # type: ignore[union-attr]


def test_max_order_notional_uses_mark_or_limit_price() -> None:
    h = Harness({"accounts": {"acct1": {"max_order_notional": 1_000.0}}}, price="100")
    assert isinstance(h.check(req(qty="10")), Approved)
    denied(h.check(req(qty="11")), "max_order_notional")
    assert isinstance(h.check(req(qty="10", limit="100")), Approved)
    denied(h.check(req(qty="10", limit="101")), "max_order_notional")


def test_price_collar_in_bps_of_last_price() -> None:
    h = Harness({"global": {"price_collar_bps": 100.0}}, price="100")
    assert isinstance(h.check(req(limit="101")), Approved)  # exactly 100 bps
    res = h.check(req(limit="101.01"))
    denied(res, "price_collar")
    assert res.denial.unit == "bps" and res.denial.value > 100  # type: ignore[union-attr]
    assert isinstance(h.check(req()), Approved)  # market orders have no limit price


def test_stale_data_guard_blocks_new_exposure_only() -> None:
    h = Harness({"symbols": {"AAPL": {"max_data_age_s": 5.0}}})
    h.trade(Side.BUY, "10", "100")
    h.advance(5)
    assert isinstance(h.check(req()), Approved)
    h.advance(0.001)
    res = h.check(req())
    denied(res, "stale_data")
    assert res.denial.unit == "s" and res.denial.value > 5  # type: ignore[union-attr]
    assert isinstance(h.check(req(Side.SELL, "10")), Approved)  # reducing still allowed


def test_no_market_data_at_all_is_denied() -> None:
    h = Harness(price=None)
    denied(h.check(req()), "stale_data")


def test_reduce_only_must_reduce() -> None:
    h = Harness()
    h.trade(Side.BUY, "10", "100")
    assert isinstance(h.check(req(Side.SELL, "10", reduce_only=True)), Approved)
    denied(h.check(req(Side.SELL, "11", reduce_only=True)), "reduce_only")  # would flip
    denied(h.check(req(Side.BUY, "1", reduce_only=True)), "reduce_only")  # would add
    _, cid = h.place(req(Side.SELL, "6", reduce_only=True))
    denied(h.check(req(Side.SELL, "5", reduce_only=True)), "reduce_only")  # open order counts
    assert isinstance(h.check(req(Side.SELL, "4", reduce_only=True)), Approved)
    assert cid


# --- exposure ------------------------------------------------------------------------------


def test_position_qty_counts_fills_and_open_orders() -> None:
    h = Harness({"symbols": {"AAPL": {"max_position_qty": 100.0}}})
    h.trade(Side.BUY, "60", "100")
    h.place(req(qty="30", limit="99"))
    assert isinstance(h.check(req(qty="10")), Approved)
    res = h.check(req(qty="11"))
    denied(res, "max_position_qty")
    assert res.denial.value == 101  # type: ignore[union-attr]
    assert isinstance(h.check(req(Side.SELL, "50")), Approved)  # reducing


def test_position_limit_spans_bots_at_symbol_scope_not_strategy_scope() -> None:
    h = Harness({"symbols": {"AAPL": {"max_position_qty": 100.0}},
                 "strategies": {"bot1": {"max_position_qty": 80.0}}})
    h.trade(Side.BUY, "70", "100", bot="bot2")
    assert isinstance(h.check(req(qty="30")), Approved)
    res = h.check(req(qty="31"))
    denied(res, "max_position_qty")
    assert res.denial.scope is Scope.GLOBAL or res.denial.scope is Scope.SYMBOL  # type: ignore[union-attr]
    h2 = Harness({"strategies": {"bot1": {"max_position_qty": 80.0}}})
    h2.trade(Side.BUY, "70", "100", bot="bot2")
    assert isinstance(h2.check(req(qty="80")), Approved)
    denied(h2.check(req(qty="81")), "max_position_qty")


def test_position_notional() -> None:
    h = Harness({"accounts": {"acct1": {"max_position_notional": 5_000.0}}})
    h.trade(Side.BUY, "40", "100")
    assert isinstance(h.check(req(qty="10")), Approved)
    denied(h.check(req(qty="11")), "max_position_notional")


def test_position_pct_of_account_equity() -> None:
    h = Harness({"accounts": {"acct1": {"equity": 100_000.0, "max_position_pct_equity": 10.0}}})
    assert isinstance(h.check(req(qty="100")), Approved)  # 10,000 = 10 %
    res = h.check(req(qty="101"))
    denied(res, "max_position_pct_equity")
    assert res.denial.unit == "%"  # type: ignore[union-attr]


def test_gross_notional_cap_per_strategy() -> None:
    h = Harness({"strategies": {"bot1": {"max_gross_notional": 3_000.0}}})
    h.trade(Side.BUY, "10", "100")
    h.trade(Side.SELL, "10", "100", symbol="MSFT")  # short: gross adds, net cancels
    assert isinstance(h.check(req(qty="10")), Approved)
    res = h.check(req(Side.SELL, "11", symbol="MSFT"))
    denied(res, "max_gross_notional")
    assert res.denial.value == 3_100  # type: ignore[union-attr]


def test_net_notional_cap_per_strategy() -> None:
    h = Harness({"strategies": {"bot1": {"max_net_notional": 2_000.0}}})
    h.trade(Side.BUY, "15", "100")
    h.trade(Side.SELL, "10", "100", symbol="MSFT")
    assert isinstance(h.check(req(qty="15")), Approved)  # net 2,000
    denied(h.check(req(qty="16")), "max_net_notional")
    assert isinstance(h.check(req(Side.SELL, "25", symbol="MSFT")), Approved)  # net -2,000
    denied(h.check(req(Side.SELL, "26", symbol="MSFT")), "max_net_notional")


# --- order flow ----------------------------------------------------------------------------


def test_max_open_orders_frees_on_cancel() -> None:
    h = Harness({"strategies": {"bot1": {"max_open_orders": 2}}})
    h.place(req(limit="99"))
    _, c2 = h.place(req(limit="98"))
    denied(h.check(req(limit="97")), "max_open_orders")
    assert isinstance(h.check(req(limit="97", bot="bot2")), Approved)  # other scope key
    h.cancel(c2)
    assert isinstance(h.check(req(limit="97")), Approved)


@pytest.mark.parametrize(("section", "key", "scope"), [
    ("strategies", "bot1", Scope.STRATEGY), ("accounts", "acct1", Scope.ACCOUNT)])
def test_order_rate_throttle_per_bot_and_account(section: str, key: str, scope: Scope) -> None:
    h = Harness({section: {key: {"max_orders_per_s": 3}}})
    for _ in range(3):
        assert isinstance(h.place(req())[0], Approved)
        h.advance(0.1)
    res = h.check(req())
    denied(res, "order_rate")
    assert res.denial.scope is scope and res.denial.unit == "orders/s"  # type: ignore[union-attr]
    h.advance(0.8)  # the first order leaves the 1-s window
    assert isinstance(h.check(req()), Approved)


def test_order_rate_spike_halts_strategy() -> None:
    h = Harness({"global": {"order_spike_factor": 5.0, "order_spike_min_baseline": 0.25,
                            "order_spike_halflife_s": 10.0}})
    for _ in range(60):  # trailing normal -> ~1 order/s, so a spike is > ~5 in one second
        assert isinstance(h.place(req())[0], Approved)
        h.advance(1)
    for _ in range(4):
        assert isinstance(h.place(req())[0], Approved)
    res = h.check(req())
    denied(res, "order_spike")
    assert res.denial.trip is TradingState.HALTED and res.denial.severity is Severity.P3  # type: ignore[union-attr]
    assert h.engine.states.get(Scope.STRATEGY, "bot1") is TradingState.HALTED
    h.advance(60)
    denied(h.check(req()), "trading_state")  # stays halted until an operator resumes


def test_max_trades_per_day_resets_next_day() -> None:
    h = Harness({"symbols": {"AAPL": {"max_trades_per_day": 2}}})
    h.place(req())
    h.place(req())
    denied(h.check(req()), "max_trades_per_day")
    h.advance(86_400)
    assert isinstance(h.check(req()), Approved)


@pytest.mark.parametrize("section", ["global", "symbols"])
def test_cooldown_between_trades(section: str) -> None:
    over = ({"global": {"trade_cooldown_s": 2.0}} if section == "global"
            else {"symbols": {"AAPL": {"trade_cooldown_s": 2.0}}})
    h = Harness(over)
    h.place(req())
    h.advance(1.999)
    res = h.check(req())
    denied(res, "trade_cooldown")
    if section == "symbols":
        assert isinstance(h.check(req(symbol="MSFT")), Approved)
    else:
        denied(h.check(req(symbol="MSFT")), "trade_cooldown")
    h.advance(0.001)
    assert isinstance(h.check(req()), Approved)


def test_duplicate_order_guard() -> None:
    h = Harness({"global": {"duplicate_window_s": 1.0}})
    h.place(req(qty="10"))
    h.advance(0.5)
    denied(h.check(req(qty="10")), "duplicate_order")
    for other in (req(qty="11"), req(Side.SELL, "10"), req(qty="10", bot="bot2"),
                  req(qty="10", symbol="MSFT")):
        assert isinstance(h.check(other), Approved)
    h.advance(0.5)
    assert isinstance(h.check(req(qty="10")), Approved)


# --- trading states ------------------------------------------------------------------------


def test_reducing_state_admits_only_exposure_reducing_orders() -> None:
    h = Harness()
    h.trade(Side.BUY, "10", "100")
    h.engine.states.escalate(Scope.ACCOUNT, "acct1", TradingState.REDUCING, "test", 0)
    res = h.check(req(Side.BUY, "1"))
    denied(res, "trading_state")
    assert "REDUCING" in res.denial.message  # type: ignore[union-attr]
    assert isinstance(h.check(req(Side.SELL, "10")), Approved)
    denied(h.check(req(Side.SELL, "11")), "trading_state")  # would flip short


@pytest.mark.parametrize(("scope", "key"), [
    (Scope.GLOBAL, ""), (Scope.ACCOUNT, "acct1"), (Scope.STRATEGY, "bot1"), (Scope.SYMBOL, "AAPL")])
def test_halted_scope_denies_everything_until_operator_resume(scope: Scope, key: str) -> None:
    from qtd.errors import ConfigError

    h = Harness()
    h.trade(Side.BUY, "10", "100")
    h.engine.states.escalate(scope, key, TradingState.HALTED, "test", 0)
    denied(h.check(req(Side.SELL, "1")), "trading_state")
    h.advance(86_400 * 3)
    denied(h.check(req(Side.SELL, "1")), "trading_state")  # never resumes by itself
    with pytest.raises(ConfigError):
        h.engine.resume(scope, key, operator="", reason="fixed")
    with pytest.raises(ConfigError):
        h.engine.resume(scope, key, operator="alice", reason=" ")
    change = h.engine.resume(scope, key, operator="alice", reason="root cause fixed")
    assert change is not None and change.operator == "alice" and change.old is TradingState.HALTED
    assert isinstance(h.check(req(Side.SELL, "1")), Approved)


def test_other_scopes_are_unaffected_by_a_halt() -> None:
    h = Harness()
    h.engine.states.escalate(Scope.STRATEGY, "bot1", TradingState.HALTED, "t", 0)
    assert isinstance(h.check(req(bot="bot2")), Approved)
    h.engine.states.escalate(Scope.SYMBOL, "MSFT", TradingState.HALTED, "t", 0)
    assert isinstance(h.check(req(bot="bot2", symbol="AAPL")), Approved)
    denied(h.check(req(bot="bot2", symbol="MSFT")), "trading_state")


def test_denial_records_nothing() -> None:
    h = Harness({"strategies": {"bot1": {"max_orders_per_s": 1, "max_order_qty": 5.0}}})
    for _ in range(5):
        denied(h.check(req(qty="6")), "max_order_qty")
    assert isinstance(h.check(req(qty="5")), Approved)


# --- every control on at every scope: each scope's flow and position limits still bind -----

LOOSE = {
    "max_order_qty": 1e6, "max_order_notional": 1e9, "max_position_qty": 1e7,
    "max_position_notional": 1e10, "max_position_pct_equity": 100.0,
    "max_open_orders": 100_000, "max_orders_per_s": 100_000, "max_trades_per_day": 10**9,
    "trade_cooldown_s": 1e-6, "price_collar_bps": 500.0, "max_data_age_s": 3600.0,
}
SCOPES = [("global", None, Scope.GLOBAL, ""), ("accounts", "acct1", Scope.ACCOUNT, "acct1"),
          ("strategies", "bot1", Scope.STRATEGY, "bot1"), ("symbols", "AAPL", Scope.SYMBOL, "AAPL")]
TIGHT = [({"max_open_orders": 1}, "max_open_orders"), ({"max_orders_per_s": 1}, "order_rate"),
         ({"max_trades_per_day": 1}, "max_trades_per_day"),
         ({"trade_cooldown_s": 10.0}, "trade_cooldown"),
         ({"max_position_qty": 15.0, "max_order_qty": 15.0}, "max_position_qty")]


@pytest.mark.parametrize(("section", "key", "scope", "scope_key"), SCOPES)
@pytest.mark.parametrize(("tight", "check"), TIGHT)
def test_each_scope_limit_binds_with_every_control_on(
    section: str, key: str | None, scope: Scope, scope_key: str, tight: dict, check: str
) -> None:
    every = {"global": dict(LOOSE), "accounts": {"acct1": dict(LOOSE)},
             "strategies": {"bot1": dict(LOOSE)}, "symbols": {"AAPL": dict(LOOSE)}}
    table = every["global"] if key is None else every[section][key]
    table.update(tight)
    h = Harness(every)
    assert isinstance(h.place(req(limit="99"))[0], Approved)  # rests: open, counted
    h.advance(0.001)
    res = h.check(req(limit="99"))
    denied(res, check)
    assert (res.denial.scope, res.denial.scope_key) == (scope, scope_key)  # type: ignore[union-attr]
