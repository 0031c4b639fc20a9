"""fleet.db on real SQLite: idempotent on origin, gaps filled exactly once, state survives
reopen, the leader's own events kept apart from replay."""

from __future__ import annotations

from pathlib import Path

import pytest

from qtd.errors import StoreError
from qtd.events import AnyEvent, KillSwitch, Scope
from qtd.leader.fleetdb import FleetDB, Origin, parse_msg_id
from tests.factories import fill, intent


def _items(node: str, inc: str, seqs: list[int]) -> list[tuple[Origin, AnyEvent]]:
    out: list[tuple[Origin, AnyEvent]] = []
    for s in seqs:
        ev = intent(f"c{s}", counter=s)
        out.append((Origin(node, inc, s), ev))  # type: ignore[arg-type]
    return out


async def test_duplicates_are_dropped_and_gaps_filled_once(tmp_path: Path) -> None:
    db = await FleetDB.open(tmp_path / "fleet.db")
    assert len(await db.ingest(_items("a", "i1", [1, 2, 3]), 3)) == 3
    assert len(await db.ingest(_items("a", "i1", [2, 3, 5, 5]), 5)) == 1  # 5 once
    assert db.gaps == 1 and db.marks() == {("a", "i1"): 5}
    assert len(await db.ingest(_items("a", "i1", [4, 4, 5]), 6)) == 1  # the gap, once
    assert len(await db.ingest(_items("a", "i2", [1]), 7)) == 1  # new incarnation
    assert len(await db.ingest(_items("b", "i1", [1, 2]), 8)) == 2  # another node
    assert await db.count() == 8 and db.duplicates == 5
    await db.close()
    again = await FleetDB.open(tmp_path / "fleet.db")
    assert again.stream_seq == 8 and again.marks()[("a", "i1")] == 5
    assert await again.ingest(_items("a", "i1", [1, 4, 5]), 9) == []
    await again.close()


async def test_replay_leaves_out_the_leaders_own_events(tmp_path: Path) -> None:
    db = await FleetDB.open(tmp_path / "fleet.db")
    await db.ingest(_items("a", "i1", [1, 2]), 2)
    ks = KillSwitch(node="leader", ts_event=1, ts_init=1, scope=Scope.GLOBAL, scope_key="",
                    active=True, reason="x")
    stored = await db.append_local([ks, ks])
    assert [e.seq for e in stored] == [1, 2]
    replayed = [e for b in [b async for b in db.replay_batches()] for e in b]
    assert [type(e).__name__ for e in replayed] == ["OrderIntent", "OrderIntent"]
    assert len([e async for b in db.replay_all() for e in b]) == 4
    await db.ingest([(Origin("a", "i1", 3), fill("c1", "t1", qty="1", price="2"))], 3)
    recent = await db.recent("a", "bot1", 2)  # by origin node
    assert [type(e).__name__ for e in recent] == ["Fill", "OrderIntent"]
    await db.close()


def test_msg_id_parsing() -> None:
    ev = intent("c1")
    assert parse_msg_id("node-a:abc:17", ev) == Origin("node-a", "abc", 17)
    assert parse_msg_id("weird", ev) == Origin(ev.node, "", ev.seq)
    assert parse_msg_id(None, ev) == Origin(ev.node, "", ev.seq)


async def test_a_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "other.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match=r"not a qtd fleet\.db"):
        await FleetDB.open(path)
