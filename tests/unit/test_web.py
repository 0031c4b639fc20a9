"""The status page app on a FleetView fed events directly (no NATS): pages show the
snapshot's numbers, the WebSocket pushes PnL every second, controls refuse without the token,
cross-site or without the CSRF token and work with them, API, OpenAPI and /metrics."""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from starlette.testclient import TestClient

import qtd
from qtd.clock import SimClock
from qtd.control import ControlAction
from qtd.deploy.model import VersionRow
from qtd.events import (
    AnyEvent,
    Heartbeat,
    LimitUsage,
    OrderIntent,
    PnLSnapshot,
    Scope,
    Side,
    StrategyAdmitted,
)
from qtd.fleetsnapshot import ActiveKill, AlertView, CapView, FleetSnapshot, KillView
from qtd.leader.view import FleetView
from qtd.projections import TradingDay
from qtd.quality.execution_quality import ExecBreach, ExecRow
from qtd.web import QualityView, create_app
from qtd.web.frames import CapFigures, SymbolFigures
from qtd.web.live import tick_frame
from tests.factories import NODE, accepted, fill, submitted

TOKEN = "s3cret-operator-token-0123456789"
HOSTS = ("testserver",)  # the TestClient's Host
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
        self.alerts = [AlertView(alert_id="a1", key="hb:node-b", severity="P2", status="open",
                                 title="node-b heartbeat missing", node="node-b", bot="",
                                 opened_ns=T0)]
        self.view.caps = [CapView(name="gross_exposure", limit=10_000.0, value=2_000.0,
                                  unit="USD", utilisation=0.2, level="L1")]

    def feed(self, *events: Any) -> None:
        for ev in events:
            self.view.apply(ev)
            self.events.append(ev)

    def snapshot(self) -> FleetSnapshot:
        return self.view.snapshot(alerts=lambda: self.alerts)

    def versions(self) -> None:  # no version table: the panel is not shown
        return None

    def quality(self) -> None:  # no quality monitor: the panel is not shown
        return None

    async def daily_report(self, day: str | None) -> None:
        return None

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


LIMITS = [  # (name, scope, key, limit, used, unit) as an agent reports them
    ("max_position_notional", Scope.STRATEGY, "momo", 1_000.0, 660.0, "currency"),
    ("max_open_orders", Scope.STRATEGY, "momo", 4.0, 3.0, "orders"),
    ("max_daily_loss", Scope.ACCOUNT, "acct1", 500.0, 475.0, "currency"),
    ("max_position_qty", Scope.SYMBOL, "SPY", 10.0, 6.0, "units"),
]


def _pnl_tick(src: ViewSource, limits: list[tuple[Any, ...]], *, stage: str = "shadow",
              state: str = "REDUCING", bot: str = "momo", realized: str = "0",
              unrealized: str = "0") -> None:
    """The bot's PnL tick as its agent sends it (PnL in USD, limits in use)."""
    now = src.clock.now_ns()
    src.view.on_pnl(PnLSnapshot(
        node=NODE, bot=bot, ts_event=now, ts_init=now, account="acct1",
        realized=Decimal(realized), unrealized=Decimal(unrealized), fees=Decimal(0),
        stage=stage, state=state,
        limits=[LimitUsage(name=n, scope=sc, key=k, limit=lim, used=u, unit=un)
                for n, sc, k, lim, u, un in limits]))


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
    _pnl_tick(s, LIMITS, realized="39.8", unrealized="59.7")  # 6 open at 110 vs 100.05
    return s


@pytest.fixture
def client(src: ViewSource) -> Iterator[TestClient]:
    with TestClient(create_app(src, token=TOKEN, push_interval_s=0.05,
                                allowed_hosts=HOSTS)) as c:
        yield c


def test_version_skew_counts_the_live_agents_only(client: TestClient, src: ViewSource) -> None:
    def beat(node: str, version: str) -> None:
        now = src.clock.now_ns()
        src.view.on_heartbeat(Heartbeat(node=node, ts_event=now, ts_init=now, role="agent",
                                        version=version))

    beat(NODE, qtd.__version__)  # its version-less fixture heartbeat is replaced
    beat("node-b", "0.0.9")
    skew = client.get("/api/snapshot").json()["qtd_versions"]
    assert skew["skew"] and skew["nodes"] == {"0.0.9": ["node-b"], qtd.__version__: [NODE]}
    assert 'id="qtd-versions"' in client.get("/").text
    src.clock.set(src.clock.now_ns() + 6 * 10**9)  # past the 5 s heartbeat timeout
    beat(NODE, qtd.__version__)  # node-b is down: its version no longer counts
    snap = client.get("/api/snapshot").json()
    assert snap["qtd_versions"] == {"skew": False, "nodes": {qtd.__version__: [NODE]},
                                    "warning": ""}
    html = client.get("/").text
    assert 'id="qtd-versions"' not in html and "<code>0.0.9</code>" in html  # nodes table
    assert f"the leader's qtd version\">{qtd.__version__}</span>" in html  # header
    metrics = client.get("/metrics").text
    assert "qtd_version_skew 0.0" in metrics
    assert 'qtd_node_version_info{node="node-b",version="0.0.9"} 1.0' in metrics


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


