"""Hostile clients against the status page of a real ``qtd leader`` process (shipped
``etc/leader.toml`` and ``etc/nats-server.conf``, NATS auth on): slow headers
(slowloris) at a low file-descriptor limit (issue 21, finding 8). Each prints the
figures the issue asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from tests.shipped import ROOT, leader_config, leader_web_url, processes, shipped_nats

ENV = "QTD_TEST_WEB_TOKEN"
TOKEN = "abuse-test-operator-token-0123456789"
SLOW_CLIENTS = 300
NOFILE = 256  # below SLOW_CLIENTS + the leader's own descriptors


class Leader:
    """A running leader process and its status page."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log
        self.port = int(url.rsplit(":", 1)[1])

    def lines(self) -> int:
        return self.log.read_bytes().count(b"\n")


def _start(args: list[str], log: Path, nofile: int | None, env: dict[str, str]
           ) -> subprocess.Popen[bytes]:
    """``python -m qtd.cli ARGS`` (as tests.shipped.qtd_process) with RLIMIT_NOFILE set
    before exec when ``nofile`` is given."""
    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "qtd.cli", *args], stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=limit,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **env})


@contextlib.asynccontextmanager
async def running_leader(tmp: Path, nofile: int | None = None) -> AsyncIterator[Leader]:
    async with shipped_nats(tmp / "nats") as nats:
        cfg = leader_config(tmp, nats.url, web={"enabled": True, "port": 0,
                                                "operator_token_env": ENV})
        log = tmp / "leader.log"
        with processes() as procs:
            procs.append(_start(["leader", "--config", str(cfg)], log, nofile, {ENV: TOKEN}))
            url = await leader_web_url(log)
            yield Leader(procs[0], url, log)


# --- 8: slow headers --------------------------------------------------------------------------


async def _slow_client(port: int, closed: dict[int, float], i: int, opened: float) -> None:
    """Send a request line and one header line a second, never the end of the headers;
    record when the server closes the connection."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        closed[i] = time.monotonic() - opened
        return
    host = f"Host: 127.0.0.1:{port}\r\n"
    head, drip = f"GET / HTTP/1.1\r\n{host}", b"X-Slow: 1\r\n"
    try:
        writer.write(head.encode())
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    if not await reader.read(1024):
                        break
            writer.write(drip)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        closed[i] = time.monotonic() - opened
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.mark.slow
async def test_slow_headers_are_dropped_and_the_page_stays_up(tmp_path: Path) -> None:
    async with running_leader(tmp_path, nofile=NOFILE) as leader:
        lines0 = leader.lines()
        closed: dict[int, float] = {}
        opened = time.monotonic()
        tasks = [asyncio.create_task(_slow_client(leader.port, closed, i, opened))
                 for i in range(SLOW_CLIENTS)]
        try:
            await asyncio.sleep(1.0)  # every client connected and sending slowly
            held = SLOW_CLIENTS - len(closed)
            latencies = []
            async with httpx2.AsyncClient(base_url=leader.url, timeout=60) as http:
                for _ in range(5):
                    t0 = time.perf_counter()
                    r = await http.get("/", headers={"Connection": "close"})
                    latencies.append((time.perf_counter() - t0) * 1000)
                    assert r.status_code == 200
                    assert (await http.get("/api/kill")).status_code == 200
            async with asyncio.timeout(120):  # liveness bound, not a performance limit
                await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
        lines = leader.lines() - lines0
        text = leader.log.read_text()
        async with httpx2.AsyncClient(base_url=leader.url) as http:
            assert (await http.get("/healthz")).status_code == 200
    dropped = sorted(closed.values())
    print(f"\n8: {SLOW_CLIENTS} slow-header clients at "
          f"RLIMIT_NOFILE={NOFILE}: {held} held after 1 s; page {min(latencies):.0f}-"
          f"{max(latencies):.0f} ms during the attack; last dropped after {dropped[-1]:.1f} s;"
          f" {lines} log lines")
    assert "out of system resource" not in text
    assert "Traceback" not in text and "Exception in ASGI" not in text
    assert held < NOFILE
    assert lines < 50, f"{lines} log lines during the attack"
