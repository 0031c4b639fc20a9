"""Circuit breakers trip to their configured state, with events, and HALTED needs an operator."""

from __future__ import annotations

import pytest

from qtd.errors import ConfigError
from qtd.events import (
    RiskBreach,
    Scope,
    Severity,
    Side,
    TradingState,
    TradingStateChanged,
    from_json,
    to_json,
)
from qtd.risk import Approved
from tests.unit.test_risk_harness import Harness, denied, req

HALTED, REDUCING, ACTIVE = TradingState.HALTED, TradingState.REDUCING, TradingState.ACTIVE


def round_trip(h: Harness, buy: str, sell: str, bot: str = "bot1") -> None:
    h.trade(Side.BUY, "10", buy, bot=bot)
    h.advance(1)
    h.trade(Side.SELL, "10", sell, bot=bot)
    h.advance(1)


def breaches(h: Harness) -> list[RiskBreach]:
    return [e for e in h.engine.drain_events() if isinstance(e, RiskBreach)]


def test_daily_loss_in_currency_halts_the_account() -> None:
    h = Harness({"accounts": {"acct1": {"equity": 100_000.0, "max_daily_loss": 1_000.0}}})
    h.trade(Side.BUY, "100", "100")
    h.mark("AAPL", "90.00")  # -1,000: at the limit, not above
    assert h.engine.states.get(Scope.ACCOUNT, "acct1") is ACTIVE
    assert not h.engine.has_events()  # nothing queued below the limit
    h.mark("AAPL", "89.99")
    assert h.engine.states.get(Scope.ACCOUNT, "acct1") is HALTED
    assert h.engine.has_events()  # the router flushes only then (once per tick)
    events = h.engine.drain_events()
    assert not h.engine.has_events()
    b = next(e for e in events if isinstance(e, RiskBreach))
    assert (b.check, b.scope, b.limit, b.unit, b.severity) == (
        "daily_loss", Scope.ACCOUNT, 1000.0, "currency", Severity.P2)
    assert b.value == pytest.approx(1001.0)
    change = next(e for e in events if isinstance(e, TradingStateChanged))
    assert (change.old, change.new) == (ACTIVE, HALTED) and "daily_loss" in change.reason
    denied(h.check(req(Side.SELL, "100")), "trading_state")
    assert isinstance(h.check(req(account="acct2")), Approved)


def test_daily_loss_pct_of_day_open_equity_and_configured_trip_state() -> None:
    h = Harness({"accounts": {"acct1": {"equity": 100_000.0, "max_daily_loss_pct": 2.0}},
                 "breakers": {"daily_loss": {"trip": "REDUCING"}}})
    h.trade(Side.BUY, "100", "100")
    h.mark("AAPL", "80.01")
    assert h.engine.states.get(Scope.ACCOUNT, "acct1") is ACTIVE
    h.mark("AAPL", "79.99")
    assert h.engine.states.get(Scope.ACCOUNT, "acct1") is REDUCING
    assert [b.check for b in breaches(h)] == ["daily_loss_pct"]
    assert isinstance(h.check(req(Side.SELL, "100")), Approved)  # reducing allowed


def test_daily_loss_measures_from_the_day_open() -> None:
    h = Harness({"accounts": {"acct1": {"equity": 100_000.0, "max_daily_loss": 1_000.0}}})
    h.trade(Side.BUY, "100", "100")
    h.mark("AAPL", "95")  # -500 today
    h.advance(86_400)
    h.mark("AAPL", "95")  # new day opens at 99,500
    h.mark("AAPL", "88")  # -700 today (-1,200 overall)
    assert h.engine.states.get(Scope.ACCOUNT, "acct1") is ACTIVE
    h.mark("AAPL", "84.99")
    assert h.engine.states.get(Scope.ACCOUNT, "acct1") is HALTED


def test_drawdown_from_peak_halts_globally_by_default() -> None:
    h = Harness({"accounts": {"acct1": {"equity": 100_000.0}, "acct2": {"equity": 100_000.0}},
                 "breakers": {"drawdown": {"max_drawdown_pct": 10.0}}})
    h.trade(Side.BUY, "1000", "100")
    h.mark("AAPL", "140")  # total equity 240,000 = peak
    h.mark("AAPL", "117")  # 217,000: 9.58 % below peak
    assert h.engine.states.get(Scope.GLOBAL) is ACTIVE
    h.mark("AAPL", "115")  # 215,000: 10.4 %
    assert h.engine.states.get(Scope.GLOBAL) is HALTED
    (b,) = breaches(h)
    assert (b.check, b.scope, b.severity, b.unit) == ("drawdown", Scope.GLOBAL, Severity.P1, "%")
    denied(h.check(req(account="acct2", bot="bot2")), "trading_state")


