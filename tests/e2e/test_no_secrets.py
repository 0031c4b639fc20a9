"""No configured secret leaks: not into HTML, API responses, /metrics, logs or events.

A leader and an agent run as real processes (``qtd leader`` / ``qtd agent``) on a
token-protected nats-server, with every kind of secret qtd is given:

- the NATS token (in both processes' ``[bus]``),
- the status page's operator token (``QTD_WEB_TOKEN``),
- a password inside every paging destination URL (deliveries fail: nothing listens there,
  so the failure and retry paths, where URLs tend to be logged, run too).

The agent trades paper bots; an operator logs in (a wrong token first), kills and resumes
through the API, and the kill's page fails delivery until it is given up. Then every
HTTP body and header, both processes' stdout/stderr, and every byte of events.db and
fleet.db (with their WAL files) are searched for each secret.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import tomli_w

from qtd.bus import EmbeddedNatsServer
from qtd.up.configs import free_port
from tests.agent_rig import stop_process, write_fleet

ETC = Path(__file__).resolve().parents[2] / "etc"
BUS_TOKEN = "bus-s3cret-7f3a9c1e"
WEB_TOKEN = "web-s3cret-c0ffee42"
NOTIFY_PW = "page-s3cret-b16b00b5"
SECRETS = (BUS_TOKEN, WEB_TOKEN, NOTIFY_PW)


def _leader_config(tmp: Path, nats_url: str) -> Path:
    doc: dict[str, Any] = tomllib.loads((ETC / "leader.toml").read_text())
    doc["fleet_db"] = str(tmp / "leader" / "fleet.db")
    doc["bus"] = {"servers": [nats_url], "name": "qtd-leader", "token": BUS_TOKEN}
    dead = free_port()  # nothing listens: every delivery fails and is retried
    url = f"json://qtd:{NOTIFY_PW}@127.0.0.1:{dead}/pages"
    doc["notify"]["destinations"] = {sev: [url] for sev in ("P1", "P2", "P3", "P4")}
    doc["notify"].pop("quiet_hours", None)
    doc["notify"]["retry_attempts"] = 2
    doc["notify"]["retry_base_s"] = 0.1
    doc["liveness"]["heartbeat_timeout_s"] = 1.0
    doc["kill"]["ack_timeout_s"] = 0.5
    path = tmp / "leader.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


def _leader_fills(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return int(con.execute("SELECT count(*) FROM events WHERE kind = 'Fill'")
                       .fetchone()[0])
    except sqlite3.Error:
        return 0


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "qtd.cli", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env)


def _wait(pred: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class _Http:
    """Records every response (status line, headers, body) it sees."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.seen: list[bytes] = []
        self.cookie = ""

    def call(self, method: str, path: str, data: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={**(headers or {}),
                                              **({"Cookie": self.cookie} if self.cookie else {})})

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a: Any, **k: Any) -> None:
                return None

        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(req, timeout=10) as resp:
                status, hdrs, body = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as err:
            status, hdrs, body = err.code, err.headers, err.read()
        self.seen.append(f"{status}\n{hdrs}\n".encode() + body)
        cookie = hdrs.get("set-cookie")
        if cookie:
            self.cookie = cookie.split(";", 1)[0]
        return status, body


def test_no_secret_in_pages_api_metrics_logs_or_events(tmp_path: Path) -> None:
    import asyncio

    nats = EmbeddedNatsServer(tmp_path / "nats", token=BUS_TOKEN)
    asyncio.run(nats.start())
    env = {**os.environ, "QTD_WEB_TOKEN": WEB_TOKEN, "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        leader_log, agent_log = tmp_path / "leader.log", tmp_path / "agent.log"
        procs.append(_start(["leader", "--config", str(_leader_config(tmp_path, nats.url))],
                            leader_log, env))
        url = _wait(lambda: (m := re.search(rb"leader\.web url=(http://\S+)",
                                            leader_log.read_bytes())) and m.group(1).decode(),
                    60, "the leader's status page URL")
        cfg = write_fleet(tmp_path / "fleet", {"b1": {}, "b2": {"qty": 2.0}},
                          bus_url=nats.url, market="speed = 8640000.0")
        cfg.write_text(cfg.read_text().replace("[bus]\n", f'[bus]\ntoken = "{BUS_TOKEN}"\n'))
        agent = _start(["agent", "--config", str(cfg)], agent_log, env)
        procs.append(agent)

        http = _Http(url)
        _wait(lambda: _leader_fills(tmp_path / "leader" / "fleet.db") > 0, 90,
              "fills at the leader")

        # Read-only browsing, then a wrong login, a real login and every page again.
        for path in ("/", "/api/snapshot", "/api/nodes", "/api/bots", "/api/alerts",
                     "/api/kill", "/api/pnl", "/api/openapi.json", "/metrics",
                     "/bots/node-a/b1", "/api/bots/node-a/b1", "/login", "/healthz"):
            http.call("GET", path)
        form = urllib.parse.urlencode({"operator": "alice", "token": WEB_TOKEN[::-1]}).encode()
        assert http.call("POST", "/login", form)[0] == 401
        form = urllib.parse.urlencode({"operator": "alice", "token": WEB_TOKEN}).encode()
        assert http.call("POST", "/login", form)[0] == 303
        for path in ("/", "/bots/node-a/b1", "/api/snapshot", "/metrics"):
            http.call("GET", path)
        bearer = {"Authorization": f"Bearer {WEB_TOKEN}", "Content-Type": "application/json"}
        kill = {"verb": "kill", "target": "global", "confirm": "GLOBAL", "reason": "secret test",
                "operator": "alice"}
        status, body = http.call("POST", "/api/control", json.dumps(kill).encode(), bearer)
        assert status == 200, body
        resume = {**kill, "verb": "resume"}
        http.call("POST", "/api/control", json.dumps(resume).encode(), bearer)
        http.call("POST", "/api/control", json.dumps(kill).encode(),
                  {"Authorization": "Bearer wrong-" + WEB_TOKEN[:4],
                   "Content-Type": "application/json"})

        # The kill pages on-call: every delivery fails and is retried, then given up.
        _wait(lambda: b"giving up" in leader_log.read_bytes(), 30, "a failed page delivery")
        stop_process(agent)
        http.call("GET", "/api/alerts")
    finally:
        for p in reversed(procs):
            stop_process(p)
        asyncio.run(nats.stop())

    places: dict[str, bytes] = {"http": b"\n".join(http.seen),
                                "leader log": leader_log.read_bytes(),
                                "agent log": agent_log.read_bytes()}
    for db in [*tmp_path.rglob("*.db"), *tmp_path.rglob("*.db-wal")]:
        places[str(db.relative_to(tmp_path))] = db.read_bytes()
    assert any(k.endswith("events.db") for k in places) and any(
        k.endswith("fleet.db") for k in places), sorted(places)
    assert b"Fill" in b"".join(v for k, v in places.items() if "events.db" in k)
    leaks = [(secret, where) for secret in SECRETS for where, data in places.items()
             if secret.encode() in data]
    assert leaks == [], leaks
    # The checks ran on real output: the pages were served and the agent traded.
    assert len(http.seen) >= 15 and b"qtd" in places["http"]
