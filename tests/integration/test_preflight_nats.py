"""``qtd preflight`` against real nats-servers: one without auth (what the rows say when the
stream, the KV bucket and auth are missing) and the shipped etc/nats-server.conf with
passwords (auth on, the agent's password read from ``$CREDENTIALS_DIRECTORY``, the kill
switch round trip written by the leader's user and read back by the agent's)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from qtd.agent.config import load_agent_config
from qtd.bus import BusConfig, EmbeddedNatsServer, connect, ensure_jetstream
from qtd.preflight import PreflightOptions, failed, run_preflight
from tests.integration.test_nats_acl import PASSWORDS, _server
from tests.unit.test_preflight import _deploy


def _rows(checks: list) -> dict[str, str]:  # type: ignore[type-arg]
    return {c.name: c.status for c in checks}


async def test_rows_follow_jetstream_setup_and_auth_off_fails(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    path = _deploy(tmp_path)
    path.write_text(path.read_text() + f'\n[bus]\nservers = ["{nats_server.url}"]\n')
    cfg = load_agent_config(path)

    before = _rows(await run_preflight(cfg, min_free_bytes=1))
    assert before["NATS reachable"] == "ok"
    assert before["stream QTD_EVENTS"] == "FAIL"
    assert before["KV bucket qtd_control"] == "FAIL"
    assert before["kill switch round trip"] == "FAIL"
    assert before["NATS auth on"] == "FAIL"  # this server lets anybody in

    await ensure_jetstream(nats_client.jetstream())
    after = await run_preflight(cfg, min_free_bytes=1)
    rows = _rows(after)
    assert rows["stream QTD_EVENTS"] == rows["KV bucket qtd_control"] == "ok"
    assert rows["kill switch round trip"] == "ok" and rows["clock vs NATS server"] == "ok"
    assert [c.name for c in after if c.status == "FAIL"] == ["NATS auth on"]
    kv = await nats_client.jetstream().key_value("qtd_control")
    with pytest.raises(KeyNotFoundError):  # the kill key was never written: nothing halted
        await kv.get("kill")


@pytest.fixture
def credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "credentials"
    d.mkdir()
    (d / "nats-agent-password").write_text(PASSWORDS["agent-node-a"] + "\n")
    (d / "nats-agent-password").chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(d))
    return d


async def test_shipped_server_config_passes_with_the_leader_writing_the_test_key(
    tmp_path: Path, credentials: Path
) -> None:
    (tmp_path / "nats").mkdir()
    async with _server(tmp_path / "nats") as url:
        leader_bus = BusConfig(servers=(url,), user="leader", password=PASSWORDS["leader"])
        leader = await connect(leader_bus)
        try:
            await ensure_jetstream(leader.jetstream())
            (tmp_path / "agent").mkdir()
            path = _deploy(tmp_path / "agent")
            path.write_text(path.read_text().replace('node = "node-t"', 'node = "node-a"')
                            + f'\n[bus]\nservers = ["{url}"]\nuser = "agent-node-a"\n'
                            'password_credential = "nats-agent-password"\n')
            cfg = load_agent_config(path)

            alone = _rows(await run_preflight(cfg, min_free_bytes=1))
            assert alone["NATS reachable"] == "ok" and alone["NATS auth on"] == "ok"
            assert alone["stream QTD_EVENTS"] == alone["KV bucket qtd_control"] == "ok"
            # an agent user may not write the control bucket: the row says how to time it
            assert alone["kill switch round trip"] == "skipped"

            checks = await run_preflight(cfg, options=PreflightOptions(
                min_free_bytes=1, control_bus=leader_bus))
            rows = _rows(checks)
            assert rows["kill switch round trip"] == "ok", checks
            assert rows["clock vs NATS server"] == "ok", checks
            assert not failed(checks), checks
            detail = next(c.detail for c in checks if c.name == "kill switch round trip")
            t0 = time.perf_counter()
            await leader.flush()  # reference, same server and run: one core PING/PONG
            print(f"kill switch round trip (leader put -> agent read): {detail}; reference "
                  f"core NATS flush round trip {(time.perf_counter() - t0) * 1e3:.2f} ms")

            operator = BusConfig(servers=(url,), user="operator",
                                 password=PASSWORDS["operator"])
            denied = _rows(await run_preflight(cfg, options=PreflightOptions(
                min_free_bytes=1, control_bus=operator, nats_timeout_s=1.0)))
            assert denied["kill switch round trip"] == "FAIL"  # operators cannot write it
            kv = await leader.jetstream().key_value("qtd_control")
            with pytest.raises(KeyNotFoundError):  # and nobody wrote the real kill key
                await kv.get("kill")
        finally:
            await leader.close()
