"""The status page app on a FleetView fed events directly (no NATS): pages show the
snapshot's numbers, the WebSocket pushes PnL every second, controls refuse without the token,
cross-site or without the CSRF token and work with them, API, OpenAPI and /metrics."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from starlette.testclient import TestClient

from qtd.clock import SimClock
from qtd.events import AnyEvent, Heartbeat, OrderIntent, Side, StrategyAdmitted
from qtd.leader.snapshot import AlertView, CapView, FleetSnapshot
from qtd.leader.view import FleetView
from qtd.projections import TradingDay
from qtd.web import ControlAction, create_app
from tests.factories import NODE, accepted, fill, submitted

TOKEN = "s3cret-operator-token-0123456789"
T0 = 1_700_000_000_000_000_000
ORIGIN = "http://testserver"


class ViewSource:
    """A FleetSource over a FleetView fed directly; records every control and ack."""

    def __init__(self) -> None:
        self.clock = SimClock(T0)
        self.view = FleetView(trading_day=TradingDay(), capital=Decimal(100_000),
                              currency="USD", clock=self.clock)
        self.events: list[AnyEvent] = []
        self.actions: list[ControlAction] = []
        self.acks: list[tuple[str, str]] = []
        self.view.alerts = lambda: [AlertView(alert_id="a1", key="hb:node-b", severity="P2",
                                              status="open", title="node-b heartbeat missing",
                                              node="node-b", bot="", opened_ns=T0)]
        self.view.caps = [CapView(name="gross_exposure", limit=10_000.0, value=2_000.0,
                                  unit="USD", utilisation=0.2, level="L1")]

    def feed(self, *events: Any) -> None:
        for ev in events:
            self.view.apply(ev)
            self.events.append(ev)

    def snapshot(self) -> FleetSnapshot:
        return self.view.snapshot()

    async def control(self, action: ControlAction) -> dict[str, Any]:
        self.actions.append(action)
        return {"kill_id": f"k{len(self.actions)}"}

    async def ack(self, alert_id: str, operator: str) -> bool:
        self.acks.append((alert_id, operator))
        return alert_id == "a1"

    async def bot_events(self, node: str, bot: str, limit: int,
                         kinds: tuple[str, ...] = ()) -> list[AnyEvent]:
        mine = [e for e in self.events if e.node == node and e.bot == bot
                and (not kinds or type(e).__name__ in kinds)]
        return mine[-limit:]


def _trade(src: ViewSource, cid: str, side: Side, qty: str, price: str, decision: str,
           ts: int, bot: str = "momo") -> None:
    src.feed(OrderIntent(node=NODE, bot=bot, ts_event=ts, ts_init=ts, client_order_id=cid,
                         cid_counter=1, account="acct1", venue="paper", symbol="SPY",
                         side=side, qty=Decimal(qty), decision_price=Decimal(decision)),
             submitted(cid, ts + 1_000, bot=bot), accepted(cid, ts + 2_000_000, bot=bot),
             fill(cid, f"t-{cid}", qty=qty, price=price, bot=bot, symbol="SPY", side=side,
                  ts=ts + 3_000_000))


@pytest.fixture
def src() -> ViewSource:
    s = ViewSource()
    s.feed(Heartbeat(node=NODE, ts_event=T0, ts_init=T0, role="agent", bots_running=1),
           StrategyAdmitted(node=NODE, bot="momo", ts_event=T0, ts_init=T0, strategy="momo",
                            content_hash="c0ffee", source_hash="s1", params_hash="p4r4m5"))
    s.view.on_heartbeat(Heartbeat(node=NODE, ts_event=T0, ts_init=T0, role="agent"))
    _trade(s, "c1", Side.BUY, "10", "100.05", "100", T0)
    _trade(s, "c2", Side.SELL, "4", "110", "110.10", T0 + 60 * 10**9)
    s.clock.set(T0 + 61 * 10**9)
    return s


@pytest.fixture
def client(src: ViewSource) -> Iterator[TestClient]:
    with TestClient(create_app(src, token=TOKEN, push_interval_s=0.05)) as c:
        yield c


def _login(c: TestClient, operator: str = "alice") -> str:
    r = c.post("/login", content=f"operator={operator}&token={TOKEN}",
               headers={"Origin": ORIGIN, "Content-Type": "application/x-www-form-urlencoded"},
               follow_redirects=False)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    csrf = re.search(r'name="csrf" content="([0-9a-f]+)"', c.get("/").text)
    assert csrf is not None
    return csrf.group(1)


KILL = {"verb": "kill", "target": "bot", "key": "momo", "reason": "runaway",
        "confirm": "momo"}


def test_overview_shows_the_snapshot_numbers_read_only(client: TestClient,
                                                        src: ViewSource) -> None:
    snap = src.snapshot()
    r = client.get("/")
    assert r.status_code == 200 and "default-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    bot = snap.bots[0]
    # bought 10 @ 100.05, sold 4 @ 110: realized 39.80, 6 open marked at 110: 59.70
    assert bot.agg.realized == pytest.approx(39.8) and bot.agg.unrealized == pytest.approx(59.7)
    assert f">{snap.totals.pnl_today:,.2f}<" in html and "99.50" in html
    assert 'href="/bots/node-a/momo"' in html and "SPY +6" in html and "660.00" in html
    assert "node-b heartbeat missing" in html and "gross_exposure" in html
    assert 'class="bar ok"' in html and "alive" in html
    assert 'class="ctl' not in html and "operator login" in html  # read-only until login
    assert client.get("/static/app.js").status_code == 200
    assert "cdn" not in html.lower() and "https://" not in html


def test_websocket_pushes_pnl_at_least_once_a_second(src: ViewSource) -> None:
    with TestClient(create_app(src, push_interval_s=1.0)) as c, \
            c.websocket_connect("/ws/live?bot=node-a/momo") as ws:
        hello = ws.receive_json()
        assert hello["type"] == "hello" and hello["bot"] == "node-a/momo"
        t0 = time.monotonic()
        ticks = [ws.receive_json() for _ in range(3)]
        elapsed = time.monotonic() - t0
    assert elapsed < 3.4  # one frame a second (the first within a second of connecting)
    assert all(t["type"] == "tick" for t in ticks)
    assert ticks[-1]["fleet"]["pnl"] == pytest.approx(99.5)
    assert ticks[-1]["bots"]["node-a/momo"][0] == pytest.approx(99.5)
    assert ticks[-1]["alerts"][0]["alert_id"] == "a1"


def test_controls_refused_without_token_config(src: ViewSource) -> None:
    with TestClient(create_app(src)) as c:
        r = c.post("/api/control", json=KILL, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 403 and "read-only" in r.json()["error"]
        assert c.post("/api/alerts/a1/ack", json={}).status_code == 403
        assert c.get("/login").status_code == 403
    assert src.actions == [] and src.acks == []


def test_controls_refused_without_credentials_or_cross_site(client: TestClient,
                                                            src: ViewSource) -> None:
    assert client.post("/api/control", json=KILL).status_code == 401
    bad = client.post("/api/control", json={**KILL, "operator": "bob"},
                      headers={"Authorization": "Bearer wrong-token-wrong-token"})
    assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
    foreign = client.post("/api/control", json={**KILL, "operator": "bob"}, headers={
        "Authorization": f"Bearer {TOKEN}", "Origin": "https://evil.example"})
    assert foreign.status_code == 403
    csrf = _login(client)
    no_csrf = client.post("/api/control", json=KILL, headers={"Origin": ORIGIN})
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.json()["error"]
    cross = client.post("/api/control", json=KILL,
                        headers={"Origin": "https://evil.example", "X-CSRF-Token": csrf})
    assert cross.status_code == 403
    no_origin = client.post("/api/control", json=KILL, headers={"X-CSRF-Token": csrf})
    assert no_origin.status_code == 403
    wrong = client.post("/api/control", json=KILL,
                        headers={"Origin": ORIGIN, "X-CSRF-Token": "0" * 64})
    assert wrong.status_code == 403
    assert src.actions == []
    assert "qtd_web_refused_total" in client.get("/metrics").text


def test_controls_work_with_session_and_bearer(client: TestClient, src: ViewSource) -> None:
    csrf = _login(client, "alice")
    page = client.get("/").text
    assert 'data-verb="kill" data-target="global"' in page and "operator <b>alice</b>" in page
    hdr = {"Origin": ORIGIN, "X-CSRF-Token": csrf}
    unconfirmed = client.post("/api/control", json={**KILL, "confirm": "yes"}, headers=hdr)
    assert unconfirmed.status_code == 422 and src.actions == []
    r = client.post("/api/control", json={**KILL, "operator": "mallory"}, headers=hdr)
    assert r.status_code == 200 and r.json()["operator"] == "alice"  # the session names it
    client.cookies.clear()
    flat = client.post("/api/control", headers={"Authorization": f"Bearer {TOKEN}"}, json={
        "verb": "flatten", "target": "global", "reason": "eod", "confirm": "GLOBAL",
        "operator": "bob"})
    assert flat.status_code == 200
    assert client.post("/api/control", headers={"Authorization": f"Bearer {TOKEN}"}, json={
        **KILL, "operator": ""}).status_code == 403  # a bearer script must name its operator
    assert [(a.verb, a.target, a.key, a.operator) for a in src.actions] == [
        ("kill", "bot", "momo", "alice"), ("flatten", "global", "", "bob")]
    ack = client.post("/api/alerts/a1/ack", json={"operator": "bob"},
                      headers={"Authorization": f"Bearer {TOKEN}"})
    assert ack.status_code == 200 and src.acks == [("a1", "bob")]
    assert client.post("/api/alerts/zz/ack", json={"operator": "bob"},
                       headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404
    assert 'qtd_web_controls_total{ok="true",target="bot",verb="kill"} 1.0' in \
        client.get("/metrics").text


def test_login_refuses_a_wrong_token(client: TestClient) -> None:
    r = client.post("/login", content=f"operator=eve&token=nope{TOKEN}",
                    headers={"Origin": ORIGIN,
                             "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 401 and "set-cookie" not in r.headers and TOKEN not in r.text


def test_bot_drilldown_blotter_metrics_and_admission(client: TestClient) -> None:
    html = client.get("/bots/node-a/momo").text
    assert "p4r4m5" in html and "c1" in html and "FILLED" in html
    d = client.get("/api/bots/node-a/momo").json()
    rows = {r["client_order_id"]: r for r in d["blotter"]}
    assert rows["c1"]["slippage_bps"] == pytest.approx(5.0)  # paid 100.05 vs 100
    assert rows["c2"]["slippage_bps"] == pytest.approx((110.10 - 110) / 110.10 * 1e4)
    assert rows["c1"]["latency_ms"] == pytest.approx(2.0)
    assert d["admission"]["params_hash"] == "p4r4m5" and len(d["equity"]) == 2
    assert d["metrics"]["fills"] == 2 and d["metrics"]["pnl"] == pytest.approx(99.5)
    assert client.get("/api/bots/node-a/nope").status_code == 404
    assert "qtd_order_ack_latency_seconds_count 2.0" in client.get("/metrics").text


def test_json_api_openapi_and_metrics(client: TestClient, src: ViewSource) -> None:
    snap = client.get("/api/snapshot").json()
    assert snap == msgspec.json.decode(msgspec.json.encode(src.snapshot()))
    assert client.get("/api/bots").json()[0]["bot"] == "momo"
    assert client.get("/api/nodes").json()[0]["node"] == NODE
    assert client.get("/api/alerts").json()[0]["alert_id"] == "a1"
    assert client.get("/api/kill").json()["active"] is False
    doc = client.get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/api/control" in doc["paths"]
    assert {"FleetSnapshot", "BotDetail", "ControlBody"} <= set(doc["components"]["schemas"])
    text = client.get("/metrics").text
    assert "qtd_fleet_pnl_today 99.5" in text
    assert 'qtd_bot_pnl_today{bot="momo",node="node-a"} 99.5' in text
    assert 'qtd_cap_utilisation{cap="gross_exposure",key=""} 0.2' in text
    assert "qtd_kill_active 0.0" in text and 'qtd_alerts_open{severity="P2"' in text


def test_500_bots_render_fast_and_one_small_frame(src: ViewSource) -> None:
    for i in range(500):
        _trade(src, f"m{i}", Side.BUY, "1", "100", "100", T0 + i, bot=f"b{i}")
    app = create_app(src)
    with TestClient(app) as c:
        t0 = time.perf_counter()
        r = c.get("/")
        render_s = time.perf_counter() - t0
        frame = app.state.web.hub.tick()
    assert r.status_code == 200 and r.text.count('<tr data-bot="') == 501
    print(f"500 bots: first render {render_s * 1000:.0f} ms, {len(r.content)} B; "
          f"frame {len(frame)} B")
    assert render_s < 1.0 and len(frame) < 64_000
