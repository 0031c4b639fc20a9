"""Reconciliation in the running agent (qtd.agent.reconciling) with the real python-binance
client against the Binance venue stub, bots on live bars from the Binance market-data stub:
a fill made at the venue while the agent's user stream is down is in the store after the
reconnect and a reconnect-triggered reconciliation agrees with the venue; periodic runs follow
``reconcile_interval_s``; with ``flatten_after_disconnect_s`` a long venue outage ends, once
the venue is back, in a reduce-only flatten through the router and the account HALTED with a
P2 breach."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from qtd.agent.config import load_agent_config
from qtd.agent.daemon import Agent
from qtd.agent.market import LiveFanout
from qtd.errors import ConfigError
from qtd.events import (
    BrokerError,
    Fill,
    KillSwitch,
    OrderIntent,
    Reconciliation,
    RiskBreach,
    Scope,
    Severity,
    Side,
    TradingState,
)
from qtd.orders import OrderState
from tests.agent_rig import running_agent, synthetic_bars, wait_for, write_binance_bot, write_fleet
from tests.stubs import Fault, StubServer
from tests.stubs.binance_stub import BinanceStub
from tests.stubs.market_stub import MINUTE_NS, BinanceMarketStub


def fleet(tmp_path: Path, venue: StubServer, market: StubServer, *, strategy: str,
          account_extra: str = "") -> Path:
    """A fleet whose bot ``bnbot`` trades BTCUSDT on binance account ``bn1`` (the stub),
    on live bars from the market stub."""
    cfg = write_fleet(tmp_path, {}, market="speed = 6000.0")
    risk = tmp_path / "risk.toml"
    risk.write_text(risk.read_text() + "\n[symbols.BTCUSDT]\n\n[accounts.bn1]\n"
                    "equity = 1_000_000.0\n")
    write_binance_bot(tmp_path, strategy=strategy)
    cfg.write_text(cfg.read_text().replace("[market]", textwrap.dedent(f"""
        [accounts.bn1]
        broker = "binance"
        mode = "paper"
        base_url = "{venue.http_url}/api"
        stream_url = "{venue.ws_url}/ws-api/v3"
        data_stream_url = "{market.ws_url}/"
        data_rest_url = "{market.http_url}/api"
        credentials_env = ["QTD_T_KEY", "QTD_T_SECRET"]
        connect_timeout_s = 5.0
        timeout_s = 1.0
        {account_extra}

        [market]""")))
    return cfg


@pytest.fixture
def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QTD_T_KEY", "key")
    monkeypatch.setenv("QTD_T_SECRET", "secret")


@pytest.fixture
async def stubs() -> AsyncIterator[tuple[BinanceStub, StubServer, BinanceMarketStub,
                                         StubServer]]:
    venue, market = BinanceStub(), BinanceMarketStub()
    vsrv, msrv = await StubServer(venue.app).start(), await StubServer(market.app).start()
    yield venue, vsrv, market, msrv
    await vsrv.stop()
    await msrv.stop()


async def live_connected(agent: Agent) -> None:
    feed = agent.feeds[agent.bot_feed["bnbot"]]
    assert isinstance(feed, LiveFanout)
    await wait_for(lambda: feed.live.connected.is_set())


def bar_ts(i: int) -> int:
    return (time.time_ns() // MINUTE_NS - 5 + i) * MINUTE_NS


def reconciliations(events: list[object], trigger: str) -> list[Reconciliation]:
    return [e for e in events if isinstance(e, Reconciliation) and e.trigger == trigger]


@pytest.mark.parametrize("resync_fails", [False, True], ids=["resync-ok", "resync-fails"])
async def test_fill_made_while_user_stream_down_is_reconciled_after_reconnect(
        tmp_path: Path, creds: None, resync_fails: bool,
        stubs: tuple[BinanceStub, StubServer, BinanceMarketStub, StubServer]) -> None:
    """The adapter re-reads its orders in flight after a reconnect (its resync) and the
    agent's reconciliation runs too. With the resync's lookup refused by the venue (it is
    issued first, right after the re-subscribe), only the reconciliation can import the
    fill: it must."""
    venue, vsrv, market, msrv = stubs
    cfg = fleet(tmp_path, vsrv, msrv, strategy="rester",
                account_extra="reconcile_interval_s = 3600.0")
    async with running_agent(cfg, items={"goog_1d": synthetic_bars(50)}) as agent:
        assert "bn1" in agent.reconcilers and "paper-main" not in agent.reconcilers
        broker = agent.brokers["bn1"]
        await live_connected(agent)
        await market.push_bar("BTCUSDT", bar_ts(0), "50000")  # rester: limit buy at 25000
        await wait_for(lambda: len(venue.orders) == 1)
        (cid,) = venue.orders
        await wait_for(lambda: agent.proj.orders.get(cid) is not None
                       and agent.proj.orders.get(cid).state is OrderState.ACCEPTED)
        ups = broker.link.ups  # type: ignore[attr-defined]
        if resync_fails:
            venue.faults.add("GET /api/v3/order", Fault(400, {
                "code": -1000, "msg": "An unknown error occurred while processing the "
                "request."}))
        venue.drop_after = 0  # the next report is lost and the user stream dropped
        await venue.fill(cid, "0.01", "25000")
        venue.drop_after = None  # the venue accepts the reconnect
        assert venue.lost and venue.lost[0]["x"] == "TRADE"

        async def reconciled() -> bool:
            return bool(reconciliations(await agent.store.query(kind="Reconciliation"),
                                        "reconnect"))

        await wait_for(lambda: broker.link.ups > ups, 15)  # type: ignore[attr-defined]
        await wait_for(reconciled, 15)
        await wait_for(lambda: agent.proj.orders.get(cid).state is OrderState.FILLED)
        events = await agent.store.query()
        state = agent.risk.states.get(Scope.ACCOUNT, "bn1")
        net = agent.proj.net_qty("bn1", "BTCUSDT")
    fills = [e for e in events if isinstance(e, Fill) and e.client_order_id == cid]
    assert [(f.qty, f.price, f.bot) for f in fills] == [
        (Decimal("0.01"), Decimal("25000"), "bnbot")]  # imported once, stamped with its bot
    (rec,) = reconciliations(events, "reconnect")
    assert rec.account == "bn1" and rec.ok and rec.unresolved == []
    if resync_fails:
        assert rec.fills_imported == 1 and rec.resolved == [cid]
        assert any(isinstance(e, BrokerError) and e.operation == "resync" for e in events)
    assert rec.position_mismatches == [] and rec.seq > fills[0].seq  # agrees with the venue
    assert net == Decimal("0.01") == venue.balances["BTC"]
    assert [r.trigger for r in events if isinstance(r, Reconciliation)
            and r.account == "bn1"] == ["start", "reconnect"]
    assert state is TradingState.ACTIVE  # no auto-flatten by default
    assert not any(isinstance(e, KillSwitch) for e in events)


async def test_periodic_reconciliation_follows_the_account_setting(
        tmp_path: Path, creds: None,
        stubs: tuple[BinanceStub, StubServer, BinanceMarketStub, StubServer]) -> None:
    _, vsrv, _, msrv = stubs
    cfg = fleet(tmp_path, vsrv, msrv, strategy="rester",
                account_extra="reconcile_interval_s = 0.2")
    async with running_agent(cfg, items={"goog_1d": synthetic_bars(50)}) as agent:

        async def periodic() -> bool:
            events = await agent.store.query(kind="Reconciliation")
            return len(reconciliations(events, "periodic")) >= 2

        await wait_for(periodic)
        recs = reconciliations(await agent.store.query(kind="Reconciliation"), "periodic")
    assert all(r.account == "bn1" and r.ok for r in recs)


@pytest.mark.parametrize("rest_slow_to_return", [False, True], ids=["back", "rest-late"])
async def test_long_disconnect_flattens_reduce_only_once_the_venue_is_back(
        tmp_path: Path, creds: None, rest_slow_to_return: bool,
        caplog: pytest.LogCaptureFixture,
        stubs: tuple[BinanceStub, StubServer, BinanceMarketStub, StubServer]) -> None:
    """``rest-late``: the user stream is back but the first reconciliation cannot read the
    venue's balances (HTTP 503 on every retry): the due flatten is retried, not dropped."""
    venue, vsrv, market, msrv = stubs
    cfg = fleet(tmp_path, vsrv, msrv, strategy="flipper", account_extra=(
        "reconcile_interval_s = 3600.0\n        flatten_after_disconnect_s = 0.5"))
    async with running_agent(cfg, items={"goog_1d": synthetic_bars(50)}) as agent:
        broker = agent.brokers["bn1"]
        link = broker.link  # type: ignore[attr-defined]
        await live_connected(agent)
        await market.push_bar("BTCUSDT", bar_ts(0), "50000")  # flipper: market buy 0.01
        await wait_for(lambda: agent.proj.net_qty("bn1", "BTCUSDT") == Decimal("0.01"))
        port = vsrv.port
        await vsrv.stop()  # the venue is unreachable: REST and user stream
        await wait_for(lambda: link.down_since is not None)
        await asyncio.sleep(1.0)  # an outage longer than flatten_after_disconnect_s
        assert agent.risk.states.get(Scope.ACCOUNT, "bn1") is TradingState.ACTIVE
        if rest_slow_to_return:
            venue.faults.add("GET /api/v3/account", *[Fault(503, {"code": -1001, "msg":
                             "Internal error; unable to process your request."})] * 4)
        back = StubServer(venue.app)
        back._server.config.port = port  # the venue returns where the agent looks for it
        await back.start()
        try:
            # a hang guard: under load the 503 retries and reconnect backoff add up
            await wait_for(lambda: bool(agent.reconcilers["bn1"].flattened), 120)
            await wait_for(lambda: venue.balances["BTC"] == 0)
            await wait_for(lambda: agent.proj.net_qty("bn1", "BTCUSDT") == 0)
            events = await agent.store.query()
            state = agent.risk.states.get(Scope.ACCOUNT, "bn1")
        finally:
            await back.stop()
    sells = [p for r, p, _ in venue.log.entries if r == "POST /api/v3/order"
             and p["side"] == "SELL"]
    assert len(sells) == 1 and Decimal(sells[0]["quantity"]) == Decimal("0.01")
    assert sells[0]["type"] == "MARKET"
    flat = [e for e in events if isinstance(e, OrderIntent) and e.side is Side.SELL]
    assert len(flat) == 1 and flat[0].reduce_only
    assert state is TradingState.HALTED
    (p2,) = [e for e in events if isinstance(e, RiskBreach) and e.check == "auto_flatten"]
    assert p2.severity is Severity.P2 and p2.scope is Scope.ACCOUNT and p2.scope_key == "bn1"
    assert p2.value > 0.5  # the outage, seconds
    (kill,) = [e for e in events if isinstance(e, KillSwitch)]
    assert kill.flatten and kill.source == "auto_flatten" and kill.scope_key == "bn1"
    (rec,) = reconciliations(events, "reconnect")
    assert rec.seq < p2.seq < flat[0].seq  # reconciled with the venue, then flattened
    retried = "auto-flatten due (outage" in caplog.text
    assert retried is rest_slow_to_return  # the first reconciliation failed, then retried
    assert venue.faults.take("GET /api/v3/account") is None  # every 503 was served