def test_consecutive_losses_halt_the_strategy() -> None:
    h = Harness({"breakers": {"consecutive_losses": {"max_losses": 3}}})
    round_trip(h, "100", "99")
    round_trip(h, "100", "99")
    round_trip(h, "100", "101")  # a win resets the streak
    round_trip(h, "100", "99")
    round_trip(h, "100", "99")
    assert h.engine.states.get(Scope.STRATEGY, "bot1") is ACTIVE
    round_trip(h, "100", "99")
    assert h.engine.states.get(Scope.STRATEGY, "bot1") is HALTED
    (b,) = breaches(h)
    assert (b.check, b.value, b.severity) == ("consecutive_losses", 3.0, Severity.P3)
    assert isinstance(h.check(req(bot="bot2")), Approved)


def test_win_streak_cooldown_expires_by_itself() -> None:
    h = Harness({"breakers": {"win_streak": {"max_wins": 2, "cooldown_s": 60.0}}})
    round_trip(h, "100", "101")
    h.trade(Side.BUY, "10", "100")
    h.trade(Side.SELL, "5", "102")  # second winning (closing) trade
    assert h.engine.states.get(Scope.STRATEGY, "bot1") is REDUCING
    denied(h.check(req(Side.BUY, "1")), "trading_state")
    assert isinstance(h.check(req(Side.SELL, "5")), Approved)
    h.engine.drain_events()
    h.advance(60)
    assert not h.engine.has_events()
    assert isinstance(h.check(req(Side.BUY, "1")), Approved)
    assert h.engine.has_events()  # the expiry the check saw
    (change,) = h.engine.drain_events()
    assert isinstance(change, TradingStateChanged)
    assert (change.new, change.reason) == (ACTIVE, "cooldown expired")


def test_min_rolling_sharpe_reduces_the_strategy() -> None:
    h = Harness({"breakers": {"sharpe": {"min_sharpe": 0.0, "window_trades": 3}}})
    round_trip(h, "100", "101")
    round_trip(h, "100", "99.5")
    assert h.engine.states.get(Scope.STRATEGY, "bot1") is ACTIVE  # only 2 trades
    round_trip(h, "100", "99")  # PnL +10, -5, -10
    assert h.engine.states.get(Scope.STRATEGY, "bot1") is REDUCING
    assert breaches(h)[0].check == "min_sharpe"


def test_min_sharpe_at_zero_dispersion() -> None:
    """The Sharpe of identical trades is undefined (qtd.metrics): breakeven or identical
    winning trades never trip; identical losing trades (below any floor) do, with a finite
    value (the old -inf went out as JSON null, which the leader could not decode)."""
    cfg = {"breakers": {"sharpe": {"min_sharpe": 0.5, "window_trades": 3}}}
    for exit_price in ("100", "101"):  # flat, then identical wins: no trip
        h = Harness(cfg)
        for _ in range(4):
            round_trip(h, "100", exit_price)
        assert h.engine.states.get(Scope.STRATEGY, "bot1") is ACTIVE
        assert breaches(h) == []
    h = Harness(cfg)
    for _ in range(3):
        round_trip(h, "100", "99")
    assert h.engine.states.get(Scope.STRATEGY, "bot1") is REDUCING
    (b,) = breaches(h)
    assert (b.check, b.value, b.unit, b.limit) == ("min_sharpe", -10.0, "currency", 0.0)
    assert "each of the last 3 trades lost 10" in b.message
    assert from_json(to_json(b)) == b


def test_broker_error_rate_above_ten_percent_over_60s() -> None:
    h = Harness({"breakers": {"broker_errors": {"max_error_rate": 0.10, "min_requests": 10}}})
    for _ in range(9):
        h.engine.on_broker_result("acct1", True)
    h.engine.on_broker_result("acct1", False)  # 1 / 10 = 10 %: not above
    assert h.engine.states.get(Scope.ACCOUNT, "acct1") is ACTIVE
    h.advance(61)  # the window forgets those
    for _ in range(8):
        h.engine.on_broker_result("acct1", True)
    h.engine.on_broker_result("acct1", False)
    h.engine.on_broker_result("acct1", False)  # 2 / 10
    assert h.engine.states.get(Scope.ACCOUNT, "acct1") is REDUCING
    assert breaches(h)[0].check == "broker_error_rate"


