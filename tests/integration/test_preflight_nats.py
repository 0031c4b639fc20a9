"""``qtd preflight`` against a real nats-server: reachable, then stream and KV present."""

from __future__ import annotations

from pathlib import Path

from nats.aio.client import Client

from qtd.agent.config import load_agent_config
from qtd.bus import EmbeddedNatsServer, ensure_jetstream
from qtd.preflight import failed, run_preflight
from tests.unit.test_preflight import _deploy


async def test_stream_and_kv_rows_follow_jetstream_setup(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    path = _deploy(tmp_path)
    path.write_text(path.read_text() + f'\n[bus]\nservers = ["{nats_server.url}"]\n')
    cfg = load_agent_config(path)

    before = {c.name: c.status for c in await run_preflight(cfg, min_free_bytes=1)}
    assert before["NATS reachable"] == "ok"
    assert before["stream QTD_EVENTS"] == "FAIL"
    assert before["KV bucket qtd_control"] == "FAIL"

    await ensure_jetstream(nats_client.jetstream())
    after = await run_preflight(cfg, min_free_bytes=1)
    assert {c.name: c.status for c in after}["stream QTD_EVENTS"] == "ok"
    assert not failed(after), after
