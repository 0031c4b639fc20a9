"""Event store on real SQLite files: ordering, queries, outbox, bad files, crashes, full disk."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from qtd.errors import StoreError
from qtd.eventlog.rows import payload_rows
from qtd.eventlog.writer import WriteBatch
from qtd.events import AnyEvent, Event, Heartbeat, OrderIntent, Side
from qtd.orders import ClientOrderIds
from qtd.projections import Projections
from qtd.store import SCHEMA_VERSION, EventStore, event_row
from tests.factories import NODE, accepted, fill, intent, submitted
from tests.sqlfile import main_file_rows, read_rows


def _hb(i: int) -> Heartbeat:
    return Heartbeat(node=NODE, ts_event=i, ts_init=i, role="agent", last_seq=i)


async def test_append_assigns_strictly_increasing_seq_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    async with await EventStore.open(path, node=NODE) as s:
        a = await s.append(intent("c1"))
        b = await s.append_many([submitted("c1"), accepted("c1")])
        c = await s.append(fill("c1", "t1", qty="10", price="1.5"))
        assert [a.seq, *(e.seq for e in b), c.seq] == [1, 2, 3, 4]
        inc = s.incarnation
    async with await EventStore.open(path, node=NODE) as s:
        assert s.last_seq == 4 and s.incarnation == inc and len(inc) == 16
        events = [e async for e in s.replay()]
        assert [e.seq for e in events] == [1, 2, 3, 4]
        assert events[3] == c


async def test_query_filters(store: EventStore) -> None:
    await store.append(intent("c1", bot="b1", symbol="AAPL", ts=10))
    await store.append(intent("c2", bot="b2", symbol="MSFT", ts=20))
    await store.append(fill("c2", "t1", bot="b2", symbol="MSFT", qty="1", price="2", ts=30))
    await store.append_many([_hb(40), _hb(50)], sync=False)
    assert [e.seq for e in await store.query(bot="b2")] == [2, 3]
    assert [e.seq for e in await store.query(kind="OrderIntent")] == [1, 2]
    assert [e.seq for e in await store.query(kind=["Fill", "Heartbeat"])] == [3, 4, 5]
    assert [e.seq for e in await store.query(symbol="MSFT")] == [2, 3]
    assert [e.seq for e in await store.query(client_order_id="c2")] == [2, 3]
    assert [e.seq for e in await store.query(since_ns=20, until_ns=50)] == [2, 3, 4]
    assert [e.seq for e in await store.query(after_seq=3)] == [4, 5]
    assert [e.seq for e in await store.query(limit=2, newest_first=True)] == [5, 4]
    assert await store.count() == 5


async def test_outbox_watermark_persists_and_never_goes_back(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    async with await EventStore.open(path, node=NODE) as s:
        await s.append_many([_hb(i) for i in range(1, 11)])
        assert await s.watermark() == 0
        await s.set_watermark(7)
        await s.set_watermark(5)  # a late ack for an older seq never moves it back
        with pytest.raises(StoreError, match="beyond the last event"):
            await s.set_watermark(11)
    async with await EventStore.open(path, node=NODE) as s:
        assert await s.watermark() == 7
        assert [e.seq for e in await s.query(after_seq=await s.watermark())] == [8, 9, 10]


async def test_client_order_id_counter_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    async with await EventStore.open(path, node=NODE) as s:
        ids = ClientOrderIds(s)
        for _ in range(3):
            cid, n = await ids.next("bot1")
            await s.append(intent(cid, counter=n))
        last_cid = cid
    async with await EventStore.open(path, node=NODE) as s:
        cid, n = await ClientOrderIds(s).next("bot1")
        assert n == 4 and cid != last_cid and cid.endswith(".4")


async def test_rebuild_from_replay_equals_incremental(store: EventStore) -> None:
    live = Projections()
    stream = []
    for i in range(40):
        cid = f"c{i}"
        side = Side.BUY if i % 3 else Side.SELL
        sym = ("AAPL", "MSFT")[i % 2]
        stream += [intent(cid, side=side, symbol=sym, qty="5"), submitted(cid), accepted(cid)]
        stream += [fill(cid, f"{cid}-a", qty="2", price=str(100 + i), side=side, symbol=sym,
                        commission="0.1"),
                   fill(cid, f"{cid}-b", qty="3", price=str(99 + i), side=side, symbol=sym)]
    for ev in stream:
        live.apply(await store.append(ev))
    rebuilt = await Projections().rebuild(store.replay_batches(batch=7))
    assert rebuilt.state() == live.state()
    assert rebuilt.last_seq == live.last_seq == len(stream)
    assert any(p.realized != 0 for p in live.positions.values())


async def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    async with await EventStore.open(path, node=NODE):
        with pytest.raises(StoreError, match=r"another process \(pid \d+\) is writing"):
            await EventStore.open(path, node=NODE)
        async with await EventStore.open(path, readonly=True) as reader:
            assert reader.node == NODE


@pytest.mark.parametrize(
    ("content", "rule"),
    [
        (b"col1,col2\n1,2\n" * 100, "not a SQLite database"),
        (b"SQLite format 3\x00" + b"\xff" * 4000, "unreadable SQLite file|another application"),
    ],
)
async def test_foreign_or_corrupt_file_is_refused_and_untouched(
    tmp_path: Path, content: bytes, rule: str
) -> None:
    path = tmp_path / "e.db"
    path.write_bytes(content)
    with pytest.raises(StoreError, match=rule) as err:
        await EventStore.open(path, node=NODE)
    assert str(path) in str(err.value)
    assert path.read_bytes() == content


async def test_other_applications_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE t (x)")
        con.execute("INSERT INTO t VALUES (1)")
    before = path.read_bytes()
    with pytest.raises(StoreError, match="another application"):
        await EventStore.open(path, node=NODE)
    assert path.read_bytes() == before


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    async with await EventStore.open(path, node=NODE) as s:
        await s.append(_hb(1))
    with sqlite3.connect(path) as con:
        con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    rule = (rf"schema version {SCHEMA_VERSION + 1} is newer than this qtd \(.*\) supports "
            rf"\({SCHEMA_VERSION}\)")
    with pytest.raises(StoreError, match=rule):
        await EventStore.open(path, node=NODE)


async def test_store_of_another_node_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    async with await EventStore.open(path, node=NODE):
        pass
    with pytest.raises(StoreError, match="belongs to node 'node-a', not 'node-b'"):
        await EventStore.open(path, node="node-b")


# --- crashes and storage faults --------------------------------------------------------------

WRITER = """
import asyncio, sys
from decimal import Decimal
from qtd.events import OrderIntent, Heartbeat, Side
from qtd.store import EventStore

