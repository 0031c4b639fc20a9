"""``qtd preflight``'s broker row against the real alpaca-py client and a local Alpaca stub:
keys the venue accepts pass, keys it refuses fail; the keys come from the credentials
directory systemd's ``LoadCredential=`` fills."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qtd.agent.config import load_agent_config
from qtd.preflight import check_broker_credentials
from tests.stubs import StubServer
from tests.stubs.alpaca_stub import AlpacaStub
from tests.unit.test_preflight import _deploy


@pytest.fixture
async def alpaca() -> AsyncIterator[StubServer]:
    venue = AlpacaStub(api_key="good-key")
    server = await StubServer(venue.app).start()
    yield server
    await server.stop()


def _agent(tmp_path: Path, server: StubServer, key: str, monkeypatch: pytest.MonkeyPatch,
           timeout_s: float) -> Path:
    creds = tmp_path / "credentials"
    creds.mkdir()
    env = creds / "alp.env"
    env.write_text(f"ALP_KEY={key}\nALP_SECRET=secret\n")
    env.chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = _deploy(tmp_path)
    cfg.write_text(cfg.read_text() + '\n[accounts.alp]\nbroker = "alpaca"\nmode = "paper"\n'
                   f'base_url = "{server.http_url}"\nstream_url = "{server.ws_url}/stream"\n'
                   'credentials_env = ["ALP_KEY", "ALP_SECRET"]\n'
                   f'connect_timeout_s = {timeout_s}\n')
    return cfg


async def test_keys_the_venue_accepts_pass(
    tmp_path: Path, alpaca: StubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # generous budget: a loaded machine may log in slowly; a refusal never logs in at all
    cfg = load_agent_config(_agent(tmp_path, alpaca, "good-key", monkeypatch, 30.0))
    [row] = await check_broker_credentials(cfg)
    assert row.status == "ok" and row.detail == "accepted by alpaca (paper)", row


async def test_keys_the_venue_refuses_fail(
    tmp_path: Path, alpaca: StubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_agent_config(_agent(tmp_path, alpaca, "revoked-key", monkeypatch, 2.0))
    [row] = await check_broker_credentials(cfg)
    assert row.status == "FAIL" and "no login within 2 s" in row.detail, row
