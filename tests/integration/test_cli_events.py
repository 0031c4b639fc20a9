"""`qtd events` and `qtd positions` through the installed console script, on a real store."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qtd.events import Side
from qtd.store import EventStore
from tests.factories import NODE, accepted, fill, intent, submitted


def _qtd(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("qtd") or str(Path(sys.executable).with_name("qtd"))
    return subprocess.run([exe, *args], capture_output=True, text=True, check=False)


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    path = tmp_path / "events.db"
    async with await EventStore.open(path, node=NODE) as s:
        await s.append(intent("c1", qty="10", ts=1_764_000_000_000_000_000))
        await s.append_many([submitted("c1"), accepted("c1")])
        await s.append(fill("c1", "t1", qty="10", price="100.5", commission="1",
                            ts=1_764_000_001_000_000_000))
        await s.append(intent("c2", side=Side.SELL, qty="4", ts=1_764_000_002_000_000_000))
        await s.append(fill("c2", "t2", side=Side.SELL, qty="4", price="110.5",
                            ts=1_764_000_003_000_000_000))
    return path


async def test_events_json_filters_by_kind_and_cid(db: Path) -> None:
    res = _qtd("events", "--db", str(db), "--kind", "Fill", "--json")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(r["kind"], r["trade_id"], r["seq"]) for r in rows] == [("Fill", "t1", 4),
                                                                    ("Fill", "t2", 6)]
    res = _qtd("events", "--db", str(db), "--cid", "c2", "--json")
    assert [json.loads(x)["kind"] for x in res.stdout.splitlines()] == ["OrderIntent", "Fill"]


async def test_events_table_tail_and_time_range(db: Path) -> None:
    res = _qtd("events", "--db", str(db), "--tail", "2")
    lines = res.stdout.splitlines()
    assert len(lines) == 2 and lines[0].split()[0] == "5" and "OrderIntent" in lines[0]
    res = _qtd("events", "--db", str(db), "--since", "2025-11-24T16:00:01Z",
               "--until", "2025-11-24T16:00:03Z", "--json")
    assert [json.loads(x)["seq"] for x in res.stdout.splitlines()] == [4, 5]


async def test_positions_replays_the_store(db: Path) -> None:
    res = _qtd("positions", "--db", str(db), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    (pos,) = doc["positions"]
    assert (pos["qty"], pos["avg_price"], pos["realized"], pos["fees"]) == (
        "6", "100.5", "39", "1")  # realized net of fees, as on the status page
    assert pos["gross_realized"] == "40"
    assert doc["daily"][0]["trading_day"] == "2025-11-24" and doc["open_orders"] == 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["events", "--db", "{db}", "--kind", "Fil"], 78, "unknown event kind"),
        (["events", "--db", "{db}", "--since", "yesterday"], 78, "ISO 8601"),
        (["events", "--db", "{missing}"], 2, "no event store here"),
        (["positions", "--db", "{db}", "--tz", "Mars/Base"], 78, "Mars/Base"),
    ],
)
async def test_bad_arguments_get_clear_errors(
    db: Path, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    argv = [a.format(db=db, missing=tmp_path / "nope.db") for a in args]
    res = _qtd(*argv)
    assert res.returncode == code and message in res.stderr, (res.returncode, res.stderr)
