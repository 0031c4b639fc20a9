"""Shadow mode in the running agent: an account with ``mode = "shadow"`` on the Binance
market-data stub trades through qtd's paper broker (fed by the live feed's ``on_price``),
its intents recorded and no order (nor even a connection) reaching the venue; its live twin
trades the Binance venue stub with the real python-binance client on the same bars; ``qtd
report shadow`` compares them."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import time
from decimal import Decimal
from pathlib import Path

import pytest

from qtd.agent.market import LiveFanout
from qtd.brokers.paper import PaperBroker
from qtd.events import Fill, OrderIntent, Side
from tests.agent_rig import running_agent, synthetic_bars, wait_for, write_binance_bot, write_fleet
from tests.stubs import StubServer
from tests.stubs.binance_stub import BinanceStub
from tests.stubs.market_stub import MINUTE_NS, BinanceMarketStub


def fleet(tmp_path: Path, shadow_venue: StubServer, live_venue: StubServer,
          market: StubServer) -> Path:
    cfg = write_fleet(tmp_path, {}, market="speed = 6000.0")
    risk = tmp_path / "risk.toml"
    risk.write_text(risk.read_text() + "\n[symbols.BTCUSDT]\n\n[accounts.sh1]\n"
                    "equity = 1_000_000.0\n\n[accounts.bn1]\nequity = 1_000_000.0\n")
    for name, account in (("shbot", "sh1"), ("twin", "bn1")):
        write_binance_bot(tmp_path, name=name, account=account)
    data = f'data_stream_url = "{market.ws_url}/"\ndata_rest_url = "{market.http_url}/api"\n'
    cfg.write_text(cfg.read_text().replace("[market]", textwrap.dedent(f"""\
        [accounts.sh1]
        broker = "binance"
        mode = "shadow"
        cash = 100_000.0
        base_url = "{shadow_venue.http_url}/api"
        stream_url = "{shadow_venue.ws_url}/ws-api/v3"
        {data}
        [accounts.bn1]
        broker = "binance"
        mode = "paper"
        base_url = "{live_venue.http_url}/api"
        stream_url = "{live_venue.ws_url}/ws-api/v3"
        credentials_env = ["QTD_T_KEY", "QTD_T_SECRET"]
        connect_timeout_s = 5.0
        timeout_s = 1.0
        {data}
        [market]""")))
    return cfg


async def qtd(*args: str) -> tuple[int, str, str]:
    """Run the ``qtd`` command in a child process: (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "qtd.cli", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_shadow_account_trades_on_live_data_through_the_paper_broker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QTD_T_KEY", "key")
    monkeypatch.setenv("QTD_T_SECRET", "secret")
    shadow_venue, live_venue, market = BinanceStub(), BinanceStub(), BinanceMarketStub()
    servers = [await StubServer(app).start()
               for app in (shadow_venue.app, live_venue.app, market.app)]
    ssrv, lsrv, msrv = servers
    try:
        cfg = fleet(tmp_path, ssrv, lsrv, msrv)
        async with running_agent(cfg, items={"goog_1d": synthetic_bars(50)}) as agent:
            shadow = agent.brokers["sh1"]
            for bot in ("shbot", "twin"):
                feed = agent.feeds[agent.bot_feed[bot]]
                assert isinstance(feed, LiveFanout)
                await wait_for(lambda f=feed: f.live.connected.is_set())
            reconcilers = set(agent.reconcilers)
            base = (time.time_ns() // MINUTE_NS - 5) * MINUTE_NS
            # the live twin's market orders fill where the venue is, not at the bar close
            for i, (close, live_px) in enumerate((("50000", "50010"), ("50100", "50090"),
                                                  ("50200", "50215"))):
                live_venue.price = Decimal(live_px)
                await market.push_bar("BTCUSDT", base + i * MINUTE_NS, close)

                async def both_filled(n: int = i + 1) -> bool:
                    fills = await agent.store.query(kind="Fill")
                    return all(sum(f.bot == b for f in fills) >= n for b in ("shbot", "twin"))

                await wait_for(both_filled)
            events = await agent.store.query()
        db = agent.cfg.store_path
    finally:
        for srv in servers:
            await srv.stop()
    assert isinstance(shadow, PaperBroker) and reconcilers == {"bn1"}
    # no order, no request, not even a user stream reached the shadow account's venue
    assert shadow_venue.orders == {} and shadow_venue.log.entries == []
    assert shadow_venue.subscribes == 0
    assert len(live_venue.orders) == 3  # the twin's orders did
    fills = {b: [(f.side, f.price) for f in events if isinstance(f, Fill) and f.bot == b]
             for b in ("shbot", "twin")}
    assert fills["shbot"] == [(Side.BUY, Decimal("50000")), (Side.SELL, Decimal("50100")),
                              (Side.BUY, Decimal("50200"))]  # simulated at the live closes
    assert fills["twin"] == [(Side.BUY, Decimal("50010")), (Side.SELL, Decimal("50090")),
                             (Side.BUY, Decimal("50215"))]
    intents = [e for e in events if isinstance(e, OrderIntent) and e.bot == "shbot"]
    assert len(intents) == 3 and {i.account for i in intents} == {"sh1"}  # recorded

    rc, out, err = await qtd("report", "shadow", "--shadow-db", str(db), "--live-db", str(db),
                             "--shadow-bot", "shbot", "--live-bot", "twin", "--json")
    assert rc == 0, err
    report = json.loads(out)
    (row,) = report["symbols"]
    assert (row["shadow_fills"], row["live_fills"], row["paired_orders"]) == (3, 3, 3)
    # shadow: +100 x 0.01 realized, +15 x 0.01 open at the twin's last fill 50215 = 1.15
    # twin:   +80 x 0.01 realized, flat mark = 0.80; tracking difference 0.80 - 1.15
    assert Decimal(row["shadow_pnl"]) == Decimal("1.15")
    assert Decimal(row["live_pnl"]) == Decimal("0.80")
    assert Decimal(report["tracking_difference"]) == Decimal("-0.35")
    buys = [10 / 50000 * 10_000, 15 / 50200 * 10_000]  # paid more: positive = live worse
    sell = -(50090 - 50100) / 50100 * 10_000
    assert row["mean_exec_diff_bps"] == pytest.approx((sum(buys) + sell) / 3)
    rc, out, _ = await qtd("report", "shadow", "--shadow-db", str(db), "--bot", "shbot")
    assert rc == 0 and out.startswith("shadow shbot vs live shbot: tracking difference +0.00")
    rc, _, err = await qtd("report", "shadow", "--shadow-db", str(tmp_path / "nope.db"),
                           "--bot", "shbot")
    assert rc != 0 and "--shadow-db" in err and "no such file" in err
