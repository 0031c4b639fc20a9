"""What an agent tells the leader about each bot besides PnL: its stage, its state and every
risk limit that binds it with the amount in use, measured on a real RiskEngine driven the way
the router drives it (check, bind, intent, fills)."""

from __future__ import annotations

import pytest

from qtd.agent.supervisor import BotSlot
from qtd.agent.telemetry import StateWhy, bot_limits, bot_state, pnl_snapshots, state_why
from qtd.events import LimitUsage, PnLSnapshot, Scope, Side, TradingState, from_json, to_json
from qtd.runner import BotSpec, BotState
from qtd.workers.protocol import StrategyRef
from tests.unit.test_risk_harness import NODE, Harness, req

LIMITS = {
    "accounts": {"acct1": {"max_position_pct_equity": 20.0, "max_open_orders": 50,
                           "max_daily_loss": 1_000.0}},
    "strategies": {"bot1": {"max_position_qty": 100.0, "max_position_notional": 20_000.0,
                            "max_gross_notional": 40_000.0, "max_net_notional": 30_000.0,
                            "max_open_orders": 4, "max_orders_per_s": 5,
                            "max_trades_per_day": 10}},
    "symbols": {"AAPL": {"max_position_qty": 1_000.0}},
    "breakers": {"daily_loss": {"max_loss_pct": 2.0}},
}


def _by_name(limits: list[LimitUsage]) -> dict[tuple[Scope, str], LimitUsage]:
    return {(u.scope, u.name): u for u in limits}


def test_limits_in_use_after_fills_open_orders_and_a_loss() -> None:
    h = Harness(LIMITS)
    h.trade(Side.BUY, "30", "100")                       # 30 AAPL filled at 100
    h.place(req(Side.BUY, "20", limit="99"))              # + 20 open: worst case 50 long
    h.trade(Side.BUY, "10", "200", symbol="MSFT")         # 10 MSFT at 200
    h.mark("AAPL", "90")                                  # AAPL falls: 300 lost today
    now = h.clock.now_ns()
    got = _by_name(bot_limits(h.engine, "bot1", "acct1", ("AAPL", "MSFT"), now))
    s, a, y = Scope.STRATEGY, Scope.ACCOUNT, Scope.SYMBOL
    expect = {
        (s, "max_position_qty"): (100.0, 50.0, "units", "bot1"),          # AAPL worst case
        (s, "max_position_notional"): (20_000.0, 4_500.0, "currency", "bot1"),  # 50 x 90
        (s, "max_gross_notional"): (40_000.0, 6_500.0, "currency", "bot1"),  # + 10 x 200
        (s, "max_net_notional"): (30_000.0, 6_500.0, "currency", "bot1"),
        (s, "max_open_orders"): (4.0, 1.0, "orders", "bot1"),
        (s, "max_orders_per_s"): (5.0, 3.0, "orders/s", "bot1"),          # same instant
        (s, "max_trades_per_day"): (10.0, 3.0, "orders", "bot1"),
        (a, "max_position_pct_equity"): (20.0, 4_500 / 999_700 * 100, "%", "acct1"),
        (a, "max_open_orders"): (50.0, 1.0, "orders", "acct1"),
        (a, "max_daily_loss"): (1_000.0, 300.0, "currency", "acct1"),
        (a, "max_daily_loss_pct"): (2.0, 0.03, "%", "acct1"),             # of 1e6 opening
        (y, "max_position_qty"): (1_000.0, 50.0, "units", "AAPL"),
    }
    assert set(got) == set(expect)
    for k, (limit, used, unit, key) in expect.items():
        u = got[k]
        assert (u.limit, u.unit, u.key) == (limit, unit, key), k
        assert u.used == pytest.approx(used), k
    h.advance(1.5)  # the 1-second window empties; the day's count stays
    later = _by_name(bot_limits(h.engine, "bot1", "acct1", ("AAPL", "MSFT"), h.clock.now_ns()))
    assert later[(s, "max_orders_per_s")].used == 0
    assert later[(s, "max_trades_per_day")].used == 3


