"""Market-open bursts on a real SQLite store: the intents approved in one event-loop turn
share one commit (counted in the store's own WAL file), each is durable before its broker
call, the broker calls start in approval order (so per account too) and a slow account does
not hold back the others; a SQLite failure in the middle of the batch sends nothing; a
commit's leader cancelled before it committed leaves the others' events to a task."""

from __future__ import annotations

import asyncio
import sqlite3
import struct
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from qtd.brokers.base import SubmitToken
from qtd.brokers.paper import PaperBroker
from qtd.clock import SimClock
from qtd.errors import StoreError
from qtd.events import OrderIntent, OrderSubmitted, OrderType, Side
from qtd.execution import OrderRouter
from qtd.orders import ClientOrderIds, OrderRequest
from qtd.projections import Projections
from qtd.risk import RiskEngine, parse_risk_config
from qtd.store import EventStore
from qtd.store.group import GroupCommit
from tests.factories import submitted

T0 = 1_700_000_000_000_000_000
ACCOUNTS = ("acct1", "acct2", "acct3")
BOTS = tuple(f"bot{i}" for i in range(6))
CFG: dict[str, Any] = {
    "global": {"duplicate_window_s": 0.0, "order_spike_factor": 0.0, "max_data_age_s": 60.0},
    "accounts": {a: {"equity": 1_000_000.0} for a in ACCOUNTS},
    "strategies": {b: {} for b in BOTS},
    "symbols": {"AAPL": {}},
}


def wal_commits(db: Path) -> int:
    """Commit frames of the current WAL generation of ``db`` (frames whose salts match the
    WAL header and whose "database size after commit" field is set; sqlite.org/fileformat2)."""
    wal = db.with_name(db.name + "-wal")
    if not wal.exists():
        return 0
    data = wal.read_bytes()
    if len(data) < 32:
        return 0
    page = struct.unpack(">I", data[8:12])[0]
    salts = data[16:24]
    commits, off = 0, 32
    while off + 24 + page <= len(data):
        header = data[off:off + 24]
        if header[8:16] != salts:
            break
        commits += struct.unpack(">I", header[4:8])[0] != 0
        off += 24 + page
    return commits


