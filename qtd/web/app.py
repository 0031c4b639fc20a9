"""The status page application: :func:`create_app`.

Routes: ``GET /`` (fleet overview), ``GET /bots/{node}/{bot}`` (drill-down),
``GET /reports/daily`` (daily report; pages are the templates of :mod:`qtd.web.pages`),
``GET|POST /login``, ``POST /logout``, ``WS /ws/live`` (PnL frames, :mod:`qtd.web.live`),
``GET /metrics`` (Prometheus), ``GET /api/...`` and ``POST /api/control`` /
``POST /api/alerts/{id}/ack`` (:mod:`qtd.web.api`), ``GET /api/openapi.json``,
``GET /healthz``, ``/static/...`` (the page's CSS and JS, no CDN).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from qtd.fleetsnapshot import FleetSnapshot
from qtd.web import api
from qtd.web.auth import COOKIE, Auth, valid_operator
from qtd.web.conn import ConnectionGuard
from qtd.web.detail import ORDER_KINDS, BotDetail, admission, blotter, bot_metrics, equity_curve
from qtd.web.guard import SiteGuard
from qtd.web.live import PnlHub
from qtd.web.pages import TEMPLATES, compile_all
from qtd.web.prom import CONTENT_TYPE, WebMetrics
from qtd.web.protocol import FleetSource

log = logging.getLogger("qtd.web")
STATIC = Path(__file__).parent / "static"
BOT_EVENTS = 5000
LOGIN_BODY = 4096


class WebApp:
    """The handlers and their shared state (one per app).

    Args:
        source: the leader's read and control API.
        auth: credentials and CSRF checks.
        push_interval_s: seconds between WebSocket frames.
        connections: the server's connection guard, for ``/metrics`` (None: not reported).
    """

    def __init__(self, source: FleetSource, auth: Auth, push_interval_s: float = 1.0,
                 connections: ConnectionGuard | None = None) -> None:
        self.source = source
        self.auth = auth
        self.hub = PnlHub(source, push_interval_s)
        self.metrics = WebMetrics(source, connections)

    # --- pages ---------------------------------------------------------------------------

    def _page(self, request: Request, template: str, title: str, status: int = 200,
              **context: Any) -> Response:
        """``template`` (:mod:`qtd.web.pages`) in the page shell, for this request's operator."""
        operator = self.auth.session_operator(request) or ""
        shell = {"title": title, "operator": operator, "controls": bool(operator),
                 "auth_enabled": self.auth.enabled,
                 "csrf": self.auth.csrf_token(request) if operator else ""}
        return TEMPLATES.TemplateResponse(request, template, {**shell, **context},
                                          status_code=status, headers=_SECURITY_HEADERS)

    async def index(self, request: Request) -> Response:
        snap = self.hub.sample()  # the chart's last point is this snapshot's too
        return self._page(request, "overview.html", "qtd fleet", snap=snap, source=self.source)

    async def daily(self, request: Request) -> Response:
        day = request.query_params.get("date")
        try:
            report = await self.source.daily_report(day)
        except ValueError:
            raise HTTPException(400, f"date={day!r}: must be YYYY-MM-DD") from None
        if report is None:
            raise HTTPException(404, "no daily report here (not served by a leader)")
        return self._page(request, "daily.html", "qtd daily report", report=report,
                          currency=self.source.snapshot().currency)

    async def bot(self, request: Request) -> Response:
        detail = await self.detail(request.path_params["node"], request.path_params["bot"])
        return self._page(request, "bot.html", f"qtd {detail.node}/{detail.bot}", d=detail)

    async def detail(self, node: str, bot: str) -> BotDetail:
        """The drill-down of one bot.

        Raises:
            HTTPException: 404 when neither the view nor fleet.db know the bot.
        """
        snap = self.hub.sample()  # the chart's last point is this snapshot's too
        view = next((b for b in snap.bots if b.node == node and b.bot == bot), None)
        events = await self.source.bot_events(node, bot, BOT_EVENTS, ORDER_KINDS)
        admitted = await self.source.bot_events(node, bot, 1, ("StrategyAdmitted",))
        if view is None and not events and not admitted:
            raise HTTPException(404, f"unknown bot {node}/{bot}")
        points, fills = equity_curve(events)
        rows = blotter(events)
        self.metrics.observe_orders((r.client_order_id, r.latency_ms) for r in rows)
        return BotDetail(
            node=node, bot=bot, currency=snap.currency, view=view,
            positions=[p for p in snap.positions if p.node == node and p.bot == bot],
            blotter=rows, equity=points, metrics=bot_metrics(points, fills, snap.capital),
            admission=admission(admitted), ts_ns=snap.ts_ns)

    async def login_page(self, request: Request) -> Response:
        if not self.auth.enabled:
            return self._page(request, "login.html", "qtd login", 403,
                              error="no operator token is configured: the page is read-only")
        return self._page(request, "login.html", "qtd login", error="")

    async def login(self, request: Request) -> Response:
        if not self.auth.enabled:
            raise HTTPException(403, "read-only: no operator token is configured")
        if not self.auth.origin_ok(request, required=False):
            raise HTTPException(403, "cross-site request refused (Origin)")
        form = parse_qs((await api.read_capped(request, LOGIN_BODY)).decode(errors="replace"))
        operator = form.get("operator", [""])[0].strip()
        token = form.get("token", [""])[0]
        if not valid_operator(operator) or not self.auth.check_token(token):
            await asyncio.sleep(0.5)  # slow down guessing
            log.warning("web.login_refused operator=%r", operator[:64])
            return self._page(request, "login.html", "qtd login", 401,
                              error="wrong operator name or token")
        log.warning("web.login operator=%s", operator)
        resp = RedirectResponse("/", 303)
        resp.set_cookie(COOKIE, self.auth.session_cookie(operator), httponly=True,
                        samesite="strict", secure=request.url.scheme == "https",
                        max_age=int(self.auth.session_ttl_s))
        return resp

    async def logout(self, request: Request) -> Response:
        if not self.auth.origin_ok(request, required=True):
            raise HTTPException(403, "cross-site request refused (Origin)")
        resp = RedirectResponse("/", 303)
        resp.delete_cookie(COOKIE, httponly=True, samesite="strict")
        return resp

    # --- JSON ----------------------------------------------------------------------------

    async def api_get(self, request: Request) -> Response:
        snap: FleetSnapshot = self.source.snapshot()
        part = request.url.path.rsplit("/", 1)[-1]
        parts: dict[str, Any] = {"snapshot": snap, "nodes": snap.nodes, "bots": snap.bots,
                                 "alerts": snap.alerts, "kill": snap.kill,
                                 "pnl": list(self.hub.fleet)}
        return api.json_response(parts[part])

    async def api_bot(self, request: Request) -> Response:
        p = request.path_params
        return api.json_response(await self.detail(p["node"], p["bot"]))

    async def control(self, request: Request) -> Response:
        session_operator = self._authorise(request)
        body: api.ControlBody = await api.read_body(request, api.ControlBody)
        operator = session_operator or self._bearer_operator(body.operator)
        action = api.to_action(body, operator)
        log.warning("web.control verb=%s target=%s key=%s operator=%s reason=%r",
                    action.verb, action.target, action.key, operator, action.reason)
        try:
            result = await self.source.control(action)
        except Exception as exc:
            self.metrics.controls.labels(action.verb, action.target, "false").inc()
            raise HTTPException(409, f"{type(exc).__name__}: {exc}") from None
        self.metrics.controls.labels(action.verb, action.target, "true").inc()
        return api.json_response({"ok": True, "operator": operator, "result": result})

    async def ack(self, request: Request) -> Response:
        session_operator = self._authorise(request)
        body: api.AckBody = await api.read_body(request, api.AckBody)
        operator = session_operator or self._bearer_operator(body.operator)
        alert_id = request.path_params["alert_id"]
        if not await self.source.ack(alert_id, operator):
            raise HTTPException(404, f"no open alert {alert_id!r}")
        self.metrics.controls.labels("ack", "alert", "true").inc()
        return api.json_response({"ok": True, "operator": operator, "alert_id": alert_id})

    def _authorise(self, request: Request) -> str | None:
        """Credentials first, before a byte of the body is read (see Auth.authenticate)."""
        try:
            return self.auth.authenticate(request)
        except HTTPException as exc:
            self._refused(exc)
            raise

    def _bearer_operator(self, name: str) -> str:
        try:
            return self.auth.bearer_operator(name)
        except HTTPException as exc:
            self._refused(exc)
            raise

    def _refused(self, exc: HTTPException) -> None:
        self.metrics.refused.labels(str(exc.status_code)).inc()
        log.warning("web.control_refused status=%d detail=%s", exc.status_code, exc.detail)

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def live(self, ws: WebSocket) -> None:
        await self.hub.serve(ws)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(self.hub.run(), name="qtd-web-pnl-hub")
        try:
            yield
        finally:
            self.hub.stop()
            await task