async def main(path, batch):
    s = await EventStore.open(path, node="node-a")
    i = 0
    while True:
        i += 1
        if batch:
            evs = await s.append_many([Heartbeat(node="node-a", ts_event=i, ts_init=i,
                                                 role="agent") for _ in range(50)])
            print(evs[-1].seq, flush=True)
        else:
            ev = await s.append(OrderIntent(
                node="node-a", bot="b", ts_event=i, ts_init=i, client_order_id=f"c{i}",
                cid_counter=i, account="a", venue="paper", symbol="AAPL", side=Side.BUY,
                qty=Decimal(1)))
            print(ev.seq, flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2] == "batch"))
"""


@pytest.mark.parametrize("mode", ["single", "batch"])
@pytest.mark.parametrize("kill_after", [1, 37, 400])
async def test_sigkill_mid_write_keeps_every_acknowledged_event(
    tmp_path: Path, mode: str, kill_after: int
) -> None:
    path = tmp_path / "e.db"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(path), mode, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        # the timeout only guards against a hung writer; it measures nothing
        acked = [int(await asyncio.wait_for(proc.stdout.readline(), 60))
                 for _ in range(kill_after)]
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    async with await EventStore.open(path, node=NODE) as s:
        assert s.last_seq >= acked[-1]
        seqs = [e.seq async for e in s.replay()]
        assert seqs == list(range(1, s.last_seq + 1))  # contiguous, nothing half-written
        # and the store still takes writes after the crash
        assert (await s.append(_hb(0))).seq == s.last_seq


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs (needs root, as on CI); skipped where mounting is not allowed."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                         capture_output=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_disk_full_fails_loudly_loses_nothing_and_recovers(small_disk: Path) -> None:
    path = small_disk / "e.db"
    filler = small_disk / "filler"
    s = await EventStore.open(path, node=NODE)
    acked: list[int] = []
    big = "x" * 2000
    with pytest.raises(StoreError, match="disk is full") as err:
        filler.write_bytes(b"\0" * 1_600_000)
        for i in range(10_000):
            ev = await s.append(intent(f"c{i}-{big}", counter=i + 1))
            acked.append(ev.seq)
    assert str(path) in str(err.value) and f"Nothing after seq {acked[-1]}" in str(err.value)
    with pytest.raises(StoreError):  # the store refuses writes until reopened
        await s.append(_hb(1))
    await s.close()
    filler.unlink()  # space returns
    async with await EventStore.open(path, node=NODE) as s2:
        assert [e.seq async for e in s2.replay()] == acked
        assert (await s2.append(_hb(2))).seq == acked[-1] + 1


async def test_read_only_disk_gives_a_clear_error_and_touches_nothing(small_disk: Path) -> None:
    path = small_disk / "e.db"
    async with await EventStore.open(path, node=NODE) as s:
        await s.append(_hb(1))
    before = path.read_bytes()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(StoreError, match=r"read-only|cannot create lock file") as err:
        await EventStore.open(path, node=NODE)
    assert str(path) in str(err.value)
    assert path.read_bytes() == before


async def test_concurrent_appends_keep_strict_order(store: EventStore) -> None:
    async def writer(tag: str) -> list[int]:
        return [(await store.append(intent(f"{tag}{i}", bot=tag))).seq for i in range(50)]

    results = await asyncio.gather(*(writer(t) for t in "abcd"))
    flat = sorted(s for r in results for s in r)
    assert flat == list(range(1, 201))
    assert all(r == sorted(r) for r in results)
    assert isinstance((await store.query(limit=1))[0], OrderIntent)


async def test_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"directory .*nope does not exist"):
        await EventStore.open(tmp_path / "nope" / "e.db", node=NODE)


def _numbered(events: list[Heartbeat], first: int) -> list[Heartbeat]:
    return [msgspec.structs.replace(e, seq=first + i) for i, e in enumerate(events)]


async def test_bulk_appender_commits_batches_in_order_from_its_process(tmp_path: Path) -> None:
    """Batches larger than one multi-row INSERT (1,024 rows) and a synced last batch: every
    event lands once, with its seq, in order; the store's last_seq follows; a batch that does
    not start at the next seq is refused before anything is written."""
    path = tmp_path / "bulk.db"
    async with await EventStore.open(path, node=NODE) as s:
        await s.append(intent("c0"))
        bulk = s.bulk_appender()
        first = _numbered([_hb(i) for i in range(2_500)], 2)
        second = _numbered([_hb(i) for i in range(2_500, 2_503)], 2_502)
        refused = r"seq 2503\.\.2503: must be non-empty and start at 2$"
        with pytest.raises(ValueError, match=refused):
            bulk.hand_over(second[1:2], sync=False)
        futures = [bulk.hand_over(first, sync=False), bulk.hand_over(second, sync=True)]
        await asyncio.gather(*futures)
        assert s.last_seq == 2_504
        with pytest.raises(ValueError, match="start at 2505"):
            bulk.hand_over([], sync=True)
        await bulk.close()
        # the writer added the lookups of what it wrote, and of what was before it
        assert read_rows(path, "SELECT value FROM meta WHERE key = 'keys_seq'") == [("2504",)]
        assert [e.seq for e in await s.query(client_order_id="c0")] == [1]
        assert (await s.append(_hb(0))).seq == 2_505  # the store writes on after it
    async with await EventStore.open(path, readonly=True) as ro:
        events = [e async for e in ro.replay()]
    assert [e.seq for e in events] == list(range(1, 2_506))
    assert events[1:2_504] == first + second


async def test_bulk_appender_failure_is_raised_and_loses_nothing_committed(
    small_disk: Path,
) -> None:
    path = small_disk / "bulk.db"
    s = await EventStore.open(path, node=NODE)
    bulk = s.bulk_appender()
    ok = _numbered([_hb(i) for i in range(100)], 1)
    await bulk.hand_over(ok, sync=True)
    (small_disk / "filler").write_bytes(b"\0" * 1_900_000)
    big = [intent(f"c{i}-{'x' * 2000}", counter=i + 1) for i in range(500)]
    failed = bulk.hand_over(_numbered(big, 101), sync=False)  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="disk is full") as err:
        await failed
    assert "Nothing after seq 100" in str(err.value)
    later = bulk.hand_over(_numbered([_hb(1)], 601), sync=True)
    with pytest.raises(StoreError, match="disk is full"):  # refuses writes until reopened
        await later
    await bulk.close()
    await s.close()
    (small_disk / "filler").unlink()
    async with await EventStore.open(path, node=NODE) as s2:
        assert [e.seq async for e in s2.replay()] == list(range(1, 101))


async def test_bulk_appender_whose_writer_dies_says_so_and_loses_nothing_committed(
    tmp_path: Path,
) -> None:
    """The writer process killed between batches: the next batch raises a StoreError that
    names the writer (no traceback, no hang), the store refuses writes, and every batch
    committed before is in the file after a reopen."""
    path = tmp_path / "dead.db"
    s = await EventStore.open(path, node=NODE)
    bulk = s.bulk_appender()
    await bulk.hand_over(_numbered([_hb(i) for i in range(50)], 1), sync=True)
    os.kill(bulk.pid, signal.SIGKILL)
    with pytest.raises(StoreError, match=r"writer process stopped \(exit status -9\); "
                                         r"nothing after seq 50 was written"):
        await bulk.hand_over(_numbered([_hb(i) for i in range(50)], 51), sync=True)
    with pytest.raises(StoreError, match="writer process stopped"):
        await s.append(_hb(0))
    await bulk.close()
    await s.close()
    async with await EventStore.open(path, node=NODE) as s2:
        assert [e.seq async for e in s2.replay()] == list(range(1, 51))


def test_rows_read_from_a_batch_message_are_the_rows_of_its_events() -> None:
    """The writer process builds rows from the message without decoding the events: the
    same columns and payload bytes as event_row, for events with and without a symbol and
    a client_order_id, and for empty ones (stored as NULL)."""
    made = [intent("c1"), fill("c1", "t1", qty="1", price="10"), accepted("c1"), _hb(4),
            msgspec.structs.replace(_hb(5), bot=""), intent("c2", symbol="")]
    events = [msgspec.structs.replace(e, seq=i) for i, e in enumerate(made, 1)]
    rows = payload_rows(msgspec.msgpack.encode(WriteBatch(events, True)))  # type: ignore[arg-type]
    assert rows == [event_row(e) for e in events]
    assert [r[5] for r in rows] == ["AAPL", "AAPL", None, None, None, None]


@pytest.mark.parametrize(("many", "at", "written"), [
    (0, "INSERT", True),  # append: cancelled while its INSERT runs
    (2, "INSERT", True),  # append_many of a few: one multi-row INSERT, it lands
    (1_500, "BEGIN IMMEDIATE", False),  # append_many of more: the batch is rolled back
    (1_500, "executemany", False),
    (1_500, "COMMIT", True),  # the COMMIT was already in SQLite's queue: it lands
])
async def test_a_cancelled_append_leaves_the_store_consistent_and_writing(
    store: EventStore, many: int, at: str, written: bool
) -> None:
    """A task cancelled while a statement of its append is in SQLite's thread (agent
    shutdown, a bot stopped mid-submit): the event or the whole batch is stored or not,
    ``last_seq`` says which, and the next append gets the next seq, instead of reusing a
    committed one, failing, and refusing every write after it. A batch of up to 1,024
    events is one statement; a larger one is a transaction of statements."""
    await store.append(_hb(1))
    db = store._db
    run_sql, run_many = db.execute_fetchall, db.executemany
    task: asyncio.Future[object]

    async def sql(statement: str, *args: object) -> object:
        if statement.startswith(at):
            task.cancel()  # thrown at the await below: the statement is queued by then
        return await run_sql(statement, *args)

    async def many_rows(statement: str, rows: object) -> object:
        if at == "executemany":
            task.cancel()
        return await run_many(statement, rows)

    db.execute_fetchall, db.executemany = sql, many_rows  # type: ignore[method-assign,assignment]
    try:
        task = asyncio.ensure_future(
            store.append_many([_hb(2 + i) for i in range(many)]) if many
            else store.append(_hb(2)))
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        db.execute_fetchall, db.executemany = run_sql, run_many  # type: ignore[method-assign]
    assert not db.in_transaction  # nothing left open to swallow the next writes
    last = (1 + max(many, 1)) if written else 1
    assert [e.seq async for e in store.replay()] == list(range(1, last + 1))
    assert store.last_seq == last
    assert (await store.append(_hb(9))).seq == last + 1


# --- lookups by bot, symbol and client_order_id (event_keys up to its watermark) -------------


def _mixed(n: int, start: int = 0) -> list[Event]:
    """``n`` orders of 3 bots on 2 symbols, with a bot-level heartbeat now and then."""
    out: list[Event] = []
    for i in range(start, start + n):
        bot, sym, cid = f"bot{i % 3}", ("AAPL", "MSFT")[i % 2], f"c{i}"
        out += [intent(cid, bot=bot, symbol=sym, counter=i + 1, ts=1_000 + i),
                submitted(cid, ts=1_100 + i, bot=bot),
                fill(cid, f"t{i}", qty="1", price="10", bot=bot, symbol=sym, ts=1_200 + i)]
        if i % 5 == 0:
            out.append(Heartbeat(node=NODE, bot=bot, ts_event=1_300 + i, ts_init=1_300 + i,
                                 role="agent"))
    return out


_FILTERS: list[dict[str, Any]] = [
    {"bot": "bot1"}, {"bot": "nobody"}, {"bot": ""}, {"symbol": "MSFT"},
    {"client_order_id": "c7"}, {"client_order_id": "c55"},
    {"bot": "bot2", "symbol": "AAPL"}, {"bot": "bot0", "kind": "Fill"},
    {"bot": "bot1", "kind": ("OrderIntent", "Fill"), "since_ns": 1_020},
    {"symbol": "AAPL", "after_seq": 100}, {"client_order_id": "c12", "bot": "bot0"},
    {"bot": "bot1", "until_ns": 1_150},
]


def _scanned(events: list[AnyEvent], f: dict[str, Any]) -> list[AnyEvent]:
    kinds = f.get("kind")
    kinds = (kinds,) if isinstance(kinds, str) else kinds
    return [e for e in events
            if all(getattr(e, k, None) == f[k] for k in ("bot", "symbol", "client_order_id")
                   if k in f)
            and (kinds is None or type(e).__name__ in kinds)
            and e.ts_event >= f.get("since_ns", 0)
            and e.ts_event < f.get("until_ns", 1 << 62) and e.seq > f.get("after_seq", 0)]


async def _agree(store: EventStore) -> None:
    every = [e async for e in store.replay()]
    for f in _FILTERS:
        want = _scanned(every, f)
        assert await store.query(**f) == want, f
        assert await store.query(**f, newest_first=True, limit=4) == want[::-1][:4], f
        assert await store.query(**f, limit=3) == want[:3], f


async def test_lookups_by_key_agree_with_a_scan_on_both_sides_of_the_watermark(
        tmp_path: Path) -> None:
    """Queries by bot, symbol or client_order_id read event_keys up to its watermark and
    the events above it: every query gives what a scan of all events gives, wherever the
    watermark is, on the writer and on a read-only reader."""
    path = tmp_path / "keys.db"
    async with await EventStore.open(path, node=NODE) as store:
        await store.append_many(_mixed(40))
        assert await store.index_keys(max_events=50) == 50  # part of them
        await store.append_many(_mixed(30, start=40))  # and more above the watermark
        assert read_rows(path, "SELECT value FROM meta WHERE key = 'keys_seq'") == [("50",)]
        await _agree(store)
        reader = await EventStore.open(path, readonly=True)
        try:
            await _agree(reader)
            assert await reader.index_keys() == 0  # a reader adds nothing
        finally:
            await reader.close()
        assert await store.index_keys(max_events=None) == store.last_seq - 50
        assert await store.index_keys() == 0
        await _agree(store)
        await store.append_many(_mixed(5, start=70))
        last = store.last_seq
    # closing brings the keys up to date
    assert read_rows(path, "SELECT value FROM meta WHERE key = 'keys_seq'") == [(str(last),)]
    assert read_rows(path, "SELECT count(*) FROM event_keys WHERE field = 2") == [(3 * 75,)]
    indexes = {r[1] for r in read_rows(path, "PRAGMA index_list(events)")}
    assert not indexes & {"events_bot", "events_symbol", "events_cid"}, indexes


async def test_recovery_drops_the_keys_of_the_events_it_removes(tmp_path: Path) -> None:
    async with await EventStore.open(tmp_path / "r.db", node=NODE) as store:
        await store.append_many(_mixed(20))
        await store.index_keys(max_events=None)
        await store.replace_after(30, [intent("c999", bot="bot1", counter=999)])
        assert [e.seq for e in await store.query(bot="bot1")][-1] == 31
        assert await store.query(client_order_id="c15") == []
        assert read_rows(tmp_path / "r.db", "SELECT value FROM meta WHERE key = 'keys_seq'") == [
            ("30",)]
        await _agree(store)


@pytest.mark.parametrize("at", [
    "PRAGMA synchronous=NORMAL", "BEGIN IMMEDIATE", "INSERT OR IGNORE INTO event_keys",
    "UPDATE meta", "COMMIT", "PRAGMA synchronous=FULL"])
async def test_a_cancelled_index_round_stays_cancelled_and_leaves_the_store_writing(
        tmp_path: Path, at: str) -> None:
    """The agent cancels its index task at shutdown, maybe in the middle of a round: the
    cancellation goes on (the task ends and the agent can stop) instead of turning into a
    store error that fails the store and that the task's loop outlives; nothing is left
    open, the connection fsyncs again (synchronous=FULL), and lookups stay complete."""
    async with await EventStore.open(tmp_path / "c.db", node=NODE) as store:
        await store.append_many(_mixed(30))
        db = store._db
        run_sql = db.execute_fetchall
        task: asyncio.Future[int]

        async def sql(statement: str, *args: object) -> object:
            if statement.startswith(at):
                task.cancel()  # thrown at the await below: the statement is queued by then
            return await run_sql(statement, *args)

        db.execute_fetchall = sql  # type: ignore[method-assign,assignment]
        try:
            task = asyncio.ensure_future(store.index_keys(max_events=None))
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            db.execute_fetchall = run_sql  # type: ignore[method-assign]
        assert not db.in_transaction
        assert [tuple(r) for r in await db.execute_fetchall("PRAGMA synchronous")] == [(2,)]
        await store.append_many(_mixed(5, start=30))
        await _agree(store)
        await store.index_keys(max_events=None)
        await _agree(store)


async def test_commits_leave_the_wal_checkpoint_to_the_quiet_time_caller(
        tmp_path: Path) -> None:
    """A commit no longer copies the WAL into the main file every 1,000 pages (SQLite's
    default, which ran inside whichever commit crossed it); :meth:`EventStore.checkpoint`
    does, when the agent finds its store quiet."""
    db = tmp_path / "events.db"
    store = await EventStore.open(db, node=NODE)
    try:
        for b in range(12):  # ~12,000 intents: well over 1,000 WAL pages
            await store.append_many([intent(f"c{b}-{i}", counter=b * 1000 + i)
                                     for i in range(1000)])
        pages = int(str(read_rows(db, "PRAGMA page_count")[0][0]))
        assert pages > 1_000
        assert main_file_rows(db, "SELECT max(seq) FROM events") == [(None,)]
        copied = await store.checkpoint()
        assert copied > 1_000
        assert main_file_rows(db, "SELECT max(seq) FROM events") == [(12_000,)]
        assert await store.checkpoint() == copied  # the WAL's count: nothing new since
    finally:
        await store.close()
    ro = await EventStore.open(db, readonly=True)
    try:
        assert await ro.checkpoint() == 0  # a reader never writes
    finally:
        await ro.close()