class Venue(PaperBroker):
    """The paper broker, recording each order with the commits made and the intents stored
    when it arrived; a ``gate`` holds every send until it is set (a slow venue)."""

    def __init__(self, store: EventStore, log: list[tuple[str, str, int, int]],
                 gate: asyncio.Event | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.store, self.log, self.gate = store, log, gate

    async def submit(self, intent: OrderIntent, token: SubmitToken) -> None:
        stored = len(await self.store.query(kind="OrderIntent"))
        self.log.append((self.account, intent.client_order_id, wal_commits(self.store.path),
                         stored))
        if self.gate is not None:
            await self.gate.wait()
        await super().submit(intent, token)


class Rig:
    def __init__(self, store: EventStore, gate: asyncio.Event | None = None) -> None:
        self.store, self.clock, self.proj = store, SimClock(T0), Projections()
        self.engine = RiskEngine(parse_risk_config(CFG), self.proj, self.clock, store.node)
        self.log: list[tuple[str, str, int, int]] = []
        self.brokers = {a: Venue(store, self.log, gate if a == "acct1" else None, account=a,
                                 node=store.node, clock=self.clock) for a in ACCOUNTS}
        self.router = OrderRouter(store=store, clock=self.clock, risk=self.engine,
                                  cids=ClientOrderIds(store), brokers=self.brokers,
                                  projections=self.proj)

    async def start(self) -> Rig:
        for b in self.brokers.values():
            b.on_price("AAPL", Decimal("100"), T0)
        await self.router.on_market_data("AAPL", Decimal("100"), T0)
        for bot in BOTS:  # each bot's client_order_id counter read from the store once
            await self.router.cids.next(bot)
        return self

    def burst(self) -> list[asyncio.Task[Any]]:
        """18 orders: each of 6 bots sends one to each of 3 accounts, all in one turn."""
        reqs = [OrderRequest(bot=b, account=a, venue="paper", symbol="AAPL", side=Side.BUY,
                             qty=Decimal(1 + i), order_type=OrderType.LIMIT,
                             limit_price=Decimal("50"))
                for i, b in enumerate(BOTS) for a in ACCOUNTS]
        return [asyncio.create_task(self.router.submit(r)) for r in reqs]


async def test_a_burst_costs_one_commit_and_keeps_the_order_per_account(
    store: EventStore,
) -> None:
    rig = await (Rig(store)).start()
    before = wal_commits(store.path)
    out = await asyncio.gather(*rig.burst())
    assert all(isinstance(o, OrderIntent) for o in out)
    # the first broker call saw all 18 intents stored by one commit since the burst began
    # (nothing else is committed before a send); every later call saw them all too
    assert rig.log[0][2:] == (before + 1, 18)
    assert {stored for *_, stored in rig.log} == {18}
    # per account, the venue got the orders in approval order (= store order = seq order)
    for acct in ACCOUNTS:
        sent = [cid for a, cid, _, _ in rig.log if a == acct]
        approved = [o.client_order_id for o in sorted(out, key=lambda o: o.seq)
                    if o.account == acct]
        assert sent == approved and len(sent) == len(BOTS)
    # the outcomes are group-committed too: at most one commit per round of the lanes
    assert wal_commits(store.path) - before <= 1 + len(BOTS)
    assert len(await store.query(kind="OrderSubmitted")) == 18


async def test_a_slow_account_does_not_hold_back_the_others(store: EventStore) -> None:
    gate = asyncio.Event()
    rig = await (Rig(store, gate)).start()
    tasks = rig.burst()
    others = [t for t, i in zip(tasks, range(18), strict=True) if ACCOUNTS[i % 3] != "acct1"]
    slow = [t for t, i in zip(tasks, range(18), strict=True) if ACCOUNTS[i % 3] == "acct1"]
    await asyncio.gather(*others)  # sent and recorded while acct1's venue hangs
    assert not any(t.done() for t in slow)
    assert [a for a, *_ in rig.log].count("acct1") == len(BOTS)  # all sent, none answered
    gate.set()
    await asyncio.gather(*slow)
    submitted = await store.query(kind="OrderSubmitted")
    assert len(submitted) == 18
    assert isinstance(submitted[-1], OrderSubmitted)


async def test_a_store_failure_in_the_middle_of_a_batch_sends_nothing(
    store: EventStore,
) -> None:
    rig = await (Rig(store)).start()
    fail_at = store.last_seq + 7  # the 7th intent of the burst: 6 rows already inserted
    with sqlite3.connect(store.path) as con:  # a real SQLite error inside the transaction
        con.execute(f"CREATE TRIGGER full BEFORE INSERT ON events WHEN NEW.seq = {fail_at} "
                    "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    out = await asyncio.gather(*rig.burst(), return_exceptions=True)
    assert len(out) == 18 and all(isinstance(o, StoreError) for o in out)
    assert rig.log == []  # no broker saw any order of the batch
    assert await store.query(kind="OrderIntent") == []  # rolled back as a whole
    assert not any(b.has_reports() for b in rig.brokers.values())
    with pytest.raises(StoreError):  # the store refuses writes until reopened, as before
        await rig.router.submit(OrderRequest(
            bot="bot0", account="acct2", venue="paper", symbol="AAPL", side=Side.BUY,
            qty=Decimal(1), order_type=OrderType.LIMIT, limit_price=Decimal("50")))
    assert rig.log == []


async def test_a_leader_cancelled_before_its_commit_hands_the_batch_over(
    store: EventStore,
) -> None:
    group = GroupCommit(store.append_many, str(store.path))

    async def one(cid: str) -> Any:
        return await group.durable(group.add(submitted(cid)), gather=True)

    leader = asyncio.create_task(one("c1"))
    others = [asyncio.create_task(one(f"c{i}")) for i in (2, 3, 4)]
    await asyncio.sleep(0)  # all four queued; the leader yields for the rest of the turn
    leader.cancel()
    stored = await asyncio.gather(*others)
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert [e.client_order_id for e in stored] == ["c2", "c3", "c4"]
    assert [e.client_order_id for e in await store.query()] == ["c2", "c3", "c4"]
    assert group.commits == 1
