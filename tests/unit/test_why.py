"""Why is a bot halted: a real FleetView fed the events its agents store and publish gives
every bot one effective state with its causes and since when; the page, the live frame, the
terminal table and /metrics all say the same (issue 22, item 5)."""

from __future__ import annotations

import io
from decimal import Decimal

from rich.console import Console

from qtd.clock import SimClock
from qtd.events import (
    Heartbeat,
    OrderDenied,
    PnLSnapshot,
    RiskBreach,
    Scope,
    Severity,
    Side,
    TradingState,
    TradingStateChanged,
)
from qtd.fleetsnapshot import ActiveKill, BotView, KillView
from qtd.leader.caps import FleetCaps
from qtd.leader.config import CapsConfig, LossCap
from qtd.leader.status import FleetStatus
from qtd.leader.view import FleetView
from qtd.projections import TradingDay
from qtd.up.summary import FleetWatch, render, rich_view, rows
from qtd.web import pages
from qtd.web.live import tick_frame
from qtd.web.prom import SnapshotCollector
from tests.factories import NODE, fill

T0 = 1_700_000_000_000_000_000
S = 1_000_000_000


def _view() -> FleetView:
    view = FleetView(trading_day=TradingDay(), capital=Decimal(100_000), currency="USD",
                     clock=SimClock(T0 + 60 * S))
    view.on_heartbeat(Heartbeat(node=NODE, ts_event=T0, ts_init=T0, role="agent"))
    return view


def _tick(view: FleetView, bot: str, state: str = "ACTIVE", scope: str = "",
          key: str = "", reason: str = "") -> None:
    now = view.clock.now_ns()
    view.on_pnl(PnLSnapshot(node=NODE, bot=bot, ts_event=now, ts_init=now, account="acct1",
                            realized=Decimal(0), unrealized=Decimal(0), fees=Decimal(0),
                            state=state, state_scope=scope, state_key=key,
                            state_reason=reason))


def _breaker_halt(view: FleetView, bot: str, ts: int) -> None:
    """What an agent stores when consecutive_losses trips: the breach, then the change."""
    view.apply(RiskBreach(node=NODE, bot=bot, ts_event=ts, ts_init=ts,
                          check="consecutive_losses", scope=Scope.STRATEGY, scope_key=bot,
                          limit=3.0, value=3.0, unit="trades", severity=Severity.P3,
                          action="halted", message="circuit breaker consecutive_losses"))
    view.apply(TradingStateChanged(
        node=NODE, bot=bot, ts_event=ts, ts_init=ts, scope=Scope.STRATEGY, scope_key=bot,
        old=TradingState.ACTIVE, new=TradingState.HALTED,
        reason="circuit breaker consecutive_losses: 3 trades vs limit 3 trades"))


def _bot(view: FleetView, bot: str) -> BotView:
    return next(b for b in view.snapshot().bots if b.bot == bot)


def test_a_breaker_halt_names_the_breaker_its_reading_and_since_when() -> None:
    view = _view()
    _breaker_halt(view, "momo", T0 + 10 * S)
    _tick(view, "momo", "HALTED", "STRATEGY", "momo")
    b = _bot(view, "momo")
    assert b.effective_state == "HALTED" and b.since_ns == T0 + 10 * S
    (c,) = b.causes
    assert (c.kind, c.check, c.value, c.limit, c.unit, c.scope, c.key, c.node) == (
        "breaker", "consecutive_losses", 3.0, 3.0, "trades", "STRATEGY", "momo", NODE)
    # an order the engine then denies for the halted state does not replace the cause
    view.apply(RiskBreach(node=NODE, bot="momo", ts_event=T0 + 11 * S, ts_init=T0 + 11 * S,
                          check="trading_state", scope=Scope.STRATEGY, scope_key="momo",
                          limit=0.0, value=0.0, action="deny"))
    assert _bot(view, "momo").causes[0].check == "consecutive_losses"
    # resumed: ACTIVE, no cause left
    view.apply(TradingStateChanged(
        node=NODE, bot="momo", ts_event=T0 + 20 * S, ts_init=T0 + 20 * S,
        scope=Scope.STRATEGY, scope_key="momo", old=TradingState.HALTED,
        new=TradingState.ACTIVE, reason="fixed", operator="alice"))
    _tick(view, "momo")
    b = _bot(view, "momo")
    assert (b.effective_state, b.causes, b.since_ns) == ("ACTIVE", [], 0)


