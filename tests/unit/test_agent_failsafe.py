"""Leader fail-safe policy and PnL snapshots (pure logic, no I/O)."""

from __future__ import annotations

from decimal import Decimal

from qtd.agent.telemetry import FailSafe, pnl_snapshots
from qtd.clock import SimClock
from qtd.events import Scope, TradingState
from qtd.projections import Projections
from qtd.risk import RiskEngine, parse_risk_config
from qtd.risk.trading_states import TradingStates
from tests.factories import fill, intent

G = Scope.GLOBAL


def test_before_any_heartbeat_the_leader_counts_as_absent_only_after_the_timeout() -> None:
    states = TradingStates("n")
    fs = FailSafe("REDUCING", 5.0, states, started=100.0)
    assert fs.evaluate(104.9, 0, False) is None and states.get(G) is TradingState.ACTIVE
    change = fs.evaluate(105.1, 1, False)
    assert change is not None and change.new is TradingState.REDUCING
    assert change.operator == "failsafe" and states.get(G) is TradingState.REDUCING
    assert fs.evaluate(106.0, 2, False) is None  # applied once


def test_leader_back_restores_active_unless_a_kill_is_set() -> None:
    states = TradingStates("n")
    fs = FailSafe("REDUCING", 1.0, states, started=0.0)
    fs.on_leader_heartbeat(0.5)
    assert fs.evaluate(1.0, 0, False) is None
    assert fs.evaluate(2.0, 0, False) is not None  # 1.5 s silence
    fs.on_leader_heartbeat(2.1)
    assert fs.evaluate(2.2, 0, kill_active=True) is None
    assert states.get(G) is TradingState.REDUCING  # kill set: stays
    back = fs.evaluate(2.3, 0, kill_active=False)
    assert back is not None and back.new is TradingState.ACTIVE
    assert states.get(G) is TradingState.ACTIVE


def test_a_halt_set_by_someone_else_is_never_lifted_by_the_failsafe() -> None:
    states = TradingStates("n")
    fs = FailSafe("REDUCING", 1.0, states, started=0.0)
    assert fs.evaluate(2.0, 0, False) is not None
    states.escalate(G, "", TradingState.HALTED, "kill switch", 0)
    fs.on_leader_heartbeat(3.0)
    assert fs.evaluate(3.1, 0, False) is None
    assert states.get(G) is TradingState.HALTED


def test_policy_none_only_reports() -> None:
    states = TradingStates("n")
    fs = FailSafe("NONE", 1.0, states, started=0.0)
    assert fs.evaluate(5.0, 0, False) is None and fs.absent
    assert states.get(G) is TradingState.ACTIVE


def test_pnl_snapshots_per_bot_at_the_engines_marks() -> None:
    proj = Projections()
    cfg = parse_risk_config({"accounts": {"acct1": {"equity": 1e6}}, "strategy_defaults": {},
                             "symbols": {"AAPL": {}}})
    risk = RiskEngine(cfg, proj, SimClock(0), "node-a")
    for ev in (intent("c1", qty="10"), fill("c1", "t1", qty="10", price="100",
                                             commission="1")):
        proj.apply(ev)
    risk.on_market_data("AAPL", Decimal("103"), 1)
    snaps = {s.bot: s for s in pnl_snapshots(proj, risk, "node-a", 10**18,
                                             {"bot1": "acct1", "idle": "acct1"})}
    assert snaps["bot1"].unrealized == Decimal(30) and snaps["bot1"].realized == Decimal(-1)
    assert snaps["bot1"].fees == Decimal(1) and snaps["bot1"].trading_day == "2001-09-09"
    assert snaps["idle"].realized == 0 and snaps["idle"].account == "acct1"
