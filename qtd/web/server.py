"""Serve the status page inside the leader's event loop with ``uvicorn.Server.serve()``.

The socket is bound here first, so a busy port is an ordinary :class:`OSError` at start
(not uvicorn's ``sys.exit``) and the bound port is known before the server runs (port 0 =
a free port). The leader owns SIGTERM/SIGINT: uvicorn's own signal capture is switched off.
Shutdown: ``should_exit`` → uvicorn closes WebSockets and drains requests for at most
``graceful_s`` → the task is cancelled if it still runs.

Connections are bounded by a :class:`~qtd.web.conn.ConnectionGuard` (a deadline to send
a request, a cap on open connections). The page's WebSocket clients send nothing, so an
incoming WebSocket message is capped at ``WS_MAX_BYTES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator

import uvicorn
from starlette.types import ASGIApp

from qtd.web.conn import ConnectionGuard, guarded_h11

WS_MAX_BYTES = 4096


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the leader handles signals


class WebServer:
    """One uvicorn server on ``host:port`` running as the task ``qtd-leader-web``.

    Args:
        app: the ASGI app.
        host: interface to bind (default loopback only).
        port: TCP port (0: any free port; see :attr:`port` after :meth:`start`).
        graceful_s: seconds open connections get at shutdown.
        guard: the connection limits (default: :class:`ConnectionGuard` defaults); pass the
            one the app's ``/metrics`` reports.
    """

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0,
                 graceful_s: int = 2, guard: ConnectionGuard | None = None) -> None:
        self.host = host
        self.port = port
        self.guard = guard or ConnectionGuard()
        self.config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="on", ws="websockets-sansio",
            http=guarded_h11(self.guard), backlog=self.guard.backlog, ws_max_size=WS_MAX_BYTES,
            timeout_graceful_shutdown=graceful_s, ws_ping_interval=20.0)
        self.server = _EmbeddedServer(self.config)
        self.task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """``http://host:port/`` of the running server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def start(self, timeout_s: float = 10.0) -> None:
        """Bind, start serving and wait until the server accepts connections.

        Raises:
            OSError: the address cannot be bound.
            RuntimeError: the server ended during startup.
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(True)
        self.port = sock.getsockname()[1]
        self.task = asyncio.create_task(self.server.serve(sockets=[sock]),
                                        name="qtd-leader-web")
        async with asyncio.timeout(timeout_s):
            while not self.server.started:
                if self.task.done():
                    self.task.result()
                    raise RuntimeError("web server ended during startup")
                await asyncio.sleep(0.01)

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Graceful shutdown, then cancel after ``timeout_s``."""
        if self.task is None:
            return
        self.server.should_exit = True
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self.task)
        except TimeoutError:
            self.server.force_exit = True
            self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