def test_repeated_execution_throttle_halts_until_operator_resumes() -> None:
    h = Harness({"breakers": {"execution_throttle": {"max_fills": 5, "window_s": 60.0}}})
    _, cid = h.place(req(qty="60", limit="100"))
    for _ in range(5):
        h.fill(cid, qty="1")
        h.advance(1)
    assert h.engine.states.get(Scope.STRATEGY, "bot1") is ACTIVE
    h.fill(cid, qty="1")
    assert h.engine.states.get(Scope.STRATEGY, "bot1") is HALTED
    (b,) = breaches(h)
    assert (b.check, b.limit, b.value, b.unit) == ("repeated_execution", 5.0, 6.0, "fills")
    h.advance(3600)
    denied(h.check(req()), "trading_state")
    with pytest.raises(ConfigError):
        h.engine.resume(Scope.STRATEGY, "bot1", operator="", reason="")
    h.engine.resume(Scope.STRATEGY, "bot1", operator="bob", reason="deployment rolled back")
    assert isinstance(h.check(req(Side.SELL, "6")), Approved)


def test_breakers_only_escalate() -> None:
    h = Harness({"breakers": {"broker_errors": {"min_requests": 1}}})
    h.engine.states.escalate(Scope.ACCOUNT, "acct1", HALTED, "operator halt", 0)
    h.engine.on_broker_result("acct1", False)  # would trip REDUCING: must not lower HALTED
    assert h.engine.states.get(Scope.ACCOUNT, "acct1") is HALTED
    assert breaches(h) == []


@pytest.mark.parametrize("read", ["cell", "now", "cell_later"])
def test_account_equity_follows_every_fill_and_mark_across_symbols(read: str) -> None:
    """A mark re-values only its symbol's positions; after any sequence of fills (opening,
    adding, reducing, flipping) and marks on several symbols, bots and accounts, each
    account's equity is still configured equity + Σ (realized − fees + unrealized at the
    last marks) over its positions, re-derived here from the projections. Read through the
    cell a check holds (from the start, or only from step 300 on: the account is re-valued
    at every mark only once a reader holds its cell) or derived on demand (equity_now)."""
    import random
    from decimal import Decimal

    h = Harness({"global": {"duplicate_window_s": 0.0, "order_spike_factor": 0.0},
                 "breakers": {"drawdown": {"max_drawdown_pct": None}}})
    rng = random.Random(7)
    marks = {s: Decimal(100) for s in ("AAPL", "MSFT", "GME")}

    def expected(account: str) -> Decimal:
        eq = Decimal("1000000")
        for p in h.proj.positions.values():
            if p.account == account:
                eq += p.realized - p.fees + p.unrealized(marks[p.symbol])
        return eq

    for step in range(600):
        sym = rng.choice(list(marks))
        marks[sym] = Decimal(rng.randint(9000, 11000)) / 100
        if rng.random() < 0.3:
            side = rng.choice([Side.BUY, Side.SELL])
            h.trade(side, str(rng.randint(1, 30)), str(marks[sym]), symbol=sym,
                    bot=rng.choice(["bot1", "bot2"]), account=rng.choice(["acct1", "acct2"]))
        else:
            h.mark(sym, marks[sym])
        h.advance(1)
        for account in ("acct1", "acct2"):
            b = h.engine.breakers
            if read == "now" or (read == "cell_later" and step < 300):
                assert b.equity_now(account) == expected(account), step
            else:
                assert b.equity(account).value == expected(account), step
    assert sum(1 for p in h.proj.positions.values() if p.qty) >= 4  # several open at once


def test_only_configured_breakers_are_built_in_registry_order() -> None:
    from qtd.clock import SimClock
    from qtd.projections import Projections
    from qtd.risk import RiskEngine, load_risk_config
    from qtd.risk.breakers import BREAKER_NAMES
    from tests.unit.test_risk_config import SAMPLE

    h = Harness({})
    assert list(h.engine.breakers.enabled) == ["broker_errors"]  # the one on by default
    engine = RiskEngine(load_risk_config(SAMPLE), Projections(), SimClock(0), "n")
    assert tuple(engine.breakers.enabled) == BREAKER_NAMES


def test_the_page_reads_the_daily_loss_breakers_own_figure() -> None:
    h = Harness({"accounts": {"acct1": {"equity": 100_000.0, "max_daily_loss": 1_000.0,
                                        "max_daily_loss_pct": 2.0}}})
    h.trade(Side.BUY, "100", "100")
    h.mark("AAPL", "96")  # -400 today
    now = h.clock.now_ns()
    used = {u.name: (u.limit, u.used, u.unit, u.key)
            for u in h.engine.breakers.usage("bot1", "acct1", now)}
    assert used == {"max_daily_loss": (1000.0, 400.0, "currency", "acct1"),
                    "max_daily_loss_pct": (2.0, pytest.approx(0.4), "%", "acct1")}
    assert h.engine.breakers.usage("bot1", "acct2", now) == []  # no limit on acct2
