"""Broker accounts in the agent config: credentials never in the TOML (env, a 0600 env file,
$CREDENTIALS_DIRECTORY), the real python-binance client against the local Binance stub, and
account isolation: a venue account that is down at start never stops the paper bots."""

from __future__ import annotations

import textwrap
import time
from decimal import Decimal
from pathlib import Path

import pytest

from qtd.agent.accounts import load_credentials
from qtd.agent.config import AccountSettings, load_agent_config
from qtd.agent.market import LiveFanout
from qtd.errors import ConfigError
from qtd.events import Fill
from qtd.up.configs import free_port
from tests.agent_rig import running_agent, synthetic_bars, wait_for, write_binance_bot, write_fleet
from tests.stubs import StubServer
from tests.stubs.binance_stub import BinanceStub
from tests.stubs.market_stub import MINUTE_NS, BinanceMarketStub

BN = AccountSettings(broker="binance", credentials_env=["QTD_T_KEY", "QTD_T_SECRET"])


def test_credentials_from_env_file_dir_and_environment(tmp_path: Path) -> None:
    env = tmp_path / "bn.env"
    env.write_text("# binance\nexport QTD_T_KEY=file-key\nQTD_T_SECRET='file secret'\n")
    env.chmod(0o600)
    s = AccountSettings(broker="binance", credentials_env=["QTD_T_KEY", "QTD_T_SECRET"],
                        credentials_file=str(env))
    assert load_credentials("bn1", s, {}) == ("file-key", "file secret")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "bn1.env").write_text("QTD_T_KEY=systemd-key\n")
    (creds / "bn1.env").chmod(0o400)
    got = load_credentials("bn1", s, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert got == ("systemd-key", "file secret")  # first hit wins, per variable
    assert load_credentials("bn1", BN, {"QTD_T_KEY": "k", "QTD_T_SECRET": "s"}) == ("k", "s")


def test_group_or_world_readable_secrets_file_is_refused(tmp_path: Path) -> None:
    env = tmp_path / "bn.env"
    env.write_text("QTD_T_KEY=k\nQTD_T_SECRET=topsecret\n")
    env.chmod(0o644)
    s = AccountSettings(broker="binance", credentials_env=["QTD_T_KEY", "QTD_T_SECRET"],
                        credentials_file=str(env))
    with pytest.raises(ConfigError, match="mode 0644: refused") as err:
        load_credentials("bn1", s, {})
    assert "topsecret" not in str(err.value)


def test_missing_credential_names_the_variable_not_a_value() -> None:
    with pytest.raises(ConfigError, match="credential QTD_T_SECRET not set"):
        load_credentials("bn1", BN, {"QTD_T_KEY": "k"})


def test_venue_account_without_two_credential_variables_is_a_config_error(
    tmp_path: Path
) -> None:
    (tmp_path / "a.toml").write_text('node = "n"\n[accounts.bn1]\nbroker = "binance"\n'
                                     'api_key = "x"\n')
    with pytest.raises(ConfigError, match=r"accounts.*api_key.*unknown field"):
        load_agent_config(tmp_path / "a.toml")
    (tmp_path / "b.toml").write_text('node = "n"\n[accounts.bn1]\nbroker = "binance"\n')
    with pytest.raises(ConfigError, match=r"accounts\.bn1\.credentials_env"):
        load_agent_config(tmp_path / "b.toml")


def _fleet(tmp_path: Path, http_url: str, ws_url: str) -> Path:
    cfg = write_fleet(tmp_path, {"p1": {}, "p2": {}}, market="speed = 6000.0")
    risk = tmp_path / "risk.toml"
    risk.write_text(risk.read_text() + "\n[symbols.BTCUSDT]\n")
    write_binance_bot(tmp_path)
    text = cfg.read_text().replace("[market]", textwrap.dedent(f"""
        [accounts.bn1]
        broker = "binance"
        mode = "paper"
        base_url = "{http_url}/api"
        stream_url = "{ws_url}/ws-api/v3"
        credentials_env = ["QTD_T_KEY", "QTD_T_SECRET"]
        connect_timeout_s = 5.0
        timeout_s = 1.0

        [market]"""))
    cfg.write_text(text + '\n[market.bots.bnbot]\ndataset = "btcusd_1mo"\nspeed = 6000.0\n')
    return cfg


async def test_binance_account_down_at_start_paper_bots_still_trade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QTD_T_KEY", "key")
    monkeypatch.setenv("QTD_T_SECRET", "secret")
    port = free_port()  # nothing listens: the venue is down
    cfg = _fleet(tmp_path, f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}")
    async with running_agent(cfg, items={"goog_1d": synthetic_bars(5000)}) as agent:
        async def both_filled() -> bool:  # a position opens on the intent, before its fill
            return {e.bot for e in await agent.store.query() if isinstance(e, Fill)} \
                >= {"p1", "p2"}
        await wait_for(both_filled)
        failed = dict(agent.failed_accounts)
        refused = dict(agent.refused)
        running = {n: s.state.value for n, s in agent.supervisor.slots.items()}
        fills = [e for e in await agent.store.query() if isinstance(e, Fill)]
    assert set(failed) == {"bn1"} and "paper-main" in agent.brokers
    assert running == {"p1": "RUNNING", "p2": "RUNNING"}
    assert any("'bn1': not connected" in p for ps in refused.values() for p in ps)
    assert {f.bot for f in fills} == {"p1", "p2"}


async def test_binance_account_on_the_stub_connects_with_the_real_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QTD_T_KEY", "key")
    monkeypatch.setenv("QTD_T_SECRET", "secret")
    venue = BinanceStub()
    server = await StubServer(venue.app).start()
    try:
        cfg = _fleet(tmp_path, server.http_url, server.ws_url)
        async with running_agent(cfg, items={"goog_1d": synthetic_bars(5000)}) as agent:
            await wait_for(lambda: any(p.qty for p in agent.proj.positions.values()))
            broker = agent.brokers["bn1"]
            failed = dict(agent.failed_accounts)
            slots = {n: s.state.value for n, s in agent.supervisor.slots.items()}
            rules = set(getattr(broker, "rules", {}))
            venue_name = broker.venue
    finally:
        await server.stop()
    assert failed == {} and venue_name == "binance"
    assert rules == {"BTCUSDT"}  # filters loaded from the stub's exchangeInfo
    assert slots["bnbot"] == "RUNNING"


async def test_bot_on_a_binance_account_trades_on_live_bars_through_the_venue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QTD_T_KEY", "key")
    monkeypatch.setenv("QTD_T_SECRET", "secret")
    venue, market = BinanceStub(), BinanceMarketStub()
    vsrv, msrv = await StubServer(venue.app).start(), await StubServer(market.app).start()
    try:
        cfg = _fleet(tmp_path, vsrv.http_url, vsrv.ws_url)
        text = cfg.read_text().split("\n[market.bots.bnbot]")[0]  # no replay: live data
        cfg.write_text(text.replace('connect_timeout_s = 5.0', textwrap.dedent(f"""\
            connect_timeout_s = 5.0
            data_stream_url = "{msrv.ws_url}/"
            data_rest_url = "{msrv.http_url}/api"
        """)))
        risk = tmp_path / "risk.toml"
        risk.write_text(risk.read_text() + "\n[accounts.bn1]\nequity = 1_000_000.0\n")
        async with running_agent(cfg, items={"goog_1d": synthetic_bars(5000)}) as agent:
            feed = agent.feeds[agent.bot_feed["bnbot"]]
            await wait_for(lambda: isinstance(feed, LiveFanout) and feed.live.connected.is_set())
            base = (time.time_ns() // MINUTE_NS - 5) * MINUTE_NS

            async def bot_fills() -> list[Fill]:
                return [e for e in await agent.store.query(kind="Fill") if e.bot == "bnbot"]

            for i, close in enumerate(("50000", "50100", "50200")):  # one bar at a time
                await market.push_bar("BTCUSDT", base + i * MINUTE_NS, close)

                async def filled(n: int = i + 1) -> bool:
                    return len(await bot_fills()) >= n

                await wait_for(filled)
            fills = await bot_fills()
            net = agent.proj.net_qty("bn1", "BTCUSDT")
    finally:
        await vsrv.stop()
        await msrv.stop()
    assert [f.side.value for f in fills] == ["BUY", "SELL", "BUY"]  # flipper on 3 live bars
    assert {f.account for f in fills} == {"bn1"} and net == Decimal("0.01")
    assert len(venue.orders) == 3  # each order reached the venue once


async def test_account_down_at_start_is_retried_reconciled_and_its_bots_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QTD_T_KEY", "key")
    monkeypatch.setenv("QTD_T_SECRET", "secret")
    port = free_port()
    cfg = _fleet(tmp_path, f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}")
    cfg.write_text('account_retry_s = 0.2\n' + cfg.read_text())
    venue = BinanceStub()
    server = StubServer(venue.app)
    server._server.config.port = port  # the venue comes back where the agent looks for it
    async with running_agent(cfg, items={"goog_1d": synthetic_bars(5000)}) as agent:
        assert set(agent.failed_accounts) == {"bn1"} and "bnbot" not in agent.supervisor.slots
        await server.start()
        try:
            await wait_for(lambda: "bn1" in agent.brokers, 15)
            await wait_for(lambda: "bnbot" in agent.supervisor.slots
                           and agent.supervisor.slots["bnbot"].state.value == "RUNNING")
            events = await agent.store.query()
            refused = dict(agent.refused)
        finally:
            await server.stop()
    recs = [e for e in events if type(e).__name__ == "Reconciliation" and e.account == "bn1"]
    admitted = [e for e in events if type(e).__name__ == "StrategyAdmitted" and e.bot == "bnbot"]
    assert recs and admitted and recs[0].seq < admitted[-1].seq  # reconciled, then admitted
    assert not any("bnbot" in p for p in refused)
