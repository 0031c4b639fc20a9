"""Execution quality (qtd report execution) from real stores: a crafted order log with known
latencies, fills and cancels (events.db and fleet.db), and a real backtest on bundled GOOG
bars through the paper broker with a known slippage."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path

import pytest

from qtd.admit import admit_bot
from qtd.backtest import BacktestBot, run_backtest
from qtd.cli import build_parser, main
from qtd.commands.report import EXIT_FINDINGS, run_execution
from qtd.data import load_dataset
from qtd.events import (
    Event,
    Fill,
    OrderAccepted,
    OrderCanceled,
    OrderIntent,
    OrderRejected,
    OrderSubmitted,
    Side,
    Signal,
)
from qtd.leader.fleetdb import FleetDB, Origin
from qtd.risk.load import bind_profiles, load_risk_config
from qtd.runner import BotSpec
from qtd.store import EventStore
from qtd.workers.load import load_admitted

ROOT = Path(__file__).resolve().parents[2]
NODE = "node-a"
T0 = 1_764_000_000_000_000_000
MS = 1_000_000


def _base(ts: int, bot: str = "alpha") -> dict[str, object]:
    return {"node": NODE, "bot": bot, "ts_event": ts, "ts_init": ts}


def crafted() -> list[Event]:
    """100 orders of 10 AAPL by alpha, decision price 100, acked i ms after the intent
    (i = 1..100). Orders 1-80 fill (even: buys at 100.05, +5 bps; odd: sells at 99.90,
    +10 bps adverse), 81-90 are canceled unfilled, 91-95 fill 5 then are canceled, 96-100
    are rejected (no ack). One more order by beta is preceded by a Signal 30 ms earlier."""
    out: list[Event] = []
    for i in range(1, 101):
        cid, t = f"a.{i}", T0 + i * 1_000 * MS
        side = Side.BUY if i % 2 == 0 else Side.SELL
        out += [OrderIntent(**_base(t), client_order_id=cid, cid_counter=i, account="acct",
                            venue="paper", symbol="AAPL", side=side, qty=Decimal(10),
                            decision_price=Decimal(100)),
                OrderSubmitted(**_base(t), client_order_id=cid, arrival_price=Decimal(100))]
        if i > 95:
            out.append(OrderRejected(**_base(t + i * MS), client_order_id=cid, reason="no"))
            continue
        out.append(OrderAccepted(**_base(t + i * MS), client_order_id=cid))
        px = Decimal("100.05") if side is Side.BUY else Decimal("99.90")
        qty = 10 if i <= 80 else 5 if i > 90 else 0
        if qty:
            out.append(Fill(**_base(t + 200 * MS), client_order_id=cid, trade_id=f"t{i}",
                            account="acct", venue="paper", symbol="AAPL", side=side,
                            qty=Decimal(qty), price=px))
        if i > 80:
            out.append(OrderCanceled(**_base(t + 300 * MS), client_order_id=cid))
    t = T0 + 500_000 * MS
    out += [Signal(**_base(t - 30 * MS, "beta"), symbol="MSFT", name="cross_up"),
            OrderIntent(**_base(t, "beta"), client_order_id="b.1", cid_counter=1,
                        account="acct", venue="paper", symbol="MSFT", side=Side.BUY,
                        qty=Decimal(1)),
            OrderAccepted(**_base(t + 10 * MS, "beta"), client_order_id="b.1")]
    return out


def _expected_slippage() -> float:
    """Notional-weighted bps over the fills of crafted(), computed independently."""
    num = den = 0.0
    for i in range(1, 96):
        qty = 10 if i <= 80 else 5 if i > 90 else 0
        bps = 5.0 if i % 2 == 0 else 10.0
        num += bps * 100 * qty
        den += 100 * qty
    return num / den


async def _report(db: Path, *extra: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    args = build_parser().parse_args(["report", "execution", "--db", str(db), "--json",
                                      *extra])
    out = io.StringIO()
    rc = await run_execution(args, out)
    return rc, json.loads(out.getvalue())


def _check_crafted(doc: dict) -> None:  # type: ignore[type-arg]
    rows = {r["bot"]: r for r in doc["rows"]}
    a = rows["alpha"]
    assert (a["orders"], a["done"], a["filled"], a["canceled"], a["rejected"]) == (
        100, 100, 80, 15, 5)
    assert a["latency_n"] == 95
    assert a["latency_p50_ms"] == pytest.approx(48.0)  # nearest rank 48 of 1..95
    assert a["latency_p99_ms"] == pytest.approx(95.0)  # rank ceil(0.99 * 95) = 95
    assert a["fill_rate"] == pytest.approx((80 * 10 + 5 * 5) / 1000)
    assert a["cancel_rate"] == pytest.approx(0.15)
    assert a["reject_rate"] == pytest.approx(0.05)
    assert a["slippage_decision_bps"] == pytest.approx(_expected_slippage())
    assert a["slippage_arrival_bps"] == pytest.approx(_expected_slippage())
    assert rows["beta"]["latency_p50_ms"] == pytest.approx(40.0)  # from the Signal
    metrics = sorted((b["bot"], b["metric"]) for b in doc["breaches"])
    # cancel 0.15 and reject 0.05 sit exactly on their limits: not crossed
    assert metrics == [("alpha", "fill_rate"), ("alpha", "latency_p99"),
                       ("alpha", "slippage_arrival"), ("alpha", "slippage_decision")]


async def test_crafted_log_in_an_events_db(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    async with await EventStore.open(db, node=NODE) as s:
        await s.append_many(crafted())
    rc, doc = await _report(db)
    assert rc == 0
    _check_crafted(doc)
    rc, doc = await _report(db, "--threshold", "latency_p99_ms=100", "--threshold",
                            "slippage_bps=8", "--threshold", "fill_rate_min=0.8",
                            "--fail-on-breach")
    assert (rc, doc["breaches"]) == (0, [])
    rc, _ = await _report(db, "--fail-on-breach")
    assert rc == EXIT_FINDINGS


async def test_crafted_log_in_a_fleet_db_and_since(tmp_path: Path) -> None:
    fdb = await FleetDB.open(tmp_path / "fleet.db")
    try:
        evs = crafted()
        await fdb.ingest([(Origin(NODE, "inc1", i + 1), e) for i, e in enumerate(evs)], 1)
    finally:
        await fdb.close()
    rc, doc = await _report(tmp_path / "fleet.db")
    assert rc == 0
    _check_crafted(doc)
    # --since after every alpha order: only beta's order is left
    rc, doc = await _report(tmp_path / "fleet.db", "--since", str(T0 + 400_000 * MS))
    assert [r["bot"] for r in doc["rows"]] == ["beta"]


def test_text_report_and_bad_db(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "x.db"
    bad.write_bytes(b"not sqlite at all, definitely not" * 10)
    assert main(["report", "execution", "--db", str(bad)]) != 0
    err = capsys.readouterr().err
    assert "x.db" in err and "SQLite" in err
    assert main(["report", "execution", "--db", str(tmp_path / "missing.db")]) != 0
    assert "no such file" in capsys.readouterr().err


async def test_backtest_slippage_matches_the_paper_brokers_setting(tmp_path: Path) -> None:
    """Real bars, real bot, real order path: fills at the bar's close moved 7 bps against
    the order, decided on that close, so both benchmarks show exactly +7 bps."""
    adm = await admit_bot(ROOT / "etc/bots/momo-goog.toml", smoke=False)
    assert adm.ok, adm.problems
    cls, params = load_admitted(adm.ref())
    bot = BacktestBot(strategy=cls, params=params,
                      spec=BotSpec(name="momo-goog", account="paper-main", venue="paper",
                                   symbols=("GOOG",)))
    risk = bind_profiles(load_risk_config(ROOT / "etc/risk.toml"), {"momo-goog": "momo-goog"})
    db = tmp_path / "bt.db"
    async with await EventStore.open(db, node="bt") as store:
        res = await run_backtest([bot], load_dataset("goog_1d"), store=store, risk=risk,
                                 accounts={"paper-main": {"slippage_bps": Decimal(7),
                                                          "fill_at": "close"}})
    rc, doc = await _report(db)
    [row] = doc["rows"]
    assert rc == 0
    assert row["fills"] == res.bots["momo-goog"].fills > 10
    assert row["slippage_decision_bps"] == pytest.approx(7.0, abs=1e-6)
    assert row["slippage_arrival_bps"] == pytest.approx(7.0, abs=1e-6)
    assert row["fill_rate"] == 1.0 and row["cancel_rate"] == 0.0
