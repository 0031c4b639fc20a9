"""The control body cap, on the app (Starlette's TestClient); the same on a real leader
process is in tests/chaos/test_web_abuse.py."""

from __future__ import annotations

from starlette.testclient import TestClient

from qtd.web import create_app
from tests.unit.test_web import ViewSource

TOKEN = "guard-operator-token-0123456789"


def test_control_credentials_before_body_and_body_capped() -> None:
    huge = b"{" + b" " * 100_000 + b"}"
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(ViewSource(), token=TOKEN)) as client:
        assert client.post("/api/control", content=huge).status_code == 401
        r = client.post("/api/control", content=huge, headers=bearer)
        assert r.status_code == 413 and "16384" in r.json()["error"]
        r = client.post("/login", content=b"operator=a&token=" + b"x" * 5000,
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 413
