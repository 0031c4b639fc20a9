"""``qtd preflight`` against real nats-servers: one without auth (what the rows say when the
stream, the KV bucket and auth are missing) and the shipped etc/nats-server.conf (JWT
logins on, the agent's ``.creds`` read from ``$CREDENTIALS_DIRECTORY``, the kill switch
round trip on its own test key with its own login: no other role's secret)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from qtd.agent.config import load_agent_config
from qtd.bus import EmbeddedNatsServer, ensure_jetstream
from qtd.preflight import PreflightOptions, failed, run_preflight
from tests.shipped import creds_for, shipped_nats
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


async def test_shipped_server_config_passes_with_the_agents_own_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with shipped_nats(tmp_path / "nats") as srv:
        creds = tmp_path / "credentials"
        creds.mkdir()
        (creds / "nats.creds").write_bytes(creds_for(srv.url, "agent-node-a").read_bytes())
        (creds / "nats.creds").chmod(0o400)
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
        leader = await srv.connect("leader")
        await ensure_jetstream(leader.jetstream())
        (tmp_path / "agent").mkdir()
        path = _deploy(tmp_path / "agent")
        path.write_text(path.read_text().replace('node = "node-t"', 'node = "node-a"')
                        + f'\n[bus]\nservers = ["{srv.url}"]\n'
                        'creds_credential = "nats.creds"\n')
        cfg = load_agent_config(path)

        checks = await run_preflight(cfg, min_free_bytes=1)
        rows = _rows(checks)
        assert rows["NATS reachable"] == "ok" and rows["NATS auth on"] == "ok"
        assert rows["stream QTD_EVENTS"] == rows["KV bucket qtd_control"] == "ok"
        assert rows["kill switch round trip"] == "ok", checks
        assert rows["clock vs NATS server"] == "ok", checks
        assert not failed(checks), checks
        detail = next(c.detail for c in checks if c.name == "kill switch round trip")
        t0 = time.perf_counter()
        await leader.flush()  # reference, same server and run: one core PING/PONG
        print(f"kill switch round trip (agent's own login, put -> read back): {detail}; "
              f"reference core NATS flush round trip {(time.perf_counter() - t0) * 1e3:.2f} ms")
        kv = await leader.jetstream().key_value("qtd_control")
        with pytest.raises(KeyNotFoundError):  # nobody wrote the real kill key
            await kv.get("kill")

        # another node's login may not write node-a's test key: the row says so
        (creds / "nats.creds").chmod(0o600)
        (creds / "nats.creds").write_bytes(creds_for(srv.url, "agent-node-b").read_bytes())
        other = _rows(await run_preflight(cfg, options=PreflightOptions(
            min_free_bytes=1, nats_timeout_s=1.0)))
        assert other["kill switch round trip"] == "FAIL"
