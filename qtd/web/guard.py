"""Refuse what a browser can be tricked into sending to the status page from another site.

* **Host** (every route, HTTP and WebSocket): DNS rebinding points an attacker's name at
  this server, so the page the operator opened there is "same origin" with it and can read
  the fleet. A request is served only when its ``Host`` names this server: an IP address
  (a browser that used an address is not on a rebound name), ``localhost``, the configured
  ``[web] host``, a name in ``[web] allowed_hosts`` or the host of an
  ``[web] allowed_origins`` entry. The port is not compared (an SSH tunnel or a proxy may
  use another one).
* **Origin** (``/ws/live``): browsers do not apply the same-origin policy to WebSockets, so
  any page could open ``/ws/live`` and read the live fleet (cross-site WebSocket hijacking).
  A handshake that carries an ``Origin`` must carry the page's own or an allowed one;
  scripts send none. Controls check their ``Origin`` themselves (:mod:`qtd.web.auth`).

A refusal is a 403 with a one-line reason (JSON, as every error of the app), logged once.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from qtd.web.auth import Auth

log = logging.getLogger("qtd.web.guard")
_LOCAL_NAMES = frozenset({"localhost"})


def host_name(host: str) -> str:
    """The lower-case name or address of a ``Host`` header value, without port or
    brackets ("" when it cannot be parsed)."""
    try:
        return urlsplit(f"//{host}").hostname or ""
    except ValueError:
        return ""


def is_address(name: str) -> bool:
    """True for an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class SiteGuard:
    """ASGI middleware: the Host and Origin checks of the module docstring.

    Args:
        app: the app to guard.
        auth: its :class:`~qtd.web.auth.Auth` (the allowed origins and the Origin rule).
        allowed_hosts: host names served besides addresses and ``localhost`` (the
            configured host and ``[web] allowed_hosts``).
    """

    def __init__(self, app: ASGIApp, *, auth: Auth, allowed_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.auth = auth
        origin_hosts = (host_name(o.split("://", 1)[-1]) for o in auth.allowed_origins)
        self.hosts = _LOCAL_NAMES | {host_name(h) for h in (*allowed_hosts, *origin_hosts)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        reason = self.refusal(conn)
        if not reason:
            await self.app(scope, receive, send)
            return
        log.warning("web.refused status=403 path=%s reason=%s", conn.url.path[:80], reason)
        await JSONResponse({"ok": False, "error": reason}, 403)(scope, receive, send)

    def host_ok(self, host: str) -> bool:
        """``host`` (a ``Host`` header value) names this server."""
        name = host_name(host)
        return bool(name) and (name in self.hosts or is_address(name))

    def refusal(self, conn: HTTPConnection) -> str:
        """Why ``conn`` is refused ("" when it is not)."""
        host = conn.headers.get("host", "")
        if not self.host_ok(host):
            return (f"Host {host[:80]!r} is not this server's name "
                    "(DNS rebinding?); add it to [web] allowed_hosts")
        if conn.scope["type"] == "websocket" and not self.auth.origin_ok(conn, required=False):
            origin = conn.headers.get("origin", "")
            return (f"WebSocket from another site refused (Origin {origin[:80]!r}); "
                    "add it to [web] allowed_origins")
        return ""
