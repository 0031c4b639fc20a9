"""Leader ingest on a real nats-server: fleet aggregates equal the agents' own stores, and a
leader crash (mid-stream, or between commit and ack) never double-counts."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import msgspec
import nats.errors
from nats.aio.client import Client

from qtd.aio import cancel_and_wait
from qtd.bus import EVENTS_STREAM, EmbeddedNatsServer, Subjects, ensure_jetstream
from qtd.events import AnyEvent, Side, to_json
from qtd.leader import FleetDB
from qtd.leader.config import IngestConfig
from qtd.leader.daemon import Leader, running_leader, start_leader
from qtd.leader.ingest import DeliveryGap, Ingestor, open_consumer
from qtd.projections import Projections
from tests.integration.leader_peer import FakeAgent, agents, leader_config, wait_for

NODES = ["node-a", "node-b", "node-c"]


async def _trade(peers: list[FakeAgent], rounds: int) -> None:
    for i in range(rounds):
        for k, p in enumerate(peers):
            side = Side.BUY if (i + k) % 3 else Side.SELL
            await p.trade(f"bot{i % 2}", "SPY" if i % 2 else "QQQ", side, "2", f"{100 + i % 7}")
        await asyncio.sleep(0.002)


async def _positions(p: FakeAgent) -> list[tuple[object, ...]]:
    proj = await Projections().rebuild(p.store.replay_batches())
    return sorted((x.as_tuple() for x in proj.positions.values()), key=str)


def _caught_up(leader: Leader, peers: list[FakeAgent]) -> bool:
    marks = leader.db.marks()
    return all(marks.get((p.node, p.store.incarnation)) == p.store.last_seq for p in peers)


async def _crash(leader: Leader) -> None:
    """Kill the leader's tasks where they stand: no drain, no final ack."""
    assert leader._main is not None
    await cancel_and_wait(leader._main)
    await leader.tasks.drain(0.5)
    await leader.nc.close()
    await leader.db.close()


async def _resend_outside_jetstream_dedup(p: FakeAgent, n: int) -> None:
    """Re-send stored events under the same origin but a Msg-Id spelling JetStream has not
    seen (``seq`` zero-padded), as a re-send after the duplicate window would arrive."""
    js = p.nc.jetstream()
    for ev in await p.store.query(limit=n):
        headers = {"Nats-Msg-Id": f"{p.node}:{p.store.incarnation}:0{ev.seq}"}
        await js.publish(Subjects().evt(ev.node, ev.bot, type(ev).__name__), to_json(ev),
                         headers=headers)


async def test_restart_mid_stream_aggregates_equal_agents_stores(
    tmp_path: Path, nats_server: EmbeddedNatsServer
) -> None:
    cfg = leader_config(tmp_path, nats_server)
    async with agents(tmp_path, nats_server, NODES) as peers:
        leader = await start_leader(cfg)
        trading = asyncio.create_task(_trade(peers, 80))
        await wait_for(lambda: leader.ingestor.ingested > 300, what="first events ingested")
        await _crash(leader)
        await _resend_outside_jetstream_dedup(peers[0], 60)
        await trading
        async with running_leader(cfg) as again:
            await wait_for(lambda: _caught_up(again, peers), what="leader caught up")
            await asyncio.sleep(0.2)  # anything still in flight would show up now
            for p in peers:
                want = await _positions(p)
                got = sorted((x.as_tuple() for x in
                              again.view.projections[p.node].positions.values()), key=str)
                assert got == want, p.node
                assert await again.db.count(p.node) == await p.store.count()
            assert again.db.duplicates >= 60
            snap = again.status.snapshot()
            assert snap.totals.fills == sum(p.counter for p in peers)
            assert snap.totals.orders == snap.totals.fills
            assert {n.node for n in snap.nodes} == set(NODES)
            msgspec.json.encode(snap)


