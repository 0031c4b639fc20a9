"""The outbox audit: JetStream loses the tail of a node's acknowledged events (what a NATS
host crash before fsync does); the restarted outbox finds the stream behind its watermark and
re-sends the lost events from the store, in order. Also the pipeline's figures on a real
server: many events in flight, acks collected in order, duplicates counted."""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client

from qtd.bus import EVENTS_STREAM, Subjects, ensure_jetstream
from qtd.outbox import Outbox
from qtd.store import EventStore
from tests.agent_rig import stream_events
from tests.factories import fill, intent


async def _fill_store(store: EventStore, n: int) -> None:
    events = []
    for i in range(n):
        events += [intent(f"c{i}", counter=i + 1), fill(f"c{i}", f"t{i}", qty="1", price="10")]
    await store.append_many(events)


async def test_lost_acknowledged_tail_is_found_and_resent_in_order(
    store: EventStore, nats_client: Client
) -> None:
    js = nats_client.jetstream()
    await ensure_jetstream(js, duplicate_window=0.2)  # the crash also forgets the Msg-Ids
    await _fill_store(store, 50)
    assert await Outbox(store, js, Subjects()).flush() == 100
    assert await store.watermark() == 100
    for stream_seq in range(71, 101):  # the unsynced tail is gone after the "crash"
        await js.delete_msg(EVENTS_STREAM, stream_seq)
    await asyncio.sleep(0.3)
    restarted = Outbox(store, js, Subjects())
    assert await restarted.audit() == 30
    deadline = time.monotonic() + 10
    while await restarted._watermark() < 100 and time.monotonic() < deadline:
        await restarted._step(wait_new=False)
    await restarted._committed()
    got = [ev.seq for _, ev in await stream_events(js)]
    assert got == list(range(1, 101))  # every event once, in order
    assert await Outbox(store, js, Subjects()).audit() == 0  # nothing lost any more


async def test_audit_leaves_a_complete_stream_alone(store: EventStore, nats_client: Client
                                                    ) -> None:
    js = nats_client.jetstream()
    await ensure_jetstream(js)
    await _fill_store(store, 10)
    box = Outbox(store, js, Subjects())
    assert await box.audit() == 0  # nothing acknowledged yet
    assert await box.flush() == 20
    assert await Outbox(store, js, Subjects()).audit() == 0


async def test_a_large_backlog_goes_through_the_window_once_each(
    store: EventStore, nats_client: Client
) -> None:
    js = nats_client.jetstream()
    await ensure_jetstream(js)
    await _fill_store(store, 3000)
    box = Outbox(store, js, Subjects(), window=512, batch=128)
    assert await box.flush() == 6000
    assert box.published == 6000 and box.duplicates == 0
    got = [ev.seq for _, ev in await stream_events(js)]
    assert got == list(range(1, 6001))