def test_a_global_kill_halts_every_bot_with_the_kill_as_cause_not_active() -> None:
    view = _view()
    _tick(view, "momo")  # the agent has not applied the kill yet: it still says ACTIVE
    view.kill = KillView(active=True, kills=[ActiveKill(
        kill_id="k-1", scope="GLOBAL", reason="test", operator="alice", ts_ns=T0 + 5 * S)])
    b = _bot(view, "momo")
    assert b.effective_state == "HALTED" and b.since_ns == T0 + 5 * S
    assert [(c.kind, c.kill_id, c.operator, c.reason) for c in b.causes] == [
        ("kill", "k-1", "alice", "test")]
    # the agent applies it (its GLOBAL scope, with the kill-switch breach): still one cause
    ts = T0 + 6 * S
    view.apply(RiskBreach(node=NODE, ts_event=ts, ts_init=ts, check="kill_switch",
                          scope=Scope.GLOBAL, scope_key="", limit=0.0, value=1.0,
                          severity=Severity.P1, action="halted"))
    view.apply(TradingStateChanged(node=NODE, ts_event=ts, ts_init=ts, scope=Scope.GLOBAL,
                                   scope_key="", old=TradingState.ACTIVE,
                                   new=TradingState.HALTED, reason="kill switch: test",
                                   operator="alice"))
    view.on_heartbeat(Heartbeat(node=NODE, ts_event=ts, ts_init=ts, role="agent",
                                state=TradingState.HALTED))
    _tick(view, "momo", "HALTED", "GLOBAL", "")
    assert [c.kill_id for c in _bot(view, "momo").causes] == ["k-1"]
    states = {(s.scope, s.key): s.state for s in view.snapshot().states}
    assert states == {("GLOBAL", ""): "HALTED", ("NODE", NODE): "HALTED"}


def test_a_state_only_the_agent_reports_says_so_and_a_runner_halt_says_why() -> None:
    view = _view()
    _tick(view, "momo", "HALTED", "ACCOUNT", "acct1")
    (c,) = _bot(view, "momo").causes
    assert (c.kind, c.scope, c.key) == ("agent", "ACCOUNT", "acct1")
    assert "has not reached the leader" in c.reason
    _tick(view, "boom", "HALTED", "RUNNER", "boom", "RuntimeError in on_bar: boom")
    b = _bot(view, "boom")
    assert (b.effective_state, b.causes[0].kind, b.causes[0].reason) == (
        "HALTED", "runner", "RuntimeError in on_bar: boom")


def test_a_store_fault_page_holds_the_node_until_global_is_active() -> None:
    view = _view()
    _tick(view, "momo")
    ts = T0 + 30 * S
    view.on_agent_page(RiskBreach(node=NODE, ts_event=ts, ts_init=ts, check="store_fault",
                                  scope=Scope.GLOBAL, scope_key="", limit=0.0, value=0.002,
                                  unit="s detect-to-halt", severity=Severity.P1,
                                  action="halted", message="event store cannot write: disk"))
    b = _bot(view, "momo")
    assert b.effective_state == "HALTED"
    assert (b.causes[0].kind, b.causes[0].check, b.causes[0].reason) == (
        "storage", "store_fault", "event store cannot write: disk")
    view.apply(TradingStateChanged(node=NODE, ts_event=ts + S, ts_init=ts + S,
                                   scope=Scope.GLOBAL, scope_key="", old=TradingState.HALTED,
                                   new=TradingState.ACTIVE, reason="ok", operator="bob"))
    assert _bot(view, "momo").effective_state == "ACTIVE"


def test_deny_counts_by_check_most_frequent_first() -> None:
    view = _view()
    for n, check in enumerate(["max_position_qty"] * 3 + ["trading_state"] * 5 + ["stale"]):
        ts = T0 + n
        view.apply(OrderDenied(node=NODE, bot="momo", ts_event=ts, ts_init=ts,
                               account="acct1", symbol="SPY", side=Side.BUY, qty=Decimal(1),
                               check=check, message="no"))
    b = _bot(view, "momo")
    assert [(d.check, d.count) for d in b.deny_reasons] == [
        ("trading_state", 5), ("max_position_qty", 3), ("stale", 1)]
    assert b.agg.denials == 9