def test_reconcile_and_mode_settings_are_validated(tmp_path: Path) -> None:
    base = 'node = "n"\n[accounts.bn1]\nbroker = "binance"\n'
    keys = 'credentials_env = ["K", "S"]\n'
    (tmp_path / "a.toml").write_text(base + keys + "flatten_after_disconnect_s = 0\n")
    with pytest.raises(ConfigError, match=r"accounts\.bn1\.flatten_after_disconnect_s"):
        load_agent_config(tmp_path / "a.toml")
    (tmp_path / "b.toml").write_text(base + keys + "reconcile_interval_s = -1\n")
    with pytest.raises(ConfigError, match=r"accounts\.bn1\.reconcile_interval_s"):
        load_agent_config(tmp_path / "b.toml")
    (tmp_path / "c.toml").write_text(base + keys + 'mode = "demo"\n')
    with pytest.raises(ConfigError, match=r"accounts\.bn1\.mode"):
        load_agent_config(tmp_path / "c.toml")
    (tmp_path / "d.toml").write_text(base + 'mode = "shadow"\n')  # public data: no keys
    acct = load_agent_config(tmp_path / "d.toml").accounts["bn1"]
    assert acct.simulated and acct.reconcile_interval_s == 300.0
    assert acct.flatten_after_disconnect_s is None
    (tmp_path / "f.toml").write_text(base + 'mode = "paper"\npaper_via = "qtd"\n')
    assert load_agent_config(tmp_path / "f.toml").accounts["bn1"].simulated  # no paper endpoint
    (tmp_path / "g.toml").write_text(base + keys + 'mode = "paper"\n')
    assert not load_agent_config(tmp_path / "g.toml").accounts["bn1"].simulated  # testnet
    (tmp_path / "e.toml").write_text(base.replace("binance", "alpaca") + 'mode = "shadow"\n')
    with pytest.raises(ConfigError, match=r"accounts\.bn1\.credentials_env"):
        load_agent_config(tmp_path / "e.toml")  # alpaca market data needs keys
