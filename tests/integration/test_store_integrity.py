"""Tamper evidence of the event store on real SQLite files (issue 21, finding 10).

Records are changed behind the store's back with plain ``sqlite3`` (or raw bytes), the way a
flipped bit, an edit or a truncated copy reaches a file; the store must refuse it, naming the
file, the first bad seq and what mismatched, and leave the file as it found it.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
import zlib
from pathlib import Path

import pytest

from qtd import __version__
from qtd.errors import StoreError
from qtd.events import Event
from qtd.store import APPLICATION_ID, MIGRATIONS, EventStore, event_row
from tests.factories import NODE, accepted, fill, intent, submitted

TEN = b"\xa3qty\xa410.0"  # msgpack: "qty": "10.0"
FIFTY = b"\xa3qty\xa450.0"


def _orders(n: int) -> list[Event]:
    out: list[Event] = []
    for i in range(n):
        cid = f"c{i}"
        out += [intent(cid, counter=i + 1, qty="10.0"), submitted(cid), accepted(cid),
                fill(cid, f"t{i}", qty="10.0", price="101.5")]
    return out


async def _written(path: Path, n: int = 30) -> list[int]:
    """A closed store of ``n`` orders; returns the seqs of its fills."""
    async with await EventStore.open(path, node=NODE) as s:
        stored = await s.append_many(_orders(n))
    return [e.seq for e in stored if type(e).__name__ == "Fill"]


def _sql(path: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as con:
        rows = con.execute(sql, params).fetchall()
    con.close()
    return rows


def _flip(path: Path, seq: int, *, with_checksum: bool = False) -> None:
    """``10.0`` -> ``50.0`` in the qty of the record ``seq`` (and its crc if asked)."""
    (payload,) = _sql(path, "SELECT payload FROM events WHERE seq = ?", seq)[0]
    assert isinstance(payload, bytes) and payload.count(TEN) == 1
    changed = payload.replace(TEN, FIFTY)
    _sql(path, "UPDATE events SET payload = ? WHERE seq = ?", changed, seq)
    columns = {str(c[1]) for c in _sql(path, "PRAGMA table_info(events)")}
    if with_checksum and "crc" in columns:  # (a schema-1 store has none to fix up)
        _sql(path, "UPDATE events SET crc = ? WHERE seq = ?", zlib.crc32(changed), seq)


async def _refused(path: Path, *, readonly: bool = False) -> StoreError:
    before = path.read_bytes()
    try:
        store = await EventStore.open(path, node=None if readonly else NODE, readonly=readonly)
    except StoreError as exc:
        err = exc
    else:
        await store.close()
        pytest.fail(f"{path} was opened (last seq {store.last_seq})")
    assert path.read_bytes() == before, "a refused store was modified"
    assert str(path) in str(err) and "\n" not in str(err)
    return err


@pytest.mark.parametrize("readonly", [False, True])
async def test_flipped_bit_in_a_fill_is_refused_naming_its_seq(
        tmp_path: Path, readonly: bool) -> None:
    path = tmp_path / "events.db"
    fills = await _written(path)
    bad = fills[len(fills) // 2]
    _flip(path, bad)
    err = await _refused(path, readonly=readonly)
    assert type(err).__name__ == "StoreCorrupt"
    assert err.fields["seq"] == bad and f"at seq {bad}:" in str(err)
    assert "payload checksum mismatch" in str(err)


async def test_deleted_record_is_refused_naming_the_missing_seq(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    await _written(path)
    _sql(path, "DELETE FROM events WHERE seq = 57")
    err = await _refused(path)
    assert err.fields["seq"] == 57
    assert "seq 57 missing (the next row is seq 58)" in str(err)


async def test_record_rewritten_with_its_own_checksum_breaks_the_chain_there(
        tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    fills = await _written(path)
    bad = fills[3]
    _flip(path, bad, with_checksum=True)
    err = await _refused(path)
    assert err.fields["seq"] == bad and "hash chain mismatch" in str(err)


async def test_replay_and_query_check_records_changed_after_open(tmp_path: Path) -> None:
    """A reader opened before the change still refuses what it reads afterwards."""
    path = tmp_path / "events.db"
    fills = await _written(path)
    async with await EventStore.open(path, readonly=True) as reader:
        _flip(path, fills[-2], with_checksum=True)
        with pytest.raises(StoreError, match=f"at seq {fills[-2]}: hash chain mismatch"):
            [e async for e in reader.replay_batches(batch=7)]
        with pytest.raises(StoreError, match=f"at seq {fills[-2]}: hash chain mismatch"):
            [e async for e in reader.replay(after_seq=fills[-2] - 1)]
        _flip(path, fills[1])
        with pytest.raises(StoreError, match=f"at seq {fills[1]}: payload checksum mismatch"):
            await reader.query(kind="Fill")


async def test_zero_length_file_is_refused_not_taken_as_a_new_store(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    path.write_bytes(b"")
    for readonly in (False, True):
        err = await _refused(path, readonly=readonly)
        assert "zero-length file" in str(err) and "will not take it as a new store" in str(err)
    assert path.stat().st_size == 0


async def test_sqlite_file_without_a_store_is_not_adopted(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    _sql(path, "PRAGMA user_version = 0")  # an empty SQLite database (4 KiB header page)
    _sql(path, "PRAGMA journal_mode = WAL")
    err = await _refused(path)
    assert "without a qtd store in it" in str(err)


async def test_new_store_is_created_whole(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    async with await EventStore.open(path, node=NODE) as s:
        assert s.head == (0, s.head[1]) and len(s.head[1]) == 32
        assert path.stat().st_size > 0 and not (tmp_path / "events.db.new").exists()
        e = await s.append(intent("c1"))
        assert s.head[0] == e.seq


async def test_corrupt_page_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    await _written(path, 400)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(size // 2)
        f.write(b"\xa5" * 8192)
    for readonly in (False, True):
        err = await _refused(path, readonly=readonly)
        assert "the SQLite file is damaged (quick_check:" in str(err)


def _v1_store(path: Path, events: list[Event]) -> None:
    """A store as qtd wrote it before the chain (schema 1), rows and meta as the old code."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    for stmt in MIGRATIONS[1]:
        con.execute(stmt)
    con.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
        ("node", NODE), ("incarnation", uuid.uuid4().hex[:16]),
        ("created_ns", str(time.time_ns())), ("created_by", f"qtd {__version__}")])
    rows = [event_row(type(e)(**{**{f: getattr(e, f) for f in e.__struct_fields__},
                                 "seq": i + 1})) for i, e in enumerate(events)]
    con.executemany("INSERT INTO events (seq, ts, kind, node, bot, symbol, client_order_id, "
                    "payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    con.execute(f"PRAGMA application_id={APPLICATION_ID}")
    con.execute("PRAGMA user_version=1")
    con.close()


async def test_schema_1_store_is_migrated_with_its_chain(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    events = _orders(40)
    _v1_store(path, events)
    async with await EventStore.open(path, node=NODE) as s:
        assert s.last_seq == len(events)
        assert [type(e) for e in await s.query()] == [type(e) for e in events]
        # schema 3: the lookups of the rows already stored are in event_keys
        assert _sql(path, "SELECT value FROM meta WHERE key = 'keys_seq'") == [
            (str(len(events)),)]
        assert [e.seq for e in await s.query(client_order_id="c3")] == [13, 14, 15, 16]
        stored = await s.append(intent("after", counter=99))
        assert stored.seq == len(events) + 1
    fill_seq = 4 * 20
    _flip(path, fill_seq)
    err = await _refused(path)
    assert err.fields["seq"] == fill_seq


async def test_schema_1_store_with_a_gap_is_refused_and_left_at_schema_1(
        tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    _v1_store(path, _orders(10))
    _sql(path, "DELETE FROM events WHERE seq = 9")
    with pytest.raises(StoreError, match="seq 9 missing") as err:
        await (await EventStore.open(path, node=NODE)).close()
    assert err.value.fields["seq"] == 9
    assert _sql(path, "PRAGMA user_version") == [(1,)]
