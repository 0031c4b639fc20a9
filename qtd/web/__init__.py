"""The status page: Starlette app, live PnL WebSocket, JSON API and Prometheus metrics.

Public API: :func:`create_app` (the app over a :class:`FleetSource`), :class:`LeaderSource`
(the leader as a source), :class:`WebServer` (uvicorn in the leader's event loop) and its
:class:`ConnectionGuard`, :func:`resolve_operator_token`.
"""

from __future__ import annotations

from qtd.web.app import create_app
from qtd.web.auth import resolve_operator_token
from qtd.web.conn import ConnectionGuard
from qtd.web.server import WebServer
from qtd.web.source import FleetSource, LeaderSource

__all__ = ["ConnectionGuard", "FleetSource", "LeaderSource", "WebServer",
           "create_app", "resolve_operator_token"]
