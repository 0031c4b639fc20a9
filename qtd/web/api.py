"""JSON API for scripts, the control endpoints, and the OpenAPI document describing them.

Reads (no auth): ``GET /api/snapshot``, ``/api/nodes``, ``/api/bots``,
``/api/bots/{node}/{bot}``, ``/api/alerts``, ``/api/kill``, ``/api/pnl``.
Controls (operator token, see :mod:`qtd.web.auth`): ``POST /api/control`` with a
:class:`ControlBody` and ``POST /api/alerts/{alert_id}/ack``. A control must repeat its
target in ``confirm`` (``GLOBAL``, or the node/bot/account/symbol name): the server-side
half of the page's confirmation step. A body is read only after the credentials are checked,
and never past ``MAX_BODY`` bytes (:func:`read_capped`): a longer ``Content-Length`` is
refused before reading, a longer stream (chunked, or a ``Content-Length`` that lies) as soon
as the cap is passed.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from qtd.control import ControlAction, Target, Verb
from qtd.events import DECODE_ERRORS
from qtd.fleetsnapshot import FleetSnapshot
from qtd.web.detail import BotDetail

MAX_BODY = 16 * 1024


class ControlBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /api/control``: ``operator`` is required with a bearer token and ignored
    for a browser session (the session names the operator)."""

    verb: Verb
    target: Target = "global"
    key: str = ""
    reason: str
    confirm: str
    operator: str = ""


class AckBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /api/alerts/{alert_id}/ack``."""

    operator: str = ""


def json_response(obj: Any, status: int = 200) -> Response:
    """msgspec-encoded JSON (Structs, Decimals and the like as msgspec encodes them)."""
    return Response(msgspec.json.encode(obj), status, media_type="application/json")


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, read as it streams in and never past ``limit`` bytes.

    Raises:
        HTTPException: 413 when ``Content-Length`` says more than ``limit`` (nothing is
            read) or the stream passes ``limit`` (reading stops there); 400 when the client
            went away first (e.g. disconnected for sending too slowly).
    """
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"body too large: Content-Length {length} > {limit} bytes")
    data = bytearray()
    try:
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise HTTPException(413, f"body too large: more than {limit} bytes")
    except ClientDisconnect:
        raise HTTPException(400, "the client went away before its body was in") from None
    return bytes(data)


async def read_body(request: Request, kind: type[Any]) -> Any:
    """Decode a JSON body of at most ``MAX_BODY`` bytes into ``kind``.

    Raises:
        HTTPException: 413 too large, 422 not valid for ``kind``.
    """
    data = await read_capped(request, MAX_BODY)
    try:
        return msgspec.json.decode(data or b"{}", type=kind)
    except DECODE_ERRORS as exc:
        raise HTTPException(422, str(exc)) from None


def to_action(body: ControlBody, operator: str) -> ControlAction:
    """Validate a control body into an action for ``operator``.

    Raises:
        HTTPException: 422 empty reason, missing key, or ``confirm`` not the target.
    """
    if not body.reason.strip():
        raise HTTPException(422, "reason is required")
    if body.target != "global" and not body.key:
        raise HTTPException(422, f"key is required for target {body.target}")
    expected = body.key if body.target != "global" else "GLOBAL"
    if body.confirm != expected:
        raise HTTPException(422, f"confirm must repeat the target: {expected!r}")
    return ControlAction(verb=body.verb, target=body.target, key=body.key,
                         reason=body.reason.strip(), operator=operator)


def openapi(routes: list[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the JSON API (schemas generated from the Structs)."""
    _, components = msgspec.json.schema_components(
        [FleetSnapshot, BotDetail, ControlBody, AckBody],
        ref_template="#/components/schemas/{name}")

    def ref(name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    def ok(schema: dict[str, Any], text: str) -> dict[str, Any]:
        return {"200": {"description": text, "content": {"application/json": {"schema": schema}}}}

    snap = ok(ref("FleetSnapshot"), "fleet snapshot (money in the fleet currency)")
    secured = {"security": [{"bearer": []}, {"session": []}],
               "responses": {"200": {"description": "done"}, "401": {"description":
                             "no or wrong credentials"}, "403": {"description":
                             "read-only, cross-site or bad CSRF token"},
                             "413": {"description": f"body over {MAX_BODY} bytes"},
                             "422": {"description": "invalid body or confirmation"}}}
    paths: dict[str, Any] = {
        "/api/snapshot": {"get": {"summary": "everything the status page shows",
                                  "responses": snap}},
        "/api/nodes": {"get": {"summary": "agents with heartbeat age and state",
                               "responses": ok({"type": "array"}, "NodeView list")}},
        "/api/bots": {"get": {"summary": "bots with PnL and exposure",
                              "responses": ok({"type": "array"}, "BotView list")}},
        "/api/bots/{node}/{bot}": {"get": {
            "summary": "drill-down: blotter, equity curve, metrics, admission",
            "parameters": [_path("node"), _path("bot")],
            "responses": {**ok(ref("BotDetail"), "bot detail"),
                          "404": {"description": "unknown bot"}}}},
        "/api/alerts": {"get": {"summary": "open and acknowledged alerts",
                                "responses": ok({"type": "array"}, "AlertView list")}},
        "/api/kill": {"get": {"summary": "kill switch state",
                              "responses": ok({"type": "object"}, "KillView")}},
        "/api/pnl": {"get": {"summary": "fleet PnL history [[ms, pnl], ...]",
                             "responses": ok({"type": "array"}, "points")}},
        "/api/control": {"post": {"summary": "kill, flatten or resume (audited)",
                                  "requestBody": _body("ControlBody"), **secured}},
        "/api/alerts/{alert_id}/ack": {"post": {
            "summary": "acknowledge an alert (audited)", "parameters": [_path("alert_id")],
            "requestBody": _body("AckBody"), **secured}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "qtd leader status API", "version": "1"},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "session": {"type": "apiKey", "in": "cookie", "name": "qtd_session"}}},
        "x-websocket": {"/ws/live": "JSON frames, one per second (see qtd.web.live)"},
        "x-routes": sorted({r.path for r in routes}),
    }


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {
        "$ref": f"#/components/schemas/{name}"}}}}
