"""Issue 22 item 6, books that read right: ``qtd positions`` and ``qtd events`` as an operator
runs them, on a real agent events.db, a real leader fleet.db and a ``qtd up``-like state
directory (its generated leader.toml beside the stores)."""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from qtd.clock import SimClock
from qtd.events import Side
from qtd.leader.config import load_leader_config
from qtd.leader.fleetdb import FleetDB, Origin
from qtd.leader.view import FleetView
from qtd.projections import TradingDay
from qtd.store import EventStore
from tests.factories import accepted, fill, intent, submitted
from tests.shipped import ETC, run_qtd


def _leader_day(config: Path) -> TradingDay:
    """The trading day the leader (its view, its page, its daily report) runs on."""
    fleet = load_leader_config(config).fleet
    return TradingDay(fleet.trading_day_tz, fleet.trading_day_rollover)


# 2026-12-06 20:00 UTC = 15:00 in New York: trading day 2026-12-05 for the shipped fleet
# (America/New_York, rollover 17:00), 2026-12-06 for a UTC day.
T0 = int(datetime(2026, 12, 6, 20, 0, tzinfo=UTC).timestamp()) * 1_000_000_000
S = 1_000_000_000


def _events() -> list:
    """bot1 buys 2 QQQ at 2,752.09 (fee 1.10) and sells 1 at 2,800 (fee 1.12), keeping 1;
    bot2 then buys 3 QQQ at 2,900: the last price, the mark of bot1's open share."""
    return [
        intent("c1", qty="2", symbol="QQQ", ts=T0),
        submitted("c1", ts=T0 + 1), accepted("c1", ts=T0 + 2),
        fill("c1", "t1", qty="2", price="2752.09", symbol="QQQ", commission="1.10", ts=T0 + S),
        intent("c2", qty="1", symbol="QQQ", side=Side.SELL, counter=2, ts=T0 + 2 * S),
        fill("c2", "t2", qty="1", price="2800", symbol="QQQ", side=Side.SELL,
             commission="1.12", ts=T0 + 3 * S),
        intent("d1", bot="bot2", qty="3", symbol="QQQ", account="acct2", ts=T0 + 4 * S),
        fill("d1", "u1", bot="bot2", qty="3", price="2900", symbol="QQQ", account="acct2",
             ts=T0 + 5 * S),
    ]


@pytest.fixture
async def state(tmp_path: Path) -> Path:
    """A qtd up state directory: etc/leader.toml (the shipped one), node-a/events.db."""
    root = tmp_path / "qtd-state"
    (root / "etc").mkdir(parents=True)
    (root / "node-a").mkdir()
    shutil.copyfile(ETC / "leader.toml", root / "etc" / "leader.toml")
    async with await EventStore.open(root / "node-a" / "events.db", node="node-a") as s:
        for ev in _events():
            await s.append(ev)
    return root


async def _fleet_db(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = await FleetDB.open(path)
    try:
        items = [(Origin("node-a", "inc1", i), ev) for i, ev in enumerate(_events(), 1)]
        await db.ingest(items, stream_seq=len(items))
    finally:
        await db.close()


def _columns(line: str, header: str, names: list[str]) -> list[str]:
    """Cells of ``line`` under right-aligned header ``names`` (ending where they end)."""
    out = []
    for name in names:
        end = re.search(rf"(?:^|\s){re.escape(name)}(?=\s|$)", header).end()
        start = line.rfind("  ", 0, end) + 2
        out.append(line[start:end].strip())
    return out


def test_positions_aligned_marked_net_of_fees_with_units(state: Path) -> None:
    db = state / "node-a" / "events.db"
    r = run_qtd(["positions", "--db", str(db)])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "realized is NET of fees, as on the status page" in r.stdout
    assert "qty in instrument units" in r.stdout and "quote currency" in r.stdout
    header = next(x for x in lines if x.startswith("node "))
    row = next(x for x in lines if x.startswith("node-a") and " bot1 " in x)
    qty, avg, mark, unreal, real, fees = _columns(
        row, header, ["qty", "avg price", "mark", "unrealized", "realized", "fees"])
    # realized gross 2800 - 2752.09 = 47.91, net of 2.22 fees = 45.69; 1 share open at
    # 2752.09 marked at bot2's later fill 2,900: unrealized 147.91
    assert (qty, avg, mark, unreal, real, fees) == (
        "1", "2,752.09", "2,900.00", "147.91", "45.69", "2.22")
    assert row.endswith("USD")
    marks = lines[lines.index(next(x for x in lines if x.startswith("symbol "))) + 1]
    assert marks.split()[:3] == ["QQQ", "2,900.00", "fill"]


async def test_positions_use_the_status_page_fee_convention(state: Path) -> None:
    db = state / "node-a" / "events.db"
    doc = json.loads(run_qtd(["positions", "--db", str(db), "--json"]).stdout)
    mine = {p["bot"]: p for p in doc["positions"]}
    clock = SimClock(T0 + 10 * S)
    view = FleetView(trading_day=_leader_day(ETC / "leader.toml"),
                     capital=Decimal(1_000_000), currency="USD", clock=clock)
    for ev in _events():
        view.apply(ev)
    page = {p.bot: p for p in view.snapshot().positions}
    assert Decimal(mine["bot1"]["realized"]) == Decimal("45.69")
    assert float(mine["bot1"]["realized"]) == pytest.approx(page["bot1"].realized)
    assert mine["bot1"]["gross_realized"] == "47.91" and mine["bot1"]["fees"] == "2.22"
    assert mine["bot1"]["mark"]["source"] == "fill" and mine["bot1"]["unrealized"] == "147.91"


def test_one_trading_day_for_page_positions_and_daily_report(state: Path) -> None:
    db = state / "node-a" / "events.db"
    leader_day = _leader_day(state / "etc" / "leader.toml")
    assert leader_day.label(T0) == "2026-12-05"  # what the leader and its page say
    doc = json.loads(run_qtd(["positions", "--db", str(db), "--json"]).stdout)
    assert {d["trading_day"] for d in doc["daily"]} == {"2026-12-05"}
    assert doc["trading_day"]["tz"] == "America/New_York"
    assert doc["trading_day"]["source"].endswith("leader.toml [fleet]")
    daily = run_qtd(["report", "daily", "--db", str(db), "--date", "2026-12-05", "--json"])
    assert daily.returncode == 0, daily.stderr
    rep = json.loads(daily.stdout)
    assert rep["tz"] == "America/New_York" and rep["fleet"]["fills"] == 3
    text = run_qtd(["report", "daily", "--db", str(db), "--date", "2026-12-05"]).stdout
    assert "America/New_York, rollover 17:00 (from " in text


async def test_events_and_positions_read_the_leaders_fleet_db(tmp_path: Path) -> None:
    fleet = tmp_path / "leader" / "fleet.db"
    await _fleet_db(fleet)
    r = run_qtd(["events", "--db", str(fleet), "--kind", "Fill"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and all(x.startswith("node-a ") for x in lines)
    r = run_qtd(["events", "--db", str(fleet), "--symbol", "QQQ", "--bot", "bot2", "--json"])
    assert [json.loads(x)["kind"] for x in r.stdout.splitlines()] == ["OrderIntent", "Fill"]
    r = run_qtd(["events", "--db", str(fleet), "--tail", "1", "--json"])
    assert json.loads(r.stdout)["trade_id"] == "u1"
    r = run_qtd(["positions", "--db", str(fleet), "--json"])
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [(p["node"], p["bot"], p["qty"]) for p in doc["positions"]] == [
        ("node-a", "bot1", "1"), ("node-a", "bot2", "3")]
