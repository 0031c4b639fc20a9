"""The leader's QualityMonitor with its real collaborators (AlertBook, FleetView, a real
fleet.db) on a simulated clock: alert lifecycle of surveillance findings and execution
thresholds, and the daily report's schedule across restarts (a recording sender stands in
for Apprise; delivery through Apprise itself is covered by test_quality_leader)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from qtd.aio import TaskSet
from qtd.clock import SimClock
from qtd.events import Event, Fill, OrderAccepted, OrderIntent, Severity, Side
from qtd.leader.alerts import AlertBook
from qtd.leader.fleetdb import FleetDB, Origin
from qtd.leader.view import FleetView
from qtd.projections import TradingDay
from qtd.quality.config import QualityConfig
from qtd.quality.daily import day_bounds
from qtd.quality.monitor import DAILY_META_KEY, QualityMonitor

S = 1_000_000_000
MS = 1_000_000
TD = TradingDay()
DAY = "2026-11-24"
START, END = day_bounds(DAY, TD)


class Recorder:
    """A page sender that records every call and fails the first ``fail`` ones."""

    def __init__(self, fail: int = 0) -> None:
        self.calls: list[tuple[str, str, str, Severity]] = []
        self.fail = fail

    async def __call__(self, url: str, title: str, body: str, severity: Severity) -> bool:
        self.calls.append((url, title, body, severity))
        if self.fail:
            self.fail -= 1
            return False
        return True


class Rig:
    def __init__(self, db: FleetDB, clock: SimClock, sender: Recorder, **cfg: Any) -> None:
        self.db, self.clock, self.sender = db, clock, sender
        self.tasks = TaskSet()
        view = FleetView(trading_day=TD, capital=Decimal(1_000_000), currency="USD",
                         clock=clock)
        self.alerts = AlertBook(view=view, db=db, notifier=None, clock=clock, tasks=self.tasks)
        self.mon = QualityMonitor(QualityConfig(eval_interval_s=1.0, **cfg), TD, clock)
        self.mon.retry_base_s = 0.01
        self.n = 0

    async def attach(self) -> Rig:
        await self.mon.attach(alerts=self.alerts, db=self.db, sender=self.sender,
                              urls=["json://127.0.0.1:9/daily"], tasks=self.tasks)
        return self

    async def ingest(self, *events: Event) -> None:
        items = []
        for ev in events:
            self.n += 1
            items.append((Origin("node-a", "inc", self.n), ev))
        fresh = await self.db.ingest(items, self.n)
        self.mon.on_events(fresh)

    async def settle(self) -> None:
        await self.tasks.drain(5.0)


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[FleetDB]:
    db = await FleetDB.open(tmp_path / "fleet.db")
    yield db
    await db.close()


def _trade(cid: str, bot: str, side: Side, ts: int, account: str = "acct",
           ack_ms: int = 1) -> list[Event]:
    b: dict[str, Any] = {"node": "node-a", "bot": bot, "ts_init": ts}
    return [OrderIntent(**b, ts_event=ts, client_order_id=cid, cid_counter=1, account=account,
                        venue="paper", symbol="SPY", side=side, qty=Decimal(1),
                        decision_price=Decimal(100)),
            OrderAccepted(**b, ts_event=ts + ack_ms * MS, client_order_id=cid),
            Fill(**b, ts_event=ts + ack_ms * MS, client_order_id=cid, trade_id="t" + cid,
                 account=account, venue="paper", symbol="SPY", side=side, qty=Decimal(1),
                 price=Decimal(100))]


async def test_surveillance_alert_opens_once_and_closes_when_quiet(fleet: FleetDB) -> None:
    clock = SimClock(START + 3600 * S)
    rig = await Rig(fleet, clock, Recorder(), surveil_quiet_s=600).attach()
    t = clock.now_ns()
    await rig.ingest(*_trade("a1", "alpha", Side.BUY, t), *_trade("b1", "beta", Side.SELL, t))
    key = "surveil:wash:acct:SPY"
    first = rig.alerts.open[key]
    clock.advance(300 * S)
    t = clock.now_ns()
    await rig.ingest(*_trade("a2", "alpha", Side.BUY, t), *_trade("b2", "beta", Side.SELL, t))
    assert rig.alerts.open[key] is first  # the same alert: not paged again
    assert len(rig.mon.surveillance.findings) == 2
    assert rig.mon.finding_counts == {"wash": 2, "spoof": 0, "layer": 0}
    clock.advance(599 * S)
    await rig.mon.check()
    assert key in rig.alerts.open  # 599 s since the last finding
    clock.advance(2 * S)
    await rig.mon.check()
    assert key not in rig.alerts.open and rig.alerts.closed[-1].key == key
    await rig.settle()


async def test_execution_alert_opens_and_closes_at_the_rollover(fleet: FleetDB) -> None:
    clock = SimClock(END - 600 * S)
    rig = await Rig(fleet, clock, Recorder()).attach()
    t = clock.now_ns()
    await rig.ingest(*_trade("s1", "slow", Side.BUY, t, ack_ms=120))
    await rig.mon.check()
    key = "exec:latency_p99:slow:paper:SPY"
    rec = rig.alerts.open[key]
    assert (rec.value, rec.limit, rec.unit) == (120.0, 50.0, "ms")
    clock.set(END + S)  # a new trading day: counting starts again
    await rig.mon.check()
    assert key not in rig.alerts.open and rig.mon.rows() == []
    await rig.settle()


async def test_daily_report_once_per_day_across_restarts(fleet: FleetDB) -> None:
    clock = SimClock(END - 600 * S)
    rec = Recorder(fail=1)  # the first delivery fails: retried
    rig = await Rig(fleet, clock, rec).attach()
    await rig.mon.check()  # a fresh fleet.db: starts counting, sends nothing
    assert await fleet.get_meta(DAILY_META_KEY) == "2026-11-23" and rec.calls == []
    t = clock.now_ns()
    await rig.ingest(*_trade("a1", "alpha", Side.BUY, t))
    clock.set(END + S)
    await rig.mon.check()
    await rig.settle()
    assert [c[1].split(":")[0] for c in rec.calls] == [f"qtd daily report {DAY}"] * 2
    assert rec.calls[-1][3] is Severity.P4 and "alpha paper:SPY" in rec.calls[-1][2]
    assert await fleet.get_meta(DAILY_META_KEY) == DAY
    await rig.mon.check()
    await rig.settle()
    assert len(rec.calls) == 2  # not twice
    # a restarted leader on the same fleet.db sends nothing more that day ...
    again = await Rig(fleet, clock, Recorder()).attach()
    await again.mon.check()
    await again.settle()
    assert again.sender.calls == []
    # ... and one that was down over the next rollover sends the missed day when it starts
    clock.set(END + 86_400 * S + 3600 * S)
    late = await Rig(fleet, clock, Recorder()).attach()
    await late.mon.check()
    await late.settle()
    assert [c[1].split(":")[0] for c in late.sender.calls] == ["qtd daily report 2026-11-25"]


def test_quality_section_of_the_leader_config() -> None:
    from qtd.errors import ConfigError
    from qtd.leader.config import parse_leader_config

    cfg = parse_leader_config({"quality": {"execution": {"latency_p99_ms": 20},
                                           "surveil": {"wash_window_s": 2}}}, "leader.toml")
    assert cfg.quality.execution.latency_p99_ms == 20.0
    assert cfg.quality.surveil.wash_window_s == 2.0
    assert cfg.quality.execution.slippage_bps == 5.0  # the documented defaults stay
    with pytest.raises(ConfigError, match=r"quality\.execution\.fill_rate_min.*<= 1"):
        parse_leader_config({"quality": {"execution": {"fill_rate_min": 2}}}, "leader.toml")


async def test_decay_alert_opens_below_the_floor_and_closes_when_it_recovers(
        fleet: FleetDB) -> None:
    """The leader's live decay alert: a bot's sampled PnL whose rolling Sharpe falls below
    the floor opens ``decay:<node>/<bot>``; a flat bot is never judged; recovery closes it."""
    from qtd.quality.config import DecayConfig

    clock = SimClock(START + 3600 * S)
    rig = Rig(fleet, clock, Recorder(),
              decay=DecayConfig(sample_s=60.0, window=5, floor=0.5, capital=10_000.0))
    pnl = {"node-a/loser": 0.0, "node-a/flat": 0.0}
    await rig.mon.attach(alerts=rig.alerts, db=rig.db, sender=rig.sender,
                         urls=["json://127.0.0.1:9/daily"], tasks=rig.tasks,
                         equity=lambda: dict(pnl))

    async def sample(loser_step: float, n: int) -> None:
        for i in range(n):
            pnl["node-a/loser"] += loser_step * (1.0 + 0.1 * (i % 3))  # noisy, one direction
            await rig.mon.check()
            clock.advance(60 * S)

    await sample(-50.0, 5)
    assert "decay:node-a/loser" not in rig.alerts.open  # fewer than window + 1 samples
    await sample(-50.0, 2)
    rec = rig.alerts.open["decay:node-a/loser"]
    assert rec.severity is Severity.P3 and rig.mon.rolling_sharpe["node-a/loser"] < 0.5
    assert "decay:node-a/flat" not in rig.alerts.open and "node-a/flat" not in \
        rig.mon.rolling_sharpe  # a bot whose PnL never moved is not judged
    await sample(+80.0, 6)
    assert "decay:node-a/loser" not in rig.alerts.open
    assert rig.mon.rolling_sharpe["node-a/loser"] >= 0.5
    await rig.settle()
