"""The status page: Starlette app, live PnL WebSocket, JSON API and Prometheus metrics.

Public API: :func:`create_app` (the app over a :class:`FleetSource`, the protocol of
:mod:`qtd.web.protocol`; the leader's implementation is
:class:`qtd.leader.websource.LeaderSource`), :class:`WebServer` (uvicorn in the leader's
event loop) and its :class:`ConnectionGuard`, :func:`resolve_operator_token`.
"""

from __future__ import annotations

from qtd.web.app import create_app
from qtd.web.auth import resolve_operator_token
from qtd.web.conn import ConnectionGuard
from qtd.web.protocol import FleetSource, QualityView
from qtd.web.server import WebServer

__all__ = ["ConnectionGuard", "FleetSource", "QualityView", "WebServer",
           "create_app", "resolve_operator_token"]
