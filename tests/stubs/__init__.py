"""Stub venue servers for offline tests: Starlette apps served by uvicorn in-process.

:class:`StubServer` runs an ASGI app on ``127.0.0.1`` port 0 (the OS picks a free port; the
bound port is read back from the listening socket) inside the running event loop, and stops
it on :meth:`StubServer.stop`. Each venue stub (:mod:`tests.stubs.alpaca_stub`,
:mod:`tests.stubs.binance_stub`) records every order request it received and has scriptable
faults (:class:`Faults`): HTTP errors with headers, slow answers, malformed bodies.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp


class StubServer:
    """An ASGI app served by uvicorn on a free loopback port in the current event loop.

    Args:
        app: the ASGI application.
    """

    def __init__(self, app: ASGIApp) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
            ws="websockets-sansio", timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> StubServer:
        self._task = asyncio.create_task(self._server.serve(), name="stub-server")
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.005)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, 5)
        except TimeoutError:
            self._task.cancel()
        self._task = None


class Fault:
    """One scripted answer replacing the venue's normal one.

    Args:
        status: HTTP status to answer (e.g. 429, 418, 500, 503).
        body: JSON body (ignored when ``raw`` is set).
        headers: extra response headers (e.g. ``{"Retry-After": "1"}``).
        raw: a raw (e.g. malformed JSON) body, sent as ``application/json``.
        delay_s: sleep before answering (a client timeout shorter than this sees a timeout).
        apply: for POSTs, still carry out the request (the order reaches the venue) and
            replace only the answer.
    """

    def __init__(
        self, status: int = 200, body: Any = None, headers: dict[str, str] | None = None,
        raw: bytes | None = None, delay_s: float = 0.0, apply: bool = False,
    ) -> None:
        self.status, self.body, self.headers = status, body, headers or {}
        self.raw, self.delay_s, self.apply = raw, delay_s, apply

    async def respond(self, normal: Response | None = None) -> Response:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if normal is not None and self.status == 200 and self.raw is None and self.body is None:
            return normal
        if self.raw is not None:
            return Response(self.raw, self.status, self.headers, "application/json")
        return JSONResponse(self.body if self.body is not None else {}, self.status, self.headers)


class Faults:
    """Queues of scripted faults per route key (e.g. ``"POST /v2/orders"``), first in first out."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Fault]] = {}

    def add(self, route: str, *faults: Fault) -> None:
        self._queues.setdefault(route, deque()).extend(faults)

    def take(self, route: str) -> Fault | None:
        q = self._queues.get(route)
        return q.popleft() if q else None


class RequestLog:
    """Every request a stub received: ``(route, params, t_ns)`` with ``t_ns`` the
    ``time.time_ns()`` when the handler started (used by the order-path benchmark)."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, Any], int]] = []

    def record(self, route: str, params: dict[str, Any], t_ns: int = 0) -> None:
        self.entries.append((route, params, t_ns or time.time_ns()))

    def routes(self) -> list[str]:
        return [r for r, _, _ in self.entries]


async def form_or_query(request: Request) -> dict[str, Any]:
    """Request parameters from the query string and a url-encoded or JSON body."""
    params = dict(request.query_params)
    body = await request.body()
    if body:
        ctype = request.headers.get("content-type", "")
        if "json" in ctype:
            import json

            data = json.loads(body)
            if isinstance(data, dict):
                params.update({k: v for k, v in data.items() if v is not None})
        else:
            from urllib.parse import parse_qsl

            params.update(dict(parse_qsl(body.decode())))
    return params
