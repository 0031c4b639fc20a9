"""The status page served by a real leader (uvicorn in the leader's event loop) on a real
nats-server with fake agents: live PnL over the WebSocket, controls that reach the agents
and are audited with the operator's name, /metrics, and a clean shutdown."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import httpx2
import msgspec
import pytest
from websockets.asyncio.client import connect as ws_connect

import qtd
from qtd.bus import EmbeddedNatsServer
from qtd.events import CommandAudit, KillSwitch, Side
from qtd.leader import LeaderConfig
from qtd.leader.config import WebConfig
from qtd.leader.daemon import Leader, running_leader, start_leader
from tests.integration.leader_peer import FakeAgent, agents, leader_config, wait_for

TOKEN = "integration-operator-token-42"
ENV = "QTD_TEST_WEB_TOKEN"


def _web_config(tmp: Path, server: EmbeddedNatsServer) -> LeaderConfig:
    web = WebConfig(enabled=True, port=0, operator_token_env=ENV, push_interval_s=0.2)
    return msgspec.structs.replace(leader_config(tmp, server), web=web)


async def _audit(leader: Leader, kind: type) -> list[object]:
    return [e async for b in leader.db.replay_all() for e in b if isinstance(e, kind)]


async def _tick(ws: object, fills: int | None = None) -> dict[str, object]:
    """The next tick frame; with ``fills``, the next one counting that many fleet fills (a
    tick already on its way when a fill was ingested still shows the figures before it)."""
    while True:
        frame = json.loads(await ws.recv())  # type: ignore[attr-defined]
        if frame["type"] == "tick" and (
                fills is None or int(frame["counts"].split(" / ")[1]) == fills):
            return frame  # type: ignore[no-any-return]


async def test_page_live_pnl_controls_and_audit_on_a_real_leader(
    tmp_path: Path, nats_server: EmbeddedNatsServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV, TOKEN)
    cfg = _web_config(tmp_path, nats_server)
    async with agents(tmp_path, nats_server, ["node-a", "node-b"]) as peers, \
            running_leader(cfg) as leader:
        assert leader.web_port and leader.web_url == f"http://127.0.0.1:{leader.web_port}/"
        await wait_for(lambda: len(leader.view.heartbeats) == 2, what="heartbeats")
        await peers[0].trade("momo", "SPY", Side.BUY, "10", "100")
        await peers[0].trade("momo", "SPY", Side.SELL, "4", "110")
        await wait_for(lambda: leader.status.snapshot().totals.fills == 2, what="fills ingested")
        base = leader.web_url.rstrip("/")
        async with httpx2.AsyncClient(base_url=base) as http, \
                ws_connect(f"ws://127.0.0.1:{leader.web_port}/ws/live") as ws:
            html = (await http.get("/")).text
            assert "node-a/momo" in html and "100.00" in html  # 40 realized + 60 open
            first = await _tick(ws)
            assert first["fleet"]["pnl"] == pytest.approx(100.0)  # type: ignore[index]
            await peers[1].trade("meanrev", "SPY", Side.BUY, "1", "120")  # SPY mark 120
            await wait_for(lambda: leader.status.snapshot().totals.fills == 3, what="3rd fill")
            later = await asyncio.wait_for(_tick(ws, fills=3), 10)
            assert later["bots"]["node-a/momo"]["pnl"] == pytest.approx(160.0)  # type: ignore[index]
            assert (await http.post("/api/control", json={
                "verb": "kill", "target": "global", "reason": "x", "confirm": "GLOBAL"}
            )).status_code == 401
            r = await http.post("/api/control", headers={"Authorization": f"Bearer {TOKEN}"},
                                json={"verb": "kill", "target": "global", "reason": "web drill",
                                      "confirm": "GLOBAL", "operator": "alice"})
            assert r.status_code == 200, r.text
            await wait_for(lambda: all(p.kills for p in peers), what="kill at every agent")
            assert {(p.kills[0].operator, p.kills[0].source) for p in peers} == {("alice", "web")}
            assert (await _tick(ws))["kill"]["active"] is True  # type: ignore[index]
            await _resume_with_session(http, base)
            assert all(p.resumes and p.resumes[0]["operator"] == "carol" for p in peers)
            metrics = (await http.get("/metrics")).text
            assert "qtd_fleet_pnl_today 160.0" in metrics and "qtd_kill_active 0.0" in metrics
        kills = await _audit(leader, KillSwitch)
        assert [(k.active, k.operator, k.source) for k in kills] == [  # type: ignore[attr-defined]
            (True, "alice", "web"), (False, "carol", "leader")]
        audits = await _audit(leader, CommandAudit)
        assert [(a.verb, a.operator, a.source, a.ok) for a in audits] == [  # type: ignore[attr-defined]
            ("kill:global", "alice", "web", True), ("resume:global", "carol", "web", True)]
        port = leader.web_port
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # stopped with the leader


async def _resume_with_session(http: httpx2.AsyncClient, base: str) -> None:
    login = await http.post("/login", data={"operator": "carol", "token": TOKEN},
                            headers={"Origin": base})
    assert login.status_code == 303 and "HttpOnly" in login.headers["set-cookie"]
    page = (await http.get("/")).text
    assert "operator <b>carol</b>" in page
    csrf = page.split('name="csrf" content="', 1)[1].split('"', 1)[0]
    body = {"verb": "resume", "target": "global", "reason": "drill over", "confirm": "GLOBAL"}
    cross = await http.post("/api/control", json=body,
                            headers={"Origin": "http://evil.example", "X-CSRF-Token": csrf})
    assert cross.status_code == 403
    r = await http.post("/api/control", json=body, headers={"Origin": base,
                                                            "X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["agents"]["node-a"].startswith("ok")


async def test_leader_stops_promptly_with_a_websocket_open(
    tmp_path: Path, nats_server: EmbeddedNatsServer,
) -> None:
    cfg = _web_config(tmp_path, nats_server)  # ENV unset: read-only page
    leader = await start_leader(cfg)
    try:
        async with httpx2.AsyncClient(base_url=leader.web_url or "") as http:
            assert "read-only" in (await http.get("/")).text
            r = await http.post("/api/control", json={"verb": "kill", "reason": "x",
                                                      "confirm": "GLOBAL"})
            assert r.status_code == 403
        ws = await ws_connect(f"ws://127.0.0.1:{leader.web_port}/ws/live")
        assert json.loads(await ws.recv())["type"] == "hello"
    finally:
        await leader.stop()
    await ws.wait_closed()
    assert ws.close_code in (1001, 1012)


async def test_the_page_names_the_qtd_version_of_every_node_and_flags_skew(
    tmp_path: Path, nats_server: EmbeddedNatsServer,
) -> None:
    cfg = _web_config(tmp_path, nats_server)
    mine = qtd.__version__
    peers = [FakeAgent("node-a", tmp_path, nats_server),  # this qtd
             FakeAgent("node-b", tmp_path, nats_server, version="0.0.9"),
             FakeAgent("node-c", tmp_path, nats_server, version=None)]  # before the field
    try:
        for p in peers:
            await p.start()
        async with running_leader(cfg) as leader:
            await wait_for(lambda: len(leader.view.heartbeats) == 3, what="heartbeats")
            async with httpx2.AsyncClient(base_url=leader.web_url or "") as http:
                snap = (await http.get("/api/snapshot")).json()
                nodes = (await http.get("/api/nodes")).json()
                html = (await http.get("/")).text
    finally:
        for p in peers:
            await p.stop()
    assert {n["node"]: n["version"] for n in nodes} == {
        "node-a": mine, "node-b": "0.0.9", "node-c": "unknown"}
    versions = snap["qtd_versions"]
    assert versions["skew"] is True
    assert versions["nodes"] == {mine: ["node-a"], "0.0.9": ["node-b"], "unknown": ["node-c"]}
    assert "node-b" in versions["warning"] and "unknown on node-c" in versions["warning"]
    banner = html.split('id="qtd-versions"', 1)[1].split("</div>", 1)[0]
    for version, node in ((mine, "node-a"), ("0.0.9", "node-b"), ("unknown", "node-c")):
        assert f"<code>{version}</code> on {node}" in banner