async def test_commit_without_ack_is_redelivered_first_and_dropped(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    js = nats_client.jetstream()
    await ensure_jetstream(js)
    peer = await FakeAgent("node-a", tmp_path, nats_server).start()
    try:
        for i in range(25):  # 100 events
            await peer.trade("bot1", "SPY", Side.BUY, "1", str(100 + i))
        await peer.outbox.flush()
    finally:
        await peer.stop()
    db = await FleetDB.open(tmp_path / "fleet.db")
    cfg = IngestConfig(batch=40, fetch_timeout_s=0.2)

    class Crash(Exception):
        pass

    committed: list[int] = []

    def crash(events: list[AnyEvent]) -> None:
        committed.extend(e.seq for e in events)
        raise Crash

    b = await open_consumer(js, Subjects(), cfg, db.stream_seq)
    with contextlib.suppress(Crash):
        await Ingestor(js, Subjects(), cfg, db, crash).step(b)  # a batch of up to 40
    await b.sub.unsubscribe()
    k = len(committed)
    assert 0 < k <= 40 and committed == list(range(1, k + 1))
    assert (await js.consumer_info(EVENTS_STREAM, cfg.durable)).num_ack_pending >= k
    seen: list[int] = []
    ing = Ingestor(js, Subjects(), cfg, db, lambda evs: seen.extend(e.seq for e in evs))
    b = await ing.bind()
    while db.stream_seq < 100:
        with contextlib.suppress(nats.errors.TimeoutError, TimeoutError):
            await ing.step(b)
    await b.sub.unsubscribe()
    assert seen == list(range(k + 1, 101))  # redelivered batch came first, in order, dropped
    assert db.duplicates == k and await db.count() == 100
    await db.close()


async def _publish_trades(tmp: Path, server: EmbeddedNatsServer, js: object, trades: int
                          ) -> None:
    await ensure_jetstream(js)  # type: ignore[arg-type]
    peer = await FakeAgent("node-a", tmp, server).start()
    try:
        for i in range(trades):  # 4 events each
            await peer.trade("bot1", "SPY", Side.BUY, "1", str(100 + i))
        await peer.outbox.flush()
    finally:
        await peer.stop()


async def test_deliveries_lost_client_side_are_fetched_again_not_acked_unseen(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    """AckPolicy.ALL acks everything below the acked message: a delivery that never reached
    the ingestor must stop the ack, and come again at once (ack_wait is 10 min here)."""
    js = nats_client.jetstream()
    await _publish_trades(tmp_path, nats_server, js, 25)  # 100 events
    db = await FleetDB.open(tmp_path / "fleet.db")
    cfg = IngestConfig(batch=20, fetch_timeout_s=0.2, ack_wait_s=600.0)
    seen: list[int] = []
    ing = Ingestor(js, Subjects(), cfg, db, lambda evs: seen.extend(e.seq for e in evs))
    b = await ing.bind()
    lost = await b.sub.fetch(10, timeout=2)  # delivered, never handed to the ingestor
    assert 0 < len(lost) <= 10
    gaps: list[tuple[int, int]] = []
    async with asyncio.timeout(30):  # hang guard
        while db.stream_seq < 100:
            try:
                await ing.step(b)
            except (nats.errors.TimeoutError, TimeoutError):
                pass
            except DeliveryGap as gap:
                gaps.append((gap.expected, gap.got))
                await b.sub.unsubscribe()
                b = await ing.bind()
    await b.sub.unsubscribe()
    assert gaps == [(1, len(lost) + 1)] and seen == list(range(1, 101))  # none skipped
    assert db.duplicates == 0 and await db.count() == 100
    await db.close()


async def test_redelivery_after_ack_wait_is_not_double_counted(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    js = nats_client.jetstream()
    await _publish_trades(tmp_path, nats_server, js, 25)  # 100 events
    db = await FleetDB.open(tmp_path / "fleet.db")
    cfg = IngestConfig(batch=40, fetch_timeout_s=0.2, ack_wait_s=1.0)
    seen: list[int] = []
    fail = [True]

    def on_events(evs: list[AnyEvent]) -> None:
        seen.extend(e.seq for e in evs)
        if fail.pop() if fail else False:
            raise RuntimeError("committed, then the ack never happened")

    ing = Ingestor(js, Subjects(), cfg, db, on_events)
    b = await ing.bind()
    with contextlib.suppress(RuntimeError):
        await ing.step(b)  # events 1..k (k <= 40) committed and applied, not acked
    k = len(seen)
    assert 0 < k <= 40 and seen == list(range(1, k + 1))
    await asyncio.sleep(2 * cfg.ack_wait_s)  # no fetch (no ack) until the redelivery is due
    async with asyncio.timeout(30):  # hang guard
        while db.duplicates < k or db.stream_seq < 100:
            with contextlib.suppress(nats.errors.TimeoutError, TimeoutError):
                await ing.step(b)
    await b.sub.unsubscribe()
    assert seen == list(range(1, 101))  # each event applied once
    assert db.duplicates >= k and await db.count() == 100  # redeliveries dropped
    view = Projections()
    for batch in [e async for e in db.replay_batches()]:
        for ev in batch:
            view.apply(ev)
    [pos] = view.positions.values()
    assert pos.qty == 25  # 25 fills of 1, none counted twice
    await db.close()


async def test_a_fleet_db_behind_its_consumer_is_refilled_from_the_stream(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    """Commits lost after the ack (fsync = false and a power cut), a restored backup or a new
    file: the consumer is rewound to fleet.db's own stream position."""
    js = nats_client.jetstream()
    await _publish_trades(tmp_path, nats_server, js, 10)  # 40 events
    cfg = IngestConfig(batch=15, fetch_timeout_s=0.2)
    for name in ("fleet.db", "new.db"):
        db = await FleetDB.open(tmp_path / name)
        ing = Ingestor(js, Subjects(), cfg, db, lambda evs: None)
        b = await ing.bind()
        async with asyncio.timeout(30):  # hang guard
            while db.stream_seq < 40:
                with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
                    await ing.step(b)
        await b.sub.unsubscribe()
        assert await db.count() == 40 and db.duplicates == 0, name
        await db.close()


async def test_a_changed_ack_wait_reaches_the_existing_consumer(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    js = nats_client.jetstream()
    await ensure_jetstream(js)
    db = await FleetDB.open(tmp_path / "fleet.db")
    for ack_wait in (30.0, 5.0):  # the old default, then the new one
        cfg = IngestConfig(ack_wait_s=ack_wait)
        b = await Ingestor(js, Subjects(), cfg, db, lambda evs: None).bind()
        await b.sub.unsubscribe()
        info = await js.consumer_info(EVENTS_STREAM, cfg.durable)
        assert info.config.ack_wait == ack_wait
    await db.close()
