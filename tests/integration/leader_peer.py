"""Test peers for the leader: a fake agent that speaks the agent's wire protocol, a local
HTTP receiver for Apprise ``json://`` pages, and a leader config for tests.

``FakeAgent`` is a protocol peer, not a mock of qtd code: it writes its events to a real
:class:`~qtd.store.EventStore`, publishes them with the real :class:`~qtd.outbox.Outbox`
(``<prefix>.evt.<node>.<bot>.<kind>``, ``Nats-Msg-Id``), sends heartbeats on
``<prefix>.hb.<node>``, and answers kills on ``<prefix>.ack.kill.<node>`` and ``resume``
requests on ``<prefix>.ctl.<node>.resume`` as the agent does. Its kill acks are one per
stage in ``ack_stages``: by default the single ``durable`` ack of an agent that predates the
in-force ack; ``(IN_FORCE, DURABLE)`` as today's agent; ``(IN_FORCE,)`` an agent whose store
never finishes the kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from qtd import __version__
from qtd.bus import EmbeddedNatsServer, Subjects, connect, ensure_jetstream
from qtd.control import KillCommand, NodeReply, decode_kill
from qtd.events import (
    AckStage,
    Event,
    Fill,
    Heartbeat,
    KillAck,
    OrderAccepted,
    OrderIntent,
    OrderRejected,
    OrderSubmitted,
    PnLSnapshot,
    Side,
    TradingState,
)
from qtd.leader.config import (
    CapsConfig,
    IngestConfig,
    KillConfig,
    LeaderConfig,
    LivenessConfig,
)
from qtd.outbox import Outbox
from qtd.store import EventStore
from tests.integration.conftest import bus_config


class FakeAgent:
    """One agent's wire behaviour (see the module docstring)."""

    def __init__(self, node: str, data_dir: Path, server: EmbeddedNatsServer, *,
                 hb_interval_s: float = 0.1, answer_kills: bool = True,
                 version: str | None = __version__,
                 ack_stages: tuple[AckStage, ...] = (AckStage.DURABLE,)) -> None:
        self.node = node
        self.version = version  # None: an agent older than the heartbeat's version field
        self.path = data_dir / f"{node}.db"
        self.server = server
        self.hb_interval_s = hb_interval_s
        self.answer_kills = answer_kills
        self.ack_stages = ack_stages
        self.heartbeats = True
        self.subjects = Subjects()
        self.state = TradingState.ACTIVE
        self.kills: list[KillCommand] = []
        self.resumes: list[dict[str, Any]] = []
        self.counter = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> FakeAgent:
        self.store = await EventStore.open(self.path, node=self.node)
        self.nc: Client = await connect(bus_config(self.server, name=f"fake-{self.node}"))
        js = self.nc.jetstream()
        await ensure_jetstream(js)
        self.outbox = Outbox(self.store, js, self.subjects)
        await self.nc.subscribe(self.subjects.ctl_kill, cb=self._on_kill)
        await self.nc.subscribe(self.subjects.ctl(self.node, "resume"), cb=self._on_resume)
        self._tasks = [asyncio.create_task(self._beat(), name=f"fake-hb-{self.node}"),
                       asyncio.create_task(self.outbox.run(self._stop, idle_s=0.05),
                                           name=f"fake-outbox-{self.node}")]
        return self

    async def stop(self) -> None:
        self._stop.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.nc.close()
        await self.store.close()

    async def _beat(self) -> None:
        while not self._stop.is_set():
            if self.heartbeats:
                now = time.time_ns()
                hb = Heartbeat(node=self.node, ts_event=now, ts_init=now, role="agent",
                               state=self.state, bots_running=2, version=self.version or "")
                await self.nc.publish(self.subjects.hb(self.node), self._wire(hb))
            await asyncio.sleep(self.hb_interval_s)

    def _wire(self, hb: Heartbeat) -> bytes:
        """The heartbeat as this agent's qtd version sends it (no ``version`` key before it)."""
        if self.version is not None:
            return msgspec.json.encode(hb)
        fields = msgspec.to_builtins(hb)
        del fields["version"]
        return msgspec.json.encode(fields)

    async def _on_kill(self, msg: Msg) -> None:
        kill = decode_kill(msg.data)
        self.kills.append(kill)
        self.state = TradingState.HALTED
        if self.answer_kills:
            now = time.time_ns()
            for stage in self.ack_stages:
                ack = KillAck(node=self.node, ts_event=now, ts_init=now, kill_id=kill.id,
                              scope=kill.scope, scope_key=kill.key, reason=kill.reason,
                              state=TradingState.HALTED, stage=stage)
                await self.nc.publish(f"qtd.ack.kill.{self.node}", msgspec.json.encode(ack))

    async def _on_resume(self, msg: Msg) -> None:
        self.resumes.append(json.loads(msg.data))
        self.state = TradingState.ACTIVE
        reply = NodeReply(ok=True, node=self.node, verb="resume", message="ACTIVE")
        await msg.respond(msgspec.json.encode(reply))

    async def append(self, *events: Event) -> None:
        await self.store.append_many(events)
        self.outbox.notify()

    async def trade(self, bot: str, symbol: str, side: Side, qty: str, price: str, *,
                    account: str = "acct1") -> str:
        """An order filled at once: intent, submitted, accepted, fill."""
        self.counter += 1
        cid = f"{self.node}.{bot}.{self.counter}"
        now = time.time_ns()
        base: dict[str, Any] = {"node": self.node, "bot": bot, "ts_event": now, "ts_init": now}
        await self.append(
            OrderIntent(**base, client_order_id=cid, cid_counter=self.counter, account=account,
                        venue="paper", symbol=symbol, side=side, qty=Decimal(qty)),
            OrderSubmitted(**base, client_order_id=cid),
            OrderAccepted(**base, client_order_id=cid, venue_order_id=f"v{cid}"),
            Fill(**base, client_order_id=cid, trade_id=f"t{cid}", account=account,
                 venue="paper", symbol=symbol, side=side, qty=Decimal(qty),
                 price=Decimal(price)))
        return cid

    async def reject(self, bot: str, symbol: str, *, account: str = "acct1") -> None:
        self.counter += 1
        cid = f"{self.node}.{bot}.{self.counter}"
        now = time.time_ns()
        base: dict[str, Any] = {"node": self.node, "bot": bot, "ts_event": now, "ts_init": now}
        await self.append(
            OrderIntent(**base, client_order_id=cid, cid_counter=self.counter, account=account,
                        venue="paper", symbol=symbol, side=Side.BUY, qty=Decimal(1)),
            OrderRejected(**base, client_order_id=cid, reason="insufficient funds"))

    async def pnl_tick(self, bot: str, realized: str = "0", unrealized: str = "0") -> None:
        now = time.time_ns()
        snap = PnLSnapshot(node=self.node, bot=bot, ts_event=now, ts_init=now, account="acct1",
                           realized=Decimal(realized), unrealized=Decimal(unrealized),
                           fees=Decimal(0))
        await self.nc.publish(self.subjects.pnl(self.node, bot), msgspec.json.encode(snap))


