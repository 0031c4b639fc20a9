"""A real browser on the status page: headless Chromium (Debian package ``chromium``) loads
the page of a running leader fed by fake agents on a real nats-server, the PnL changes after
the page loaded and must reach the page over the WebSocket; a screenshot is saved under the
test's output (and, with QTD_UPDATE_SCREENSHOT=1, as ``docs/status.png`` for the
README). Driven over the DevTools protocol with the ``websockets`` client (no extra packages)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import msgspec
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from qtd.bus import EmbeddedNatsServer
from qtd.events import Side
from qtd.leader import Leader
from qtd.leader.config import WebConfig
from tests.integration.conftest import nats_server  # noqa: F401  (fixture)
from tests.integration.leader_peer import agents, leader_config, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DOCS = Path(__file__).resolve().parents[2] / "docs"
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="chromium not installed (apt-get install -y chromium)")


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[str]:
    """Headless Chromium with DevTools on a free port; yields the DevTools HTTP base URL."""
    with tempfile.TemporaryDirectory() as profile:
        proc = await asyncio.create_subprocess_exec(
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--no-first-run", f"--user-data-dir={profile}",
            "--remote-debugging-port=0", "--window-size=1400,1100", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        drain: asyncio.Task[None] | None = None
        try:
            assert proc.stderr is not None
            m = None
            async with asyncio.timeout(20):
                while m is None:
                    line = await proc.stderr.readline()
                    assert line, "chromium exited before DevTools listened"
                    m = re.search(rb"ws://([\d.:]+)/devtools", line)
            drain = asyncio.create_task(_drain(proc.stderr), name="chromium-stderr")
            yield f"http://{m.group(1).decode()}"
        finally:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            if drain is not None:
                await drain


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


class Page:
    """A DevTools session on one page target."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        n = next(self.ids)
        await self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            msg = json.loads(await self.ws.recv())
            if msg.get("id") == n:
                assert "error" not in msg, msg
                return msg["result"]  # type: ignore[no-any-return]

    async def js(self, expr: str) -> Any:
        res = await self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        return res["result"].get("value")


async def test_browser_sees_pnl_update_over_websocket(
    tmp_path: Path, nats_server: EmbeddedNatsServer,  # noqa: F811
) -> None:
    web = WebConfig(enabled=True, port=0, push_interval_s=0.5)
    cfg = msgspec.structs.replace(leader_config(tmp_path, nats_server), web=web)
    async with agents(tmp_path, nats_server, ["node-a", "node-b"]) as peers, \
            Leader(cfg) as leader, chromium() as devtools:
        await peers[0].trade("momo", "SPY", Side.BUY, "10", "100")
        await peers[1].trade("meanrev", "QQQ", Side.BUY, "5", "400")
        await peers[0].trade("momo", "SPY", Side.SELL, "4", "104")
        await wait_for(lambda: leader.view.snapshot().totals.fills == 3, what="fills")
        async with httpx2.AsyncClient() as http:
            targets = (await http.get(f"{devtools}/json/list")).json()
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        async with ws_connect(url, max_size=None) as ws:
            page = Page(ws)
            await page.call("Emulation.setDeviceMetricsOverride", width=1400, height=1100,
                            deviceScaleFactor=1, mobile=False)
            await page.call("Page.navigate", url=leader.web_url)
            before = await _wait_js(page, "document.querySelector('#conn').dataset.ticks >= 1 "
                                    "&& document.querySelector('[data-k=\"fleet.pnl\"]')"
                                    ".textContent")
            assert before == "40.00"  # momo: 16 realized + 6 x 4 open
            await peers[1].trade("meanrev", "QQQ", Side.SELL, "5", "410")  # +50 realized
            after = await _wait_js(page, "(t => t === '90.00' && t)(document.querySelector("
                                   "'[data-k=\"fleet.pnl\"]').textContent)")
            assert after == "90.00"
            assert await page.js("document.querySelector('#conn').textContent") == "live"
            shot = await page.call("Page.captureScreenshot", format="png")
    png = base64.b64decode(shot["data"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "status.png").write_bytes(png)
    if os.environ.get("QTD_UPDATE_SCREENSHOT"):  # refresh the README picture on demand
        DOCS.mkdir(exist_ok=True)
        (DOCS / "status.png").write_bytes(png)


async def _wait_js(page: Page, expr: str, timeout_s: float = 60.0) -> Any:
    # the timeout only guards against a hang (it measures nothing): a JetStream redelivery
    # after ack_wait can legitimately delay one update by seconds on a loaded machine
    async with asyncio.timeout(timeout_s):
        while not (value := await page.js(expr)):
            await asyncio.sleep(0.1)
    return value