_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


async def _error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"ok": False, "error": exc.detail}, exc.status_code,
                        headers=exc.headers)


def create_app(source: FleetSource, *, token: str | None = None, push_interval_s: float = 1.0,
               session_ttl_s: float = 12 * 3600, allowed_origins: tuple[str, ...] = (),
               allowed_hosts: tuple[str, ...] = (), connections: ConnectionGuard | None = None
               ) -> Starlette:
    """The status page app over ``source``.

    Args:
        source: a :class:`~qtd.web.protocol.FleetSource` (the leader's is
            :class:`qtd.leader.websource.LeaderSource`).
        token: operator token (None: read-only, every control answers 403).
        push_interval_s: seconds between live PnL frames.
        session_ttl_s: how long an operator login lasts.
        allowed_origins: extra origins accepted for controls and ``/ws/live`` (e.g. behind
            a TLS proxy).
        allowed_hosts: ``Host`` names served besides addresses and ``localhost``
            (:mod:`qtd.web.guard`).
        connections: the :class:`~qtd.web.conn.ConnectionGuard` the server uses, so that
            ``/metrics`` reports its figures.

    Returns:
        A Starlette app; ``app.state.web`` is its :class:`WebApp`.
    """
    compile_all()
    auth = Auth(token, session_ttl_s=session_ttl_s, allowed_origins=allowed_origins)
    web = WebApp(source, auth, push_interval_s, connections)
    routes: list[Any] = [
        Route("/", web.index),
        Route("/bots/{node}/{bot}", web.bot),
        Route("/reports/daily", web.daily),
        Route("/login", web.login_page, methods=["GET"]),
        Route("/login", web.login, methods=["POST"]),
        Route("/logout", web.logout, methods=["POST"]),
        Route("/healthz", lambda r: JSONResponse({"ok": True})),
        Route("/metrics", web.metrics_endpoint),
        *(Route(f"/api/{p}", web.api_get) for p in
          ("snapshot", "nodes", "bots", "alerts", "kill", "pnl")),
        Route("/api/bots/{node}/{bot}", web.api_bot),
        Route("/api/control", web.control, methods=["POST"]),
        Route("/api/alerts/{alert_id}/ack", web.ack, methods=["POST"]),
        WebSocketRoute("/ws/live", web.live),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    doc = api.openapi([r for r in routes if isinstance(r, Route)])
    routes.append(Route("/api/openapi.json", lambda r: JSONResponse(doc)))
    app = Starlette(routes=routes, lifespan=web.lifespan,
                    exception_handlers={HTTPException: _error},
                    middleware=[Middleware(SiteGuard, auth=auth, allowed_hosts=allowed_hosts)])
    app.state.web = web
    return app
