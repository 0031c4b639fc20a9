"""The status page as a leader service: ``[web] enabled`` serves :mod:`qtd.web` in the
leader's event loop (uvicorn, task ``qtd-leader-web``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from qtd.errors import ConfigError
from qtd.leader.config import WebConfig

if TYPE_CHECKING:
    from qtd.web import FleetSource, WebServer

log = logging.getLogger("qtd.leader")


class StatusPage:
    """Serves the page from :meth:`start` to :meth:`stop`.

    Args:
        cfg: ``[web]`` (``enabled`` is the caller's business).
    """

    def __init__(self, cfg: WebConfig) -> None:
        self._cfg = cfg
        self._server: WebServer | None = None

    @property
    def port(self) -> int | None:
        """The bound TCP port (None: not serving)."""
        return None if self._server is None else self._server.port

    @property
    def url(self) -> str | None:
        """``http://host:port/`` (None: not serving)."""
        return None if self._server is None else self._server.url

    async def start(self, source: FleetSource) -> None:
        """Build the app on ``source`` and listen.

        Raises:
            ConfigError: the address cannot be bound (names ``web.port``).
        """
        from qtd.web import WebServer, create_app, resolve_operator_token
        from qtd.web.conn import ConnectionGuard

        w = self._cfg
        token = resolve_operator_token(w.operator_token_env, w.operator_token_file)
        guard = ConnectionGuard(w.max_connections, w.request_timeout_s)
        app = create_app(source, token=token, push_interval_s=w.push_interval_s,
                         session_ttl_s=w.session_ttl_s, allowed_origins=tuple(w.allowed_origins),
                         allowed_hosts=(w.host, *w.allowed_hosts), connections=guard)
        web = WebServer(app, w.host, w.port, guard=guard)
        try:
            await web.start()
        except OSError as exc:
            raise ConfigError(f"web: cannot listen on {w.host}:{w.port} ({exc.strerror})",
                              field="web.port", value=w.port) from None
        self._server = web
        log.warning("leader.web url=%s controls=%s", web.url,
                    "token" if token else "read-only")

    async def stop(self, timeout_s: float) -> None:
        """Close WebSockets, drain requests (up to ``timeout_s`` seconds); stop serving."""
        if self._server is not None:
            await self._server.stop(timeout_s)
            self._server = None