def test_websocket_pushes_pnl_every_period(src: ViewSource) -> None:
    app = create_app(src, allowed_hosts=HOSTS, push_interval_s=0.2)  # shipped: 1.0
    with TestClient(app) as c, c.websocket_connect("/ws/live?bot=node-a/momo") as ws:
        hello = ws.receive_json()
        assert hello["type"] == "hello" and hello["bot"] == "node-a/momo"
        assert hello["period_s"] == 0.2  # the pace is measured in benchmarks/web.py
        ticks = [ws.receive_json() for _ in range(3)]
        assert app.state.web.hub.frames >= 3  # one frame per period for every client
    assert all(t["type"] == "tick" for t in ticks)
    assert ticks[-1]["fleet"]["pnl"] == pytest.approx(99.5)
    assert ticks[-1]["bots"]["node-a/momo"]["pnl"] == pytest.approx(99.5)
    assert ticks[-1]["alerts"][0]["alert_id"] == "a1"


def test_controls_refused_without_token_config(src: ViewSource) -> None:
    with TestClient(create_app(src, allowed_hosts=HOSTS)) as c:
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


def test_500_bots_one_frame_with_every_bot_and_shared_layouts(src: ViewSource) -> None:
    for i in range(500):
        _trade(src, f"m{i}", Side.BUY, "1", "100", "100", T0 + i, bot=f"b{i}")
        _pnl_tick(src, [(n, sc, f"b{i}" if sc is Scope.STRATEGY else k, lim, u * (i % 3), un)
                        for n, sc, k, lim, u, un in LIMITS], bot=f"b{i}", state="ACTIVE")
    app = create_app(src, allowed_hosts=HOSTS)
    with TestClient(app) as c:
        r = c.get("/")
        frame = msgspec.json.decode(app.state.web.hub.tick())
    assert r.status_code == 200 and r.text.count('<tr data-bot="') == 501
    assert r.text.count('class="bar lim') == 501 * len(LIMITS)
    assert len(frame["bots"]) == 501 and len(frame["layouts"]) == 1  # one layout, shared
    assert frame["bots"]["node-a/b2"]["utils"] == [132, 150, 190, 120]  # used x 2, whole %
    # render time and frame size and time at 500 bots: benchmarks/web.py


def test_overview_shows_stage_state_and_a_bar_per_limit(client: TestClient) -> None:
    html = client.get("/").text
    row = html.split('<tr data-bot="node-a/momo">', 1)[1].split("</tr>", 1)[0]
    assert 'data-k="bot.stage">shadow<' in row and 'class="state reducing"' in row
    bars = re.findall(r'<span class="bar lim (\w+)" title="([^"]*)"><i class="f(\d+)">'
                      r'</i><b>([^<]*)</b>', row)
    assert bars == [  # colour level, tooltip, fill in 5 % steps, label and use
        ("ok", "STRATEGY momo max_position_notional &lt;= 1,000.00 USD", "65", "bot pos ntl 66%"),
        ("warm", "STRATEGY momo max_open_orders &lt;= 4.00 orders", "75", "bot open ord 75%"),
        ("hot", "ACCOUNT acct1 max_daily_loss &lt;= 500.00 USD", "95", "acct day loss 95%"),
        ("ok", "SYMBOL SPY max_position_qty &lt;= 10.00 units", "60", "SPY pos qty 60%")]
    assert ' style="' not in html  # the CSP (default-src 'self') refuses inline styles
    assert 'data-sig="bot pos ntl|bot open ord|acct day loss|SPY pos qty"' in row
    assert html.index("fleet caps") < html.index("PnL today (live)")  # caps at the top
    assert 'data-cap="0"' in html and 'data-k="cap.bar"' in html
    # every figure has a live hook; a bot, node or symbol the page lacks asks for a reload
    assert 'data-k="bot.counts">2/2/0/0<' in row and 'data-k="fleet.counts">2 / 2 / 0<' in html
    assert 'data-k="node.pnl"' in html and '<tr data-symbol="SPY">' in html
    assert 'id="changed" class="changed hidden"' in html


def test_frame_keeps_position_stage_state_and_limits_live(src: ViewSource) -> None:
    frame = tick_frame(src.snapshot())
    bot = frame.bots["node-a/momo"]
    assert (bot.pos, bot.stage, bot.state, bot.counts) == ("SPY +6", "shadow", "REDUCING",
                                                           "2/2/0/0")
    assert bot.gross == 660.0 and frame.counts == "2 / 2 / 0"
    node = frame.nodes["node-a"]
    assert (node.bots, node.pnl) == (0, 99.5)  # bots running (last beat), PnL today
    assert frame.symbols == {"SPY": SymbolFigures(qty=6.0, mark=110.0, net=660.0, pct=None)}
    assert frame.layouts[bot.layout] == ["bot pos ntl", "bot open ord", "acct day loss",
                                         "SPY pos qty"]
    assert bot.utils == [66, 75, 95, 60]
    assert frame.caps == [CapFigures(value=2000.0, pct=20, key="")]
    # the bot closes its position: the position text goes flat in the same frame as the
    # exposure (the page once showed "SPY +6" beside a live 0.00 exposure)
    _trade(src, "c3", Side.SELL, "6", "111", "111", T0 + 62 * 10**9)
    _pnl_tick(src, LIMITS[1:], stage="live", state="ACTIVE")
    later = tick_frame(src.snapshot())
    row = later.bots["node-a/momo"]
    assert row.gross == 0.0 and row.pos == "flat" and (row.stage, row.state) == ("live",
                                                                                 "ACTIVE")
    assert row.counts == "3/3/0/0"  # the order counts move with them
    assert len(row.utils) == 3 and later.layouts[row.layout][0] == "bot open ord"


