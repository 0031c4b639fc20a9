"""Fuzz the status page and its JSON API (hypothesis over Starlette's TestClient).

Random methods, paths (every route plus mangled ones), query strings, headers (random or
wrong bearer tokens, origins, cookies, content types) and bodies (random bytes, random
JSON, mutated valid control requests) must never produce a server error (the TestClient
re-raises any exception the app lets escape), and without the operator token no control and
no alert acknowledgement may reach the leader (no state change). With the right token and
CSRF-free bearer auth, valid controls still go through, so the refusals are not a broken app.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from qtd.clock import SimClock
from qtd.control import ControlAction
from qtd.events import AnyEvent, Heartbeat
from qtd.leader.view import FleetView
from qtd.projections import TradingDay
from qtd.web import create_app
from tests.factories import NODE, fill

TOKEN = "fuzz-operator-token-000111222333"
HOSTS = ("testserver",)  # the TestClient's Host
T0 = 1_700_000_000_000_000_000
EXAMPLES = 400


class Source:
    """A FleetSource over a real FleetView; records controls and acks that get through."""

    def __init__(self) -> None:
        self.view = FleetView(trading_day=TradingDay(), capital=Decimal(100_000),
                              currency="USD", clock=SimClock(T0))
        self.view.apply(Heartbeat(node=NODE, ts_event=T0, ts_init=T0, role="agent"))
        self.view.apply(fill("c1", "t1", qty="5", price="100", bot="momo", symbol="SPY",
                             ts=T0))
        self.actions: list[ControlAction] = []
        self.acks: list[tuple[str, str]] = []

    def snapshot(self) -> Any:
        return self.view.snapshot()

    def versions(self) -> None:  # no version table: the panel is not shown
        return None

    def quality(self) -> None:  # no quality monitor: the panel is not shown
        return None

    async def daily_report(self, day: str | None) -> None:
        return None

    async def control(self, action: ControlAction) -> dict[str, Any]:
        self.actions.append(action)
        return {"kill_id": "k1"}

    async def ack(self, alert_id: str, operator: str) -> bool:
        self.acks.append((alert_id, operator))
        return False

    async def bot_events(self, node: str, bot: str, limit: int,
                         kinds: tuple[str, ...] = ()) -> list[AnyEvent]:
        return []


PATHS = ["/", "/bots/node-1/momo", "/bots/x/y", "/login", "/logout", "/healthz", "/metrics",
         "/api/snapshot", "/api/nodes", "/api/bots", "/api/alerts", "/api/kill", "/api/pnl",
         "/api/bots/node-1/momo", "/api/control", "/api/alerts/a1/ack", "/api/openapi.json",
         "/static/app.js", "/static/../../etc/passwd", "/api/bots/%00/%ff", "/nope"]
CONTROL = {"verb": "kill", "target": "bot", "key": "momo", "reason": "r", "confirm": "momo",
           "operator": "alice"}

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              st.text(max_size=30)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=10)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["none", "bytes", "json", "control", "form"]))
    if kind == "none":
        return b""
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "form":
        return draw(st.sampled_from([b"operator=alice&token=", b"operator=&token=x",
                                     b"operator=" + b"a" * 5000, b"%%%&&&=="]))
    doc = dict(CONTROL)
    for key in draw(st.lists(st.sampled_from(sorted(CONTROL)), max_size=3)):
        doc[key] = draw(json_values)
    return json.dumps(doc).encode()


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    path = draw(st.one_of(st.sampled_from(["/api/control", "/api/alerts/a1/ack", "/login"]),
                          st.sampled_from(PATHS),
                          st.text(alphabet="/abcdefgh%.-_?&=0123456789", max_size=40)
                          .map(lambda s: "/" + s.lstrip("/"))))
    headers: dict[str, str] = {}
    auth = draw(st.sampled_from(["none", "wrong", "garbage"]))
    if auth == "wrong":
        headers["Authorization"] = "Bearer " + draw(st.text(
            alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", max_size=40))
    elif auth == "garbage":
        headers["Authorization"] = draw(st.sampled_from(["Basic Zm9vOmJhcg==", "Bearer",
                                                         "bearer  ", "Token x"]))
    if draw(st.booleans()):
        headers["Origin"] = draw(st.sampled_from(["http://testserver", "http://evil.example",
                                                  "null", ""]))
    if draw(st.booleans()):
        headers["Cookie"] = "qtd_session=" + draw(st.sampled_from(
            ["alice|9999999999|00", "alice|x|y", "|||", "a" * 200]))
    headers["Content-Type"] = draw(st.sampled_from(
        ["application/json", "application/x-www-form-urlencoded", "text/plain"]))
    return {"method": draw(st.sampled_from(["POST", "POST", "GET", "PUT", "DELETE", "HEAD"])),
            "url": path, "headers": headers, "content": draw(bodies())}


@pytest.fixture
def app_client() -> Iterator[tuple[TestClient, Source]]:
    src = Source()
    with TestClient(create_app(src, token=TOKEN, push_interval_s=0.05,
                                allowed_hosts=HOSTS)) as c:
        yield c, src


def test_fuzz_web_never_errors_and_never_acts_without_the_token(
        app_client: tuple[TestClient, Source]) -> None:
    client, src = app_client
    tried = 0
    statuses: dict[int, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(req=requests())
    def run(req: dict[str, Any]) -> None:
        nonlocal tried
        tried += 1
        r = client.request(req["method"], req["url"], headers=req["headers"],
                           content=req["content"], follow_redirects=False)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, (req, r.status_code, r.text[:300])
        assert TOKEN not in r.text

    run()
    assert tried >= EXAMPLES
    assert src.actions == [] and src.acks == []  # nothing got through without the token
    assert any(400 <= s < 500 for s in statuses) and 200 in statuses
    print(f"\nfuzz web: {tried} requests, status counts {dict(sorted(statuses.items()))}")

    # The same app does act on a valid request: the refusals above are real refusals.
    r = client.post("/api/control", json=CONTROL,
                    headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    assert [a.verb for a in src.actions] == ["kill"]
