"""Outbox → JetStream on a real nats-server: ordered, Msg-Id dedup, survives outages."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from qtd.bus import EVENTS_STREAM, EmbeddedNatsServer, Subjects, connect, ensure_jetstream
from qtd.errors import TemporaryError
from qtd.events import from_json
from qtd.outbox import Outbox
from qtd.store import EventStore
from tests.factories import fill, intent
from tests.integration.conftest import bus_config


async def _stream_events(js: JetStreamContext) -> list[tuple[str, str, int]]:
    """(subject, Msg-Id, seq) of every message in the stream, in stream order."""
    info = await js.stream_info(EVENTS_STREAM)
    sub = await js.pull_subscribe(">", stream=EVENTS_STREAM)
    out = []
    while len(out) < info.state.messages:
        for m in await sub.fetch(min(100, info.state.messages - len(out)), timeout=5):
            out.append((m.subject, m.headers["Nats-Msg-Id"], from_json(m.data).seq))
            await m.ack()
    await sub.unsubscribe()
    return out


async def _fill_store(store: EventStore, n: int) -> None:
    for i in range(n):
        await store.append(intent(f"c{i}", counter=i + 1))
        await store.append(fill(f"c{i}", f"t{i}", qty="1", price="10"))


async def test_publishes_in_seq_order_with_msg_ids_and_moves_the_watermark(
    store: EventStore, nats_client: Client
) -> None:
    js = nats_client.jetstream()
    await ensure_jetstream(js)
    await _fill_store(store, 300)
    box = Outbox(store, js, Subjects(), batch=64)
    assert await box.pending() == 600
    assert await box.flush() == 600
    assert await store.watermark() == 600 and await box.pending() == 0
    got = await _stream_events(js)
    assert [seq for _, _, seq in got] == list(range(1, 601))
    assert got[0] == ("qtd.evt.node-a.bot1.OrderIntent", f"node-a:{store.incarnation}:1", 1)
    assert got[1][0] == "qtd.evt.node-a.bot1.Fill"
    assert await box.flush() == 0  # nothing pending: nothing re-sent


async def test_resend_after_crash_before_watermark_is_deduplicated(
    store: EventStore, nats_client: Client
) -> None:
    js = nats_client.jetstream()
    await ensure_jetstream(js)
    await _fill_store(store, 50)
    box = Outbox(store, js, Subjects())
    events = await store.query()
    assert await box._publish_round(events) == 100  # acked, but "crashed" before watermark
    assert await store.watermark() == 0
    fresh = Outbox(store, js, Subjects())  # the restarted agent
    assert await fresh.flush() == 100
    assert fresh.duplicates == 100
    assert len(await _stream_events(js)) == 100  # each event exactly once in the stream


@pytest.mark.slow
async def test_nats_outage_keeps_events_and_catches_up(
    store: EventStore, nats_server: EmbeddedNatsServer
) -> None:
    nc = await connect(bus_config(nats_server))
    try:
        js = nc.jetstream()
        await ensure_jetstream(js)
        await _fill_store(store, 20)
        box = Outbox(store, js, Subjects(), ack_timeout_s=0.5)
        assert await box.flush() == 40
        await nats_server.stop()
        await _fill_store(store, 10)  # trading goes on while NATS is away
        with pytest.raises(TemporaryError, match="will re-send from seq 41"):
            await box.flush()
        assert await store.watermark() == 40
        await nats_server.start()  # same port, same JetStream store
        for _ in range(100):
            try:
                await box.flush()
                break
            except TemporaryError:
                await asyncio.sleep(0.1)  # the client is still reconnecting
        assert await store.watermark() == 60
        assert [s for _, _, s in await _stream_events(js)] == list(range(1, 61))
    finally:
        await nc.close()