class PageReceiver:
    """A local HTTP server recording every POSTed JSON body (an Apprise ``json://`` target).

    ``fail_first`` requests are answered 500 (to exercise retries).
    """

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_left = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if outer.fail_left > 0:
                    outer.fail_left -= 1
                    self.send_response(500)
                else:
                    outer.bodies.append(json.loads(data))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.httpd.server_address[1]}/page"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def leader_config(tmp: Path, server: EmbeddedNatsServer, *, caps: CapsConfig | None = None,
                  page_url: str | None = None, hb_timeout_s: float = 5.0,
                  kill: KillConfig | None = None, **notify: Any) -> LeaderConfig:
    """A leader config for tests: fast loops, pages (all severities) to ``page_url``."""
    dest = {s: [page_url] for s in ("P1", "P2", "P3", "P4")} if page_url else {}
    return msgspec.convert({
        "fleet_db": str(tmp / "leader" / "fleet.db"),
        "bus": msgspec.to_builtins(bus_config(server, name="qtd-leader")),
        "ingest": msgspec.to_builtins(IngestConfig(fetch_timeout_s=0.05, batch=500,
                                                    ack_wait_s=2.0)),
        "caps": msgspec.to_builtins(caps or CapsConfig()),
        "kill": msgspec.to_builtins(kill or KillConfig(ack_timeout_s=1.0)),
        "liveness": msgspec.to_builtins(LivenessConfig(
            heartbeat_timeout_s=hb_timeout_s, check_interval_s=0.05,
            heartbeat_interval_s=0.2)),
        "notify": {"destinations": dest, "retry_base_s": 0.05, "send_timeout_s": 5.0,
                   **notify},
    }, LeaderConfig)


async def wait_for(pred: Any, timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll ``pred()`` every 20 ms until true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def agents(data_dir: Path, server: EmbeddedNatsServer, names: list[str], **kw: Any
                 ) -> Any:
    peers = [await FakeAgent(n, data_dir, server, **kw).start() for n in names]
    try:
        yield peers
    finally:
        for p in peers:
            await p.stop()