def test_bot_state_halted_by_a_kill_before_its_agent_reports_it(src: ViewSource) -> None:
    other = ActiveKill(kill_id="k1", scope="SYMBOL", key="QQQ", reason="other symbol")
    src.view.kill = KillView(active=True, kills=[other])
    assert tick_frame(src.snapshot()).bots["node-a/momo"].state != "HALTED"
    mine = ActiveKill(kill_id="k2", scope="ACCOUNT", key="acct1", reason="its account")
    src.view.kill = KillView(active=True, kills=[other, mine])  # any kill of the set covers
    frame = tick_frame(src.snapshot())
    assert frame.bots["node-a/momo"].state == "HALTED"
    assert [k.kill_id for k in frame.kill.kills] == ["k1", "k2"]


def test_api_and_metrics_carry_the_limits(client: TestClient) -> None:
    bot = client.get("/api/bots").json()[0]
    assert (bot["stage"], bot["state"]) == ("shadow", "REDUCING")
    assert bot["limits"][2] == {"name": "max_daily_loss", "scope": "ACCOUNT", "key": "acct1",
                                "limit": 500.0, "used": 475.0, "unit": "currency",
                                "utilisation": 0.95}
    assert "LimitView" in client.get("/api/openapi.json").json()["components"]["schemas"]
    assert ('qtd_bot_limit_utilisation{bot="momo",key="acct1",limit="max_daily_loss",'
            'node="node-a",scope="ACCOUNT"} 0.95') in client.get("/metrics").text
    html = client.get("/bots/node-a/momo").text
    assert "risk limits" in html and "max_daily_loss" in html and ">475.00<" in html


def test_a_page_and_its_chart_show_one_snapshot(src: ViewSource) -> None:
    """A page is rendered from a snapshot the hub records as the chart's newest point (the
    page once showed PnL today -6,932.44 beside a chart ending at -6,448.89)."""
    app = create_app(src, allowed_hosts=HOSTS, push_interval_s=3600.0)
    with TestClient(app) as c:
        hub = app.state.web.hub
        src.clock.set(T0 + 90 * 10**9)
        _pnl_tick(src, LIMITS, unrealized="-500")  # PnL moves after the hub's last tick
        for path, key in (("/", "fleet.pnl"), ("/bots/node-a/momo", "bot.pnl")):
            html = c.get(path).text
            shown = re.search(rf'data-k="{key}"[^>]*>([^<]+)<', html)
            t = re.search(r'<canvas id="chart"[^>]*data-t="(\d+)"', html)
            assert shown and t, path
            series = hub.fleet if key == "fleet.pnl" else hub.bots["node-a/momo"]
            assert series[-1][0] == int(t.group(1)), path
            assert series[-1][1] == pytest.approx(float(shown.group(1).replace(",", "")),
                                                  abs=0.005), path


class PanelSource(ViewSource):
    """A source with a version table and a quality view (the leader's two extra panels)."""

    def versions(self) -> list[VersionRow]:  # type: ignore[override]
        return [VersionRow(bot="momo", node=NODE, desired_version=2, desired_hash="ab" * 20,
                           running_version=1, running_hash="cd" * 20, status="behind",
                           stage="paper", refused_reason="<old>")]

    def quality(self) -> QualityView:  # type: ignore[override]
        row = ExecRow(bot="momo", venue="paper", symbol="SPY", orders=3, latency_p99_ms=9.25)
        breach = ExecBreach(bot="momo", venue="paper", symbol="SPY", metric="latency_p99",
                            value=9.25, limit=5.0, unit="ms", message="p99 slow")
        return QualityView(rows=[row], breaches=[breach], finding_counts={"wash": 2})


def test_versions_and_execution_panels_come_from_the_source() -> None:
    with TestClient(create_app(PanelSource(), allowed_hosts=HOSTS)) as c:
        html = c.get("/").text
    versions = html[html.index('<section id="versions">'):]
    assert "v2 <code>abababababab</code>" in versions and 'title="&lt;old&gt;"' in versions
    execution = html[html.index('<section id="execution">'):html.index('<section id="versions">')]
    assert '<td class="num neg">9.2</td>' in execution  # the crossed p99, in red
    assert "1 threshold(s) crossed; 2 surveillance finding(s)" in execution
    assert 'href="/reports/daily"' in execution
