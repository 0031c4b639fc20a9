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
from qtd.events import Side, to_json
from qtd.leader import FleetDB, Leader
from qtd.leader.config import IngestConfig
from qtd.leader.ingest import Ingestor, open_consumer
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
        leader = Leader(cfg)
        await leader.start()
        trading = asyncio.create_task(_trade(peers, 80))
        await wait_for(lambda: leader.ingestor.ingested > 300, what="first events ingested")
        await _crash(leader)
        await _resend_outside_jetstream_dedup(peers[0], 60)
        await trading
        async with Leader(cfg) as again:
            await wait_for(lambda: _caught_up(again, peers), what="leader caught up")
            await asyncio.sleep(0.2)  # anything still in flight would show up now
            for p in peers:
                want = await _positions(p)
                got = sorted((x.as_tuple() for x in
                              again.view.projections[p.node].positions.values()), key=str)
                assert got == want, p.node
                assert await again.db.count(p.node) == await p.store.count()
            assert again.db.duplicates >= 60
            snap = again.view.snapshot()
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

    def crash(events: object) -> None:
        raise Crash

    sub = await open_consumer(js, Subjects(), cfg, db.stream_seq)
    with contextlib.suppress(Crash):
        await Ingestor(js, Subjects(), cfg, db, crash).step(sub)
    await sub.unsubscribe()
    assert (await js.consumer_info(EVENTS_STREAM, cfg.durable)).num_ack_pending == 40
    seen: list[int] = []
    ing = Ingestor(js, Subjects(), cfg, db, lambda evs: seen.extend(e.seq for e in evs))
    sub = await open_consumer(js, Subjects(), cfg, db.stream_seq)
    while db.stream_seq < 100:
        with contextlib.suppress(nats.errors.TimeoutError):
            await ing.step(sub)
    await sub.unsubscribe()
    assert seen == list(range(41, 101))  # redelivered batch came first, in order, dropped
    assert db.duplicates == 40 and await db.count() == 100
    await db.close()