def test_a_bot_without_positions_reports_zero_use_and_creates_no_state() -> None:
    h = Harness(LIMITS)
    before = (dict(h.engine.exposures), dict(h.engine.counters))
    got = bot_limits(h.engine, "bot1", "acct1", ("AAPL",), h.clock.now_ns())
    assert got and all(u.used == 0 for u in got)
    assert (dict(h.engine.exposures), dict(h.engine.counters)) == before


def test_state_is_the_worst_of_the_bot_scopes_and_its_runner() -> None:
    h = Harness(LIMITS)
    now = h.clock.now_ns()
    assert bot_state(h.engine, "bot1", "acct1", ("AAPL",), BotState.RUNNING, now) == "ACTIVE"
    h.engine.states.escalate(Scope.SYMBOL, "AAPL", TradingState.REDUCING, "test", now)
    assert bot_state(h.engine, "bot1", "acct1", ("AAPL",), BotState.RUNNING, now) == "REDUCING"
    assert bot_state(h.engine, "bot2", "acct1", ("MSFT",), BotState.RUNNING, now) == "ACTIVE"
    h.engine.halt(Scope.ACCOUNT, "acct1", "drill")
    assert bot_state(h.engine, "bot1", "acct1", ("AAPL",), BotState.RUNNING, now) == "HALTED"
    assert bot_state(h.engine, "bot2", "acct2", ("MSFT",), BotState.STOPPED, now) == "STOPPED"


def test_state_says_which_scope_or_the_runner_sets_it() -> None:
    h = Harness(LIMITS)
    now = h.clock.now_ns()
    assert state_why(h.engine, "bot1", "acct1", ("AAPL",), BotState.RUNNING, "", now) == \
        StateWhy("ACTIVE")
    h.engine.states.escalate(Scope.SYMBOL, "AAPL", TradingState.REDUCING, "test", now)
    h.engine.states.escalate(Scope.STRATEGY, "bot1", TradingState.HALTED, "breaker", now)
    assert state_why(h.engine, "bot1", "acct1", ("AAPL",), BotState.RUNNING, "", now) == \
        StateWhy("HALTED", "STRATEGY", "bot1")
    assert state_why(h.engine, "bot2", "acct1", ("AAPL",), BotState.RUNNING, "", now) == \
        StateWhy("REDUCING", "SYMBOL", "AAPL")
    assert state_why(h.engine, "bot2", "acct1", ("MSFT",), BotState.HALTED, "boom", now) == \
        StateWhy("HALTED", "RUNNER", "bot2", "boom")


def test_snapshot_carries_stage_state_and_limits_over_json() -> None:
    h = Harness(LIMITS)
    h.trade(Side.BUY, "30", "100")
    spec = BotSpec(name="bot1", account="acct1", venue="paper", symbols=("AAPL",))
    slot = BotSlot(spec, StrategyRef(file="x.py", source_hash="s", strategy="S", params={},
                                     content_hash="hash"), stage="shadow")
    slot.state = BotState.RUNNING
    snaps = pnl_snapshots(h.proj, h.engine, NODE, h.clock.now_ns(),
                          {"bot1": "acct1", "idle": "acct1"}, {"bot1": slot})
    bot1, idle = sorted(snaps, key=lambda s: s.bot)
    assert (bot1.stage, bot1.state) == ("shadow", "ACTIVE")
    assert bot1.limits == bot_limits(h.engine, "bot1", "acct1", ("AAPL",), h.clock.now_ns())
    assert len(bot1.limits) == 12 and bot1.limits[0].used == 30
    assert (idle.stage, idle.state, idle.limits) == ("", "", [])  # no slot: not reported
    back = from_json(to_json(bot1))
    assert isinstance(back, PnLSnapshot) and back.limits == bot1.limits
    old = to_json(bot1).replace(b',"stage":"shadow"', b"")
    assert from_json(old).stage == ""  # type: ignore[union-attr]  # old agents still decode
