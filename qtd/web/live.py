"""Live PnL: one sampler takes a fleet snapshot every ``period_s`` and pushes one compact
frame to every WebSocket client, however many bots changed.

A frame is a :class:`~qtd.web.frames.Tick` (JSON, ``type = "tick"``; its Structs name every
field, and ``static/app.js`` reads them by name): fleet totals, the fleet's order counts,
per bot its figures and texts (:class:`~qtd.web.frames.BotFigures`), the limit-bar layouts,
caps, nodes, symbols, the kill state and open alerts.

Every number the overview shows is in the frame, so nothing on the page goes stale beside a
live neighbour (a position shown next to a newer exposure, say); and every figure of a frame
(totals, caps, bots, the chart's new point) comes from one snapshot. A page is rendered from
a snapshot the hub records as a tick (:meth:`PnlHub.sample`), so its figures and the chart's
last point agree too (the page tells the script its snapshot time: ``data-t``).

A bot's limit bars are named once per distinct layout (bots with the same limits share
one), so a frame stays small with 500 bots and is still complete on its own: a client that
missed frames, or a row whose limits changed, is rebuilt from any single frame.

A client first gets a :class:`~qtd.web.frames.Hello` (``type = "hello"``) with the fleet PnL
history (and the history of one bot when it connected with ``?bot=node/bot``). The frame is
encoded once per tick and shared; a slow client's queue keeps only the newest frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

import anyio
import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from qtd.fleetsnapshot import FleetSnapshot, KillView
from qtd.web import botrow
from qtd.web.frames import (
    AlertLine,
    BotFigures,
    CapFigures,
    FleetFigures,
    Hello,
    KillEntry,
    KillFigures,
    NodeFigures,
    Point,
    SymbolFigures,
    Tick,
)
from qtd.web.protocol import FleetSource

log = logging.getLogger("qtd.web.live")
_QUEUE = 4


def tick_frame(snap: FleetSnapshot) -> Tick:
    """The compact per-tick frame of a snapshot (module docstring)."""
    t = snap.totals
    positions = botrow.positions_by_bot(snap)
    layouts: dict[str, int] = {}
    bots: dict[str, BotFigures] = {}
    for b in snap.bots:
        a = b.agg
        bots[f"{b.node}/{b.bot}"] = BotFigures(
            pnl=round(a.pnl_today, 2), gross=round(a.gross_exposure, 2),
            total=round(a.realized + a.unrealized, 2),
            pos=positions.get((b.node, b.bot), "flat"), stage=b.stage,
            state=botrow.bot_state(b),
            layout=layouts.setdefault(botrow.layout(b.limits), len(layouts)),
            utils=[botrow.pct(x.utilisation) for x in b.limits], counts=botrow.counts(a),
            why=botrow.bot_why(b, snap.ts_ns), denies=botrow.denials(b))
    return Tick(
        t=snap.ts_ns // 1_000_000,
        fleet=FleetFigures(pnl=t.pnl_today, realized=t.realized, unrealized=t.unrealized,
                           equity=snap.equity, gross=t.gross_exposure, dd=snap.drawdown_pct),
        counts=botrow.counts(t, 3), bots=bots,
        layouts=[sig.split("|") if sig else [] for sig in layouts],
        caps=[CapFigures(value=round(c.value, 2), pct=botrow.pct(c.utilisation), key=c.key)
              for c in snap.caps],
        nodes={n.node: NodeFigures(age=n.heartbeat_age_s, alive=n.alive, state=n.state,
                                   bots=n.bots_running, pnl=round(n.agg.pnl_today, 2))
               for n in snap.nodes},
        symbols={s.symbol: SymbolFigures(
            qty=s.net_qty, mark=s.mark, net=round(s.agg.net_exposure, 2),
            pct=None if s.cap_utilisation is None else botrow.pct(s.cap_utilisation))
            for s in snap.symbols},
        kill=_kill(snap.kill),
        alerts=[AlertLine(alert_id=a.alert_id, severity=a.severity, status=a.status,
                          title=a.title) for a in snap.alerts])


def _kill(k: KillView) -> KillFigures:
    return KillFigures(
        active=k.active, scope=k.scope, key=k.key, reason=k.reason, operator=k.operator,
        pending=k.pending, kills=[KillEntry(kill_id=a.kill_id, scope=a.scope, key=a.key,
                                            reason=a.reason, who=a.operator or a.source,
                                            pending=a.pending) for a in k.kills])


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
        self.fleet: deque[Point] = deque(maxlen=history)
        self.bots: dict[str, deque[Point]] = {}
        self.history = history
        self.subscribers: set[asyncio.Queue[str]] = set()
        self.frames = 0
        self.last_frame_bytes = 0
        self._stop = asyncio.Event()

    def tick(self) -> str:
        """Sample once: record history, encode the frame, hand it to every subscriber."""
        return self._record(self.source.snapshot())

    def sample(self) -> FleetSnapshot:
        """A fresh snapshot, recorded and pushed like a tick: a page rendered from it shows
        the same figures as the chart's last point and the frame every client gets."""
        snap = self.source.snapshot()
        self._record(snap)
        return snap

    def _record(self, snap: FleetSnapshot) -> str:
        frame = tick_frame(snap)
        t = frame.t
        self.fleet.append((t, frame.fleet.pnl))
        for key, row in frame.bots.items():
            hist = self.bots.get(key)
            if hist is None:
                hist = self.bots[key] = deque(maxlen=self.history)
            hist.append((t, row.pnl))
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
        frame = Hello(period_s=self.period_s, fleet=list(self.fleet), bot=bot,
                      bot_history=list(self.bots.get(bot, ())))
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
