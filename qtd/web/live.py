"""Live PnL: one sampler takes a fleet snapshot every ``period_s`` and pushes one compact
frame to every WebSocket client, however many bots changed.

Frame (JSON, ``type = "tick"``)::

    {"type": "tick", "t": <ms>, "fleet": {"pnl": today, "realized", "unrealized",
     "equity", "gross", "dd"}, "bots": {"node/bot": [pnl_today, gross, realized+unrealized]},
     "nodes": {"node": [heartbeat_age_s | null, alive, state]}, "kill": {...},
     "alerts": [{alert_id, severity, status, title}]}

A client first gets ``type = "hello"`` with the fleet PnL history (and the history of one
bot when it connected with ``?bot=node/bot``). The frame is encoded once per tick and shared;
a slow client's queue keeps only the newest frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import anyio
import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from qtd.leader.snapshot import FleetSnapshot
from qtd.web.source import FleetSource

log = logging.getLogger("qtd.web.live")
_QUEUE = 4


def tick_frame(snap: FleetSnapshot) -> dict[str, Any]:
    """The compact per-tick frame of a snapshot (module docstring)."""
    t = snap.totals
    k = snap.kill
    return {
        "type": "tick", "t": snap.ts_ns // 1_000_000,
        "fleet": {"pnl": t.pnl_today, "realized": t.realized, "unrealized": t.unrealized,
                  "equity": snap.equity, "gross": t.gross_exposure, "dd": snap.drawdown_pct},
        "bots": {f"{b.node}/{b.bot}": [b.agg.pnl_today, b.agg.gross_exposure,
                                       b.agg.realized + b.agg.unrealized] for b in snap.bots},
        "nodes": {n.node: [n.heartbeat_age_s, n.alive, n.state] for n in snap.nodes},
        "kill": {"active": k.active, "scope": k.scope, "key": k.key, "reason": k.reason,
                 "operator": k.operator, "pending": k.pending},
        "alerts": [{"alert_id": a.alert_id, "severity": a.severity, "status": a.status,
                    "title": a.title} for a in snap.alerts],
    }


class PnlHub:
    """The sampler and its subscribers.

    Args:
        source: where snapshots come from.
        period_s: seconds between frames.
        history: points kept for the fleet and for each bot.
    """

    def __init__(self, source: FleetSource, period_s: float = 1.0, history: int = 900) -> None:
        self.source = source
        self.period_s = period_s
        self.fleet: deque[tuple[int, float]] = deque(maxlen=history)
        self.bots: dict[str, deque[tuple[int, float]]] = {}
        self.history = history
        self.subscribers: set[asyncio.Queue[str]] = set()
        self.frames = 0
        self.last_frame_bytes = 0
        self._stop = asyncio.Event()

    def tick(self) -> str:
        """Sample once: record history, encode the frame, hand it to every subscriber."""
        frame = tick_frame(self.source.snapshot())
        t = frame["t"]
        self.fleet.append((t, frame["fleet"]["pnl"]))
        for key, row in frame["bots"].items():
            hist = self.bots.get(key)
            if hist is None:
                hist = self.bots[key] = deque(maxlen=self.history)
            hist.append((t, row[0]))
        text = msgspec.json.encode(frame).decode()
        self.frames += 1
        self.last_frame_bytes = len(text)
        for q in self.subscribers:
            if q.full():
                q.get_nowait()  # slow client: drop its oldest frame
            q.put_nowait(text)
        return text

    async def run(self) -> None:
        """Tick every ``period_s`` until :meth:`stop` (a failed tick is logged, not fatal)."""
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("web.tick_failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.period_s):
                    await self._stop.wait()

    def stop(self) -> None:
        """End :meth:`run` and tell connected clients to go (they reconnect)."""
        self._stop.set()
        for q in self.subscribers:
            if q.full():
                q.get_nowait()
            q.put_nowait("")

    def hello(self, bot: str = "") -> str:
        """The first frame of a connection: fleet (and one bot's) PnL history."""
        frame = {"type": "hello", "period_s": self.period_s, "fleet": list(self.fleet),
                 "bot": bot, "bot_history": list(self.bots.get(bot, ()))}
        return msgspec.json.encode(frame).decode()

    async def serve(self, ws: WebSocket) -> None:
        """Serve one WebSocket client until it or the hub goes away."""
        await ws.accept()
        q: asyncio.Queue[str] = asyncio.Queue(_QUEUE)
        self.subscribers.add(q)
        try:
            await ws.send_text(self.hello(ws.query_params.get("bot", "")))
            async with anyio.create_task_group() as tg:
                tg.start_soon(_until_closed, ws, tg.cancel_scope)
                while (text := await q.get()):
                    await ws.send_text(text)
                tg.cancel_scope.cancel()
            await ws.close(1012)  # service restart: the client reconnects
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the client went away
        finally:
            self.subscribers.discard(q)


async def _until_closed(ws: WebSocket, scope: anyio.CancelScope) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                break
    scope.cancel()