def _halted_fleet() -> FleetView:
    view = _view()
    _breaker_halt(view, "momo", T0 + 10 * S)
    _tick(view, "momo", "HALTED", "STRATEGY", "momo")
    _tick(view, "idle")
    return view


def test_page_frame_table_and_metrics_say_which_breaker() -> None:
    view = _halted_fleet()
    snap = view.snapshot()
    html = pages.render("panels/bots.html", snap=snap, controls=False)
    row = html[html.index('<tr data-bot="node-a/momo"'):]
    row = row[:row.index("</tr>")]
    assert 'data-k="bot.state">HALTED<' in row
    assert "breaker consecutive_losses 3 vs limit 3 trades" in row and "since" in row
    frame = tick_frame(snap).bots["node-a/momo"]
    assert frame.state == "HALTED" and "consecutive_losses" in frame.why
    watch = FleetWatch(None, "qtd", {NODE: ["momo", "idle"]})  # type: ignore[arg-type]
    watch.snapshot = snap
    watch.states.update({(NODE, "momo"): "ACTIVE", (NODE, "idle"): "ACTIVE"})  # stale
    table = rows(watch)
    assert table[0][2] == "HALTED" and "consecutive_losses" in table[0][7]
    assert table[1][2] == "ACTIVE" and table[1][7] == ""
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(rich_view(watch, started=0.0))
    assert "consecutive_losses" in out.getvalue()
    assert "consecutive_losses" in render(watch, started=0.0)
    metrics = {(m.name, tuple(sorted(s.labels.items()))): s.value
               for m in SnapshotCollector(_Src(view)).collect() for s in m.samples}
    key = ("qtd_bot_trading_state", (("bot", "momo"), ("cause", "consecutive_losses"),
                                     ("node", NODE)))
    assert metrics[key] == 3.0
    assert metrics[("qtd_trading_state", (("key", "momo"), ("scope", "STRATEGY")))] == 3.0
    assert metrics[("qtd_trading_state", (("key", ""), ("scope", "GLOBAL")))] == 0.0


def test_table_under_a_global_kill_shows_bots_halted_like_their_node() -> None:
    view = _view()
    _tick(view, "momo")
    view.on_heartbeat(Heartbeat(node=NODE, ts_event=T0, ts_init=T0, role="agent",
                                state=TradingState.HALTED))
    view.kill = KillView(active=True, kills=[ActiveKill(
        kill_id="k-9", scope="GLOBAL", reason="drill", operator="alice", ts_ns=T0)])
    watch = FleetWatch(None, "qtd", {NODE: ["momo"]})  # type: ignore[arg-type]
    watch.snapshot = view.snapshot()
    watch.states[(NODE, "momo")] = "ACTIVE"  # its STRATEGY scope: never killed itself
    bot, node = rows(watch)
    assert (bot[2], node[2]) == ("HALTED", "HALTED")
    assert "kill k-9 GLOBAL by alice: drill" in bot[7] and "k-9" in node[7]


def test_snapshot_caps_come_from_the_same_pass_as_its_totals() -> None:
    """The page once showed PnL today -6,932.44 beside a daily_loss cap of 6,449.04: the
    caps were measured by the leader's check loop, the totals at render time."""
    view = _view()
    caps = FleetCaps(CapsConfig(daily_loss=LossCap(limit=1_000_000.0)), view.clock)
    caps.evaluate(view)  # the check loop ran before the loss
    status = FleetStatus(view, caps, alerts=list, ingest_stats=dict)  # as the leader reads
    view.apply(fill("c1", "t1", qty="10", price="100", bot="momo", symbol="SPY",
                    side=Side.BUY, ts=T0 + S))
    view.apply(fill("c2", "t2", qty="10", price="90", bot="momo", symbol="SPY",
                    side=Side.SELL, ts=T0 + 2 * S))
    snap = status.snapshot()
    (cap,) = [c for c in snap.caps if c.name == "daily_loss"]
    assert snap.totals.pnl_today < 0
    assert cap.value == -snap.totals.pnl_today


class _Src:
    def __init__(self, view: FleetView) -> None:
        self.view = view

    def snapshot(self):  # type: ignore[no-untyped-def]
        return self.view.snapshot()

    def quality(self) -> None:  # no quality monitor: no execution gauges
        return None
