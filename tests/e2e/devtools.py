"""Headless Chromium driven over the DevTools protocol with the ``websockets`` client (no
extra packages): for the status page's real-browser test and ``benchmarks/web.py``."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import httpx2
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


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


@contextlib.asynccontextmanager
async def open_page(devtools: str) -> AsyncIterator[Page]:
    """A DevTools session on the browser's first page target."""
    async with httpx2.AsyncClient() as http:
        targets = (await http.get(f"{devtools}/json/list")).json()
    url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
    async with ws_connect(url, max_size=None) as ws:
        yield Page(ws)
