"""The leader runs execution quality and surveillance on the events it ingests (real
nats-server, fake agents speaking the agent's wire protocol, real fleet.db): a crafted wash
trade and slow acks open alerts that are paged through Apprise ``json://`` to a local HTTP
receiver, and show in ``/metrics`` and on the status page. At the end of the trading day the
daily report is sent the same way."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import msgspec

from qtd.bus import EmbeddedNatsServer
from qtd.clock import SimClock
from qtd.events import OrderAccepted, OrderIntent, OrderSubmitted, Side
from qtd.leader.config import WebConfig
from qtd.leader.daemon import running_leader
from qtd.projections import TradingDay
from qtd.quality.config import QualityConfig
from qtd.quality.daily import day_bounds
from qtd.quality.monitor import DAILY_META_KEY
from tests.integration.leader_peer import FakeAgent, PageReceiver, agents, leader_config, wait_for

MS = 1_000_000


def _config(tmp: Path, server: EmbeddedNatsServer, url: str, web: bool = False) -> Any:
    cfg = leader_config(tmp, server, page_url=url)
    quality = QualityConfig(eval_interval_s=0.05)
    cfg = msgspec.structs.replace(cfg, quality=quality)
    if web:
        cfg = msgspec.structs.replace(cfg, web=WebConfig(enabled=True, port=0))
    return cfg


async def _slow_acks(agent: FakeAgent, bot: str, n: int, ack_ms: int) -> None:
    """``n`` orders acked ``ack_ms`` after their intent (never filled)."""
    now = time.time_ns()
    events = []
    for i in range(n):
        cid, t = f"{agent.node}.{bot}.slow{i}", now + i * 1000 * MS
        base: dict[str, Any] = {"node": agent.node, "bot": bot, "ts_init": t}
        events += [
            OrderIntent(**base, ts_event=t, client_order_id=cid, cid_counter=i + 1,
                        account="acct-x", venue="paper", symbol="QQQ", side=Side.BUY,
                        qty=Decimal(1), decision_price=Decimal(400)),
            OrderSubmitted(**base, ts_event=t, client_order_id=cid),
            OrderAccepted(**base, ts_event=t + ack_ms * MS, client_order_id=cid)]
    await agent.append(*events)


async def test_leader_alerts_on_wash_trade_and_slow_acks_and_exposes_them(
    tmp_path: Path, nats_server: EmbeddedNatsServer,
) -> None:
    rx = PageReceiver()
    try:
        cfg = _config(tmp_path, nats_server, rx.url, web=True)
        async with agents(tmp_path, nats_server, ["node-a", "node-b"]) as peers, \
                running_leader(cfg) as leader:
            # two bots on two nodes trade SPY against each other on one account
            await peers[0].trade("alpha", "SPY", Side.BUY, "10", "100", account="shared")
            await peers[1].trade("beta", "SPY", Side.SELL, "10", "100", account="shared")
            await wait_for(lambda: "surveil:wash:shared:SPY" in leader.alerts.open,
                           what="wash alert")
            await _slow_acks(peers[0], "gamma", 5, ack_ms=80)
            key = "exec:latency_p99:gamma:paper:QQQ"
            await wait_for(lambda: key in leader.alerts.open, what="latency alert")
            rec = leader.alerts.open[key]
            assert rec.value == 80.0 and rec.limit == 50.0 and rec.unit == "ms"
            await wait_for(lambda: sum("surveillance: wash" in b["title"] for b in rx.bodies)
                           == 1 and any("gamma latency_p99" in b["title"] for b in rx.bodies),
                           what="both pages delivered")
            wash = next(b for b in rx.bodies if "surveillance: wash" in b["title"])
            assert "node-a.alpha.1" in wash["message"] and "node-b.beta.1" in wash["message"]
            assert leader.web_url is not None
            today = TradingDay().label(time.time_ns())
            async with httpx2.AsyncClient(base_url=leader.web_url.rstrip("/")) as http:
                metrics = (await http.get("/metrics")).text
                html = (await http.get("/")).text
                daily = await http.get(f"/reports/daily?date={today}")
                bad = await http.get("/reports/daily?date=yesterday")
            assert daily.status_code == 200 and f"daily report {today}" in daily.text
            assert "[wash] shared SPY" in daily.text and "node-b.beta.1" in daily.text
            assert bad.status_code == 400 and "YYYY-MM-DD" in bad.text
            assert 'qtd_surveil_findings{pattern="wash"} 1.0' in metrics
            assert ('qtd_exec_latency_p99_seconds{bot="gamma",symbol="QQQ",venue="paper"} 0.08'
                    in metrics)
            assert 'qtd_exec_fill_rate{bot="alpha",symbol="SPY",venue="paper"} 1.0' in metrics
            assert "execution quality" in html and "gamma" in html
    finally:
        rx.close()


async def test_daily_report_is_sent_when_the_trading_day_ends(
    tmp_path: Path, nats_server: EmbeddedNatsServer,
) -> None:
    rx = PageReceiver()
    now = time.time_ns()
    td = TradingDay()
    today = td.label(now)
    _, end = day_bounds(today, td)
    clock = SimClock(now)
    try:
        cfg = _config(tmp_path, nats_server, rx.url)
        async with agents(tmp_path, nats_server, ["node-a"]) as peers, \
                running_leader(cfg, clock=clock) as leader:
            await peers[0].trade("alpha", "SPY", Side.BUY, "10", "100")
            await peers[0].trade("alpha", "SPY", Side.SELL, "10", "103")
            await peers[0].trade("beta", "QQQ", Side.BUY, "2", "400")
            await wait_for(lambda: leader.status.snapshot().totals.fills == 3, what="fills")
            await wait_for(lambda: leader.quality.last_report_day is not None, what="first check")
            assert not [b for b in rx.bodies if "daily report" in b["title"]]
            clock.set(end + 1_000 * MS)  # the trading day ends
            await wait_for(lambda: any("daily report" in b["title"] for b in rx.bodies),
                           what="daily report delivered")
            assert await leader.db.get_meta(DAILY_META_KEY) == today
        [body] = [b for b in rx.bodies if "daily report" in b["title"]]
        assert body["title"].startswith(f"qtd daily report {today}: fleet PnL 30.00 USD")
        msg = body["message"]
        assert "alpha" in msg and "30.00" in msg and "beta" in msg
        assert "execution quality:" in msg and "alpha paper:SPY" in msg
        assert datetime.fromtimestamp(end / 1e9, UTC).hour == 0  # UTC midnight rollover
    finally:
        rx.close()
