"""The Host and Origin rules of the status page (:mod:`qtd.web.guard`) and the control
body cap, on the app (Starlette's TestClient); the same on a real leader process is in
tests/chaos/test_web_abuse.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse

from qtd.web import create_app
from qtd.web.auth import Auth
from qtd.web.guard import SiteGuard
from tests.unit.test_web import ViewSource

TOKEN = "guard-operator-token-0123456789"


@pytest.mark.parametrize(("host", "ok"), [
    ("127.0.0.1:8080", True), ("[::1]:8080", True), ("10.1.2.3", True),
    ("localhost:9000", True), ("LOCALHOST", True), ("qtd.ops.example.com", True),
    ("proxy.example.com:443", True), ("evil.example", False),
    ("127.0.0.1.evil.example", False), ("localhost.evil.example", False), ("", False),
    ("[::1", False),
])
def test_host_rule(host: str, ok: bool) -> None:
    auth = Auth(None, allowed_origins=("https://proxy.example.com",))
    guard = SiteGuard(lambda *a: None, auth=auth, allowed_hosts=("qtd.ops.example.com",))
    assert guard.host_ok(host) is ok


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(ViewSource(), token=TOKEN, allowed_hosts=("testserver",),
                     allowed_origins=("https://ops.example.com",))
    with TestClient(app) as c:
        yield c


def test_foreign_host_is_refused_on_every_route(client: TestClient) -> None:
    for path in ("/", "/api/snapshot", "/metrics", "/healthz"):
        r = client.get(path, headers={"Host": "evil.example"})
        assert r.status_code == 403 and "Host 'evil.example'" in r.json()["error"]
    with pytest.raises(WebSocketDenialResponse) as denied:
        client.websocket_connect("/ws/live", headers={"Host": "evil.example"}).__enter__()
    assert denied.value.status_code == 403


@pytest.mark.parametrize(("origin", "ok"), [
    (None, True), ("http://testserver", True), ("https://ops.example.com", True),
    ("http://evil.example", False), ("null", False), ("http://testserver.evil.example", False),
])
def test_live_websocket_origin(client: TestClient, origin: str | None, ok: bool) -> None:
    headers = {"Origin": origin} if origin else {}
    if ok:
        with client.websocket_connect("/ws/live", headers=headers) as ws:
            assert ws.receive_json()["type"] == "hello"
        return
    with pytest.raises(WebSocketDenialResponse) as denied:
        client.websocket_connect("/ws/live", headers=headers).__enter__()
    assert denied.value.status_code == 403


def test_control_credentials_before_body_and_body_capped(client: TestClient) -> None:
    huge = b"{" + b" " * 100_000 + b"}"
    assert client.post("/api/control", content=huge).status_code == 401
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    r = client.post("/api/control", content=huge, headers=bearer)
    assert r.status_code == 413 and "16384" in r.json()["error"]
    r = client.post("/login", content=b"operator=a&token=" + b"x" * 5000,
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413
