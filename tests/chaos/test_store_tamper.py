"""Chaos: a real ``qtd agent`` restarted on a store changed while it was down (issue 21,
finding 10).

A bus-less agent trades a flipper bot (qty 10.0) on the paper broker until its store holds
fills, then stops cleanly. Each test copies that store into a fleet on a nats-server running
the shipped config and changes it as a flipped bit, a deleted row, an edit with its checksum,
truncation to zero bytes or a damaged page would (anywhere in the file, or a page of the
events table, where today's agent printed a traceback and hung), then starts ``qtd agent``
on it: the agent must refuse with one line naming the file and the first bad seq, exit 2,
print no traceback, not hang, write nothing to the store and publish nothing (no order sent:
an order is written ahead of the broker call). ``qtd events`` and ``qtd positions`` on a
damaged file exit the same way.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from tests.agent_rig import stop_process, write_fleet
from tests.shipped import agent_config, log_match, processes, qtd_process, run_qtd, shipped_nats
from tests.sqlfile import read_rows

BOTS = {"b1": {"qty": 10.0}}
TEN = b"\xa3qty\xa410.0"  # msgpack of the Fill field qty = "10.0"
FIFTY = b"\xa3qty\xa450.0"
MIN_FILLS = 8


def _fills(db: Path) -> int:
    try:
        return int(str(read_rows(db, "SELECT count(*) FROM events WHERE kind = 'Fill'")[0][0]))
    except sqlite3.Error:
        return 0  # not created yet


@pytest.fixture(scope="module")
def traded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``events.db`` of an agent that traded and stopped cleanly (no bus needed for it)."""
    root = tmp_path_factory.mktemp("traded")
    cfg = write_fleet(root, BOTS)
    db = root / "state" / "events.db"
    proc = qtd_process(["agent", "--config", str(cfg)], root / "agent.log")
    try:
        while _fills(db) < MIN_FILLS:  # a hang guard only, no timing: pytest-timeout
            assert proc.poll() is None, (root / "agent.log").read_text()[-3000:]
            time.sleep(0.1)
    finally:
        stop_process(proc)
    assert proc.returncode == 0, (root / "agent.log").read_text()[-3000:]
    wal = db.with_name("events.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # the file alone is the whole store
    return db


def _buy_fill(db: Path) -> tuple[int, bytes]:
    """A BUY fill of qty 10.0 from the middle of the store: (seq, payload)."""
    rows = read_rows(db, "SELECT seq, payload FROM events WHERE kind = 'Fill' ORDER BY seq")
    buys = [(int(str(s)), bytes(p)) for s, p in rows
            if isinstance(p, bytes) and b"\xa3BUY" in p and p.count(TEN) == 1]
    assert len(buys) >= 2, rows
    return buys[len(buys) // 2]


def _write(db: Path, sql: str, *params: object) -> None:
    con = sqlite3.connect(db)
    try:
        with con:
            con.execute(sql, params)
    finally:
        con.close()


def flip_qty(db: Path) -> str:
    seq, payload = _buy_fill(db)
    _write(db, "UPDATE events SET payload = ? WHERE seq = ?", payload.replace(TEN, FIFTY), seq)
    return f"at seq {seq}: payload checksum mismatch"


def delete_row(db: Path) -> str:
    (last,) = read_rows(db, "SELECT max(seq) FROM events")[0]
    mid = int(str(last)) // 2
    _write(db, "DELETE FROM events WHERE seq = ?", mid)
    return f"at seq {mid}: seq {mid} missing"


def edit_with_checksum(db: Path) -> str:
    """The qty edit and the row's own checksum (on a store that has one), not the chain."""
    seq, payload = _buy_fill(db)
    changed = payload.replace(TEN, FIFTY)
    _write(db, "UPDATE events SET payload = ? WHERE seq = ?", changed, seq)
    if any(c[1] == "crc" for c in read_rows(db, "PRAGMA table_info(events)")):
        _write(db, "UPDATE events SET crc = ? WHERE seq = ?", zlib.crc32(changed), seq)
    return f"at seq {seq}: hash chain mismatch"


def truncate(db: Path) -> str:
    db.write_bytes(b"")
    return "zero-length file"


def damage_page(db: Path) -> str:
    size = db.stat().st_size
    with db.open("r+b") as f:
        f.seek(size // 2)
        f.write(b"\xa5" * 8192)
    return "the SQLite file is damaged (quick_check:"


def damage_events_page(db: Path) -> str:
    """Overwrite a leaf page of the events table in the middle of the log (SQLite's
    ``dbstat`` names it): the page every replay reads, where today's agent hung."""
    pages = [int(str(r[0])) for r in read_rows(
        db, "SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf' "
        "ORDER BY pageno")]
    (size,) = read_rows(db, "PRAGMA page_size")[0]
    with db.open("r+b") as f:
        f.seek((pages[len(pages) // 2] - 1) * int(str(size)))
        f.write(b"\xa5" * int(str(size)))
    return "the SQLite file is damaged (quick_check:"


def _one_line_error(out: str, db: Path, expect: str) -> str:
    assert "Traceback" not in out, out[-3000:]
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out[-3000:]
    assert lines[0].startswith("qtd: error: ") and str(db) in lines[0], lines[0]
    assert expect in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("tamper", [flip_qty, delete_row, edit_with_checksum, truncate,
                                    damage_page, damage_events_page], ids=lambda f: f.__name__)
async def test_agent_refuses_a_changed_store_with_one_line(
        tmp_path: Path, traded: Path, tamper: Callable[[Path], str]) -> None:
    async with shipped_nats(tmp_path / "nats") as nats:
        cfg = agent_config(tmp_path / "fleet", "node-a", nats.url, BOTS)
        db = tmp_path / "fleet" / "state" / "events.db"
        db.parent.mkdir()
        shutil.copyfile(traded, db)
        expect = tamper(db)
        before = db.read_bytes()
        published: list[str] = []

        async def seen(msg: Msg) -> None:
            published.append(msg.subject)

        leader = await nats.connect("leader")
        await leader.subscribe("qtd.>", cb=seen)
        log = tmp_path / "agent.log"
        with processes() as procs:
            procs.append(qtd_process(["agent", "--config", str(cfg)], log))
            m = await log_match(log, rb"qtd: error: [^\n]*|agent node-a ready")
            assert m.group(0).startswith(b"qtd: error: "), \
                f"the agent started on a changed store: {m.group(0)!r}"
            rc = await asyncio.to_thread(procs[0].wait, 60)  # a hang guard, no timing
        await leader.flush()
        line = _one_line_error(log.read_text(), db, expect)
        assert rc == 2, line
        assert db.read_bytes() == before, "the refused store was written to"
        assert published == [], f"published while refusing: {published}"


@pytest.mark.parametrize("damage", [damage_page, damage_events_page], ids=lambda f: f.__name__)
@pytest.mark.parametrize("command", [["events", "--tail", "3"], ["positions"],
                                     ["events", "--kind", "Fill"]], ids=" ".join)
def test_readers_exit_with_one_line_on_a_damaged_file(
        tmp_path: Path, traded: Path, command: list[str], damage: Callable[[Path], str]
) -> None:
    db = tmp_path / "events.db"
    shutil.copyfile(traded, db)
    expect = damage(db)
    try:
        res = run_qtd([*command, "--db", str(db)])  # run_qtd's timeout is a hang guard
    except subprocess.TimeoutExpired:
        pytest.fail(f"qtd {' '.join(command)} hung on a damaged store")
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert res.stdout == ""
    _one_line_error(res.stderr, db, expect)


def test_positions_refuses_a_flipped_fill(tmp_path: Path, traded: Path) -> None:
    db = tmp_path / "events.db"
    shutil.copyfile(traded, db)
    expect = flip_qty(db)
    res = run_qtd(["positions", "--db", str(db)])
    assert res.returncode == 2 and res.stdout == "", res.stdout[-2000:]
    _one_line_error(res.stderr, db, expect)
