"""The parts of ``benchmarks/isolation.py``: strategy files, recorders, the kill rig, the
paced feed, statistics, ``/proc`` readers and the report table."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from qtd.aio import TaskSet
from qtd.brokers.paper import PaperBroker
from qtd.clock import LiveClock
from qtd.control import KillCommand
from qtd.events import Event, Scope, TradingState, TradingStateChanged
from qtd.execution import OrderRouter
from qtd.feeds import Bar
from qtd.orders import ClientOrderIds, OrderRequest
from qtd.projections import Projections
from qtd.risk import RiskEngine, parse_risk_config
from qtd.runner import BotRunner, BotSpec, BotState
from qtd.store import EventStore
from qtd.strategy import Strategy
from qtd.workers.load import exec_file, ref_for, strategies_in
from qtd.workers.pool import WorkerPool
from qtd.workers.protocol import Call, StrategyRef, frame

MIB = 1024 * 1024
SYMBOL = "GOOG"
HEADER = """
from qtd.strategy import Strategy

class S(Strategy):
    class Params(Strategy.Params):
        qty: int = 1
        stuck_at: int = 0
        count: int = 3_000_000_000
        chunk_mb: int = 5
"""
BUYER = HEADER + """
    def on_bar(self, bar):
        self.buy(self.params.qty)
"""
STUCK = HEADER + """
    n = 0
    def on_bar(self, bar):
        self.n += 1
        if self.n == self.params.stuck_at:
            sum(range(self.params.count))  # one C call holding the GIL
        self.buy(self.params.qty)
"""
HOG = HEADER + """
    def on_start(self):
        self.held = []
    def on_bar(self, bar):
        self.held.append(b"x" * (self.params.chunk_mb << 20))  # pages written, not calloc'd
"""


def call_frame() -> bytes:
    """A framed :class:`~qtd.workers.protocol.Call` of ``on_bar`` as the agent sends it."""
    return frame(msgspec.msgpack.encode(Call("bot", "on_bar", 1, None, bar(1))))


def bar(i: int) -> Bar:
    px = Decimal(100 + i % 7)
    return Bar(SYMBOL, i * 60_000_000_000, 60_000_000_000, px, px, px, px, Decimal(10))


class Strategies:
    """Strategy files in a temporary directory: a :class:`StrategyRef` (worker) or the
    class (inline) for each."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def load(self, name: str, source: str, **params: Any
             ) -> tuple[type[Strategy], Strategy.Params, StrategyRef]:
        path = self.root / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        raw = path.read_bytes()
        cls = strategies_in(exec_file(path, raw))[0]
        p = msgspec.convert(params, cls.Params)
        return cls, p, ref_for(path, raw, cls, p)

    def ref(self, name: str, source: str, **params: Any) -> StrategyRef:
        return self.load(name, source, **params)[2]


class Stamps:
    """Every bot's ``submit`` and ``emit``: bar → order request latency (ns) per bot, from
    the ``handle`` call and from the bar's due time, and when each bot went HALTED (all
    ``perf_counter_ns``)."""

    def __init__(self) -> None:
        self.sent: dict[str, tuple[int, int]] = {}
        self.lat: dict[str, list[int]] = defaultdict(list)
        self.lat_due: dict[str, list[int]] = defaultdict(list)
        self.halted: dict[str, int] = {}

    def bar(self, bot: str, due_ns: int = 0) -> None:
        """``bot`` is handed a bar now (due at ``due_ns``; 0: now)."""
        now = time.perf_counter_ns()
        self.sent[bot] = (now, due_ns or now)

    async def submit(self, req: OrderRequest) -> None:
        t = self.sent.pop(req.bot, None)
        if t is not None:
            now = time.perf_counter_ns()
            self.lat[req.bot].append(now - t[0])
            self.lat_due[req.bot].append(now - t[1])

    async def emit(self, ev: Event) -> None:
        if isinstance(ev, TradingStateChanged) and ev.new is TradingState.HALTED:
            self.halted.setdefault(ev.bot, time.perf_counter_ns())

    def take(self, bots: Sequence[str]) -> tuple[list[int], list[int]]:
        """The latencies of ``bots`` since the last take, from ``handle`` and from the due
        time (then forgotten)."""
        handed = [x for b in bots for x in self.lat.pop(b, [])]
        return handed, [x for b in bots for x in self.lat_due.pop(b, [])]


def runner(strategy: type[Strategy] | StrategyRef, params: Strategy.Params | None, name: str,
           stamps: Stamps, pool: WorkerPool | None, *, budget: float = 0.5,
           account: str = "acct") -> BotRunner:
    spec = BotSpec(name=name, account=account, venue="paper", symbols=(SYMBOL,))
    return BotRunner(strategy, params, spec, clock=LiveClock(), submit=stamps.submit,
                     emit=stamps.emit, workers=pool, hook_budget_s=budget, keep_requests=0)


class KillRig:
    """The agent's local kill path on real parts: kills delivered from a thread run
    :meth:`OrderRouter.kill` (GLOBAL), then a resume, so each is an ACTIVE → HALTED change."""

    def __init__(self, store: EventStore, router: OrderRouter) -> None:
        self.store, self.router = store, router
        self.tasks = TaskSet()
        self.from_sent: list[int] = []
        self.from_due: list[int] = []
        self.probes: list[int] = []

    @classmethod
    async def open(cls, directory: Path) -> KillRig:
        clock = LiveClock()
        store = await EventStore.open(directory / "events.db", node="bench")
        proj = Projections()
        cfg = parse_risk_config({"global": {}, "accounts": {"acct": {"equity": 1e9}},
                                 "strategies": {}, "symbols": {SYMBOL: {}}})
        risk = RiskEngine(cfg, proj, clock, "bench")
        broker = PaperBroker(account="acct", node="bench", clock=clock)
        router = OrderRouter(store=store, clock=clock, risk=risk, cids=ClientOrderIds(store),
                             brokers={"acct": broker}, projections=proj)
        return cls(store, router)

    def arrive(self, due_ns: int, sent_ns: int) -> None:
        """On the event loop thread: a kill request arrived."""
        self.tasks.spawn(self._kill(due_ns, sent_ns), "kill")

    async def _kill(self, due_ns: int, sent_ns: int) -> None:
        t = time.perf_counter_ns()
        report = await self.router.kill(KillCommand(scope=Scope.GLOBAL, reason="bench",
                                                    source="kill_file"))
        in_force = t + report.halted_ns
        self.from_sent.append(in_force - sent_ns)
        self.from_due.append(in_force - due_ns)
        await self.router.resume(Scope.GLOBAL, "", operator="bench", reason="next kill")

    def probe(self, sent_ns: int) -> None:
        """On the event loop thread: a no-op delivered like a kill (the floor: how soon the
        loop runs a callback from another thread)."""
        self.probes.append(time.perf_counter_ns() - sent_ns)

    def take(self) -> tuple[list[int], list[int], list[int]]:
        """Kill latencies (ns) from delivery, from the due time, and the probes', since the
        last take."""
        out = self.from_sent, self.from_due, self.probes
        self.from_sent, self.from_due, self.probes = [], [], []
        return out

    async def close(self) -> None:
        await self.tasks.drain(5.0)
        await self.store.close()


def kill_offsets(n: int, window_s: float) -> list[float]:
    """``n`` kill times in ``[0, window_s)``, gaps random but at least a fifth of the mean."""
    mean = window_s / n
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += random.uniform(0.2 * mean, 1.8 * mean)
    return [x * window_s / max(t, 1e-9) for x in out]


class KillThread:
    """A thread that, from :meth:`go` on, delivers a kill to ``rig`` at each offset (s) with
    ``loop.call_soon_threadsafe``, as a kill file poll or a NATS message reaches the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rig: KillRig, offsets: list[float]
                 ) -> None:
        self.loop, self.rig, self.offsets = loop, rig, offsets
        self._go = threading.Event()
        self._base = 0
        self._thread = threading.Thread(target=self._deliver, name="kill-deliverer",
                                        daemon=True)
        self._thread.start()

    def go(self) -> None:
        """Start now (the offsets count from this call, not from when the thread runs)."""
        self._base = time.perf_counter_ns()
        self._go.set()

    def _deliver(self) -> None:
        self._go.wait()
        ends = [*self.offsets[1:], self.offsets[-1] + 0.02]
        for off, nxt in zip(self.offsets, ends, strict=True):
            self._sleep_until(off)
            self.loop.call_soon_threadsafe(self.rig.arrive, self._base + int(off * 1e9),
                                           time.perf_counter_ns())
            self._sleep_until((off + nxt) / 2)  # a probe halfway to the next kill
            self.loop.call_soon_threadsafe(self.rig.probe, time.perf_counter_ns())

    def _sleep_until(self, off: float) -> None:
        wait = (self._base + int(off * 1e9) - time.perf_counter_ns()) / 1e9
        if wait > 0:
            time.sleep(wait)

    async def joined(self) -> None:
        """Wait until every kill was delivered and is in force."""
        while self._thread.is_alive() or len(self.rig.from_sent) < len(self.offsets):
            await asyncio.sleep(0.01)


class Paced:
    """N bots, each fed a bar every ``interval_s`` by its own task until :meth:`stop`; with
    ``echo``, one more task doing a bare round trip of ``frame`` on the same schedule (the
    machine's floor under the same load: no qtd code)."""

    def __init__(self, runners: list[BotRunner], stamps: Stamps, interval_s: float,
                 echo: Echo | None = None, frame: bytes = b"") -> None:
        self.runners, self.stamps, self.interval_s = runners, stamps, interval_s
        self.names = [r.name for r in runners]
        self.echo, self.frame = echo, frame
        self.echoes: list[int] = []
        self.tasks = TaskSet()
        self._stop = asyncio.Event()

    async def start(self) -> None:
        assert all(await asyncio.gather(*(r.start() for r in self.runners)))
        for r in self.runners:
            self.tasks.spawn(self._feed(r), f"feed:{r.name}")
        if self.echo is not None:
            self.tasks.spawn(self._probe(self.echo), "echo")

    async def _every(self) -> Any:
        """Yield on a fixed schedule (a late tick comes at once, as from a socket) with the
        due time, ns."""
        step = int(self.interval_s * 1e9)
        due = time.perf_counter_ns() + random.randrange(step)  # not all in step
        while not self._stop.is_set():
            wait = (due - time.perf_counter_ns()) / 1e9
            if wait > 0:
                await asyncio.sleep(wait)
            yield due
            due += step

    async def _feed(self, r: BotRunner) -> None:
        i = 0
        async for due in self._every():
            if r.state is not BotState.RUNNING:
                return
            self.stamps.bar(r.name, due)
            await r.handle(bar(i))
            i += 1

    async def _probe(self, echo: Echo) -> None:
        async for _ in self._every():
            self.echoes.append(await echo.streamed(self.frame))

    def take(self) -> tuple[list[int], list[int], list[int]]:
        """The bots' latencies (from ``handle``, from the due time) and the echo round trips
        since the last take, ns."""
        echoes, self.echoes = self.echoes, []
        return (*self.stamps.take(self.names), echoes)

    async def stop(self) -> list[BotState]:
        self._stop.set()
        await self.tasks.drain(10.0)
        return [await r.finish() for r in self.runners]


ECHO = """
import socket, sys
s = socket.socket(fileno=int(sys.argv[1]))
while len(h := s.recv(4, socket.MSG_WAITALL)) == 4:
    s.sendall(h + s.recv(int.from_bytes(h, "big"), socket.MSG_WAITALL))
"""


class Echo:
    """Two child processes echoing length-prefixed frames on socketpairs: the machine's
    floor for one round trip to another process, with blocking calls and on asyncio
    streams (as :meth:`qtd.workers.pool.Worker.request` does it)."""

    def __init__(self, procs: list[subprocess.Popen[bytes]], sock: socket.socket,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.procs, self.sock, self.reader, self.writer = procs, sock, reader, writer

    @classmethod
    async def start(cls) -> Echo:
        socks, procs = [], []
        for _ in range(2):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            procs.append(subprocess.Popen([sys.executable, "-c", ECHO, str(theirs.fileno())],
                                          pass_fds=(theirs.fileno(),)))
            theirs.close()
            socks.append(ours)
        reader, writer = await asyncio.open_unix_connection(sock=socks[1])
        return cls(procs, socks[0], reader, writer)

    def blocking(self, msg: bytes) -> int:
        """One round trip of ``msg`` (a frame) with blocking calls, ns."""
        t = time.perf_counter_ns()
        self.sock.sendall(msg)
        self.sock.recv(len(msg), socket.MSG_WAITALL)
        return time.perf_counter_ns() - t

    async def streamed(self, msg: bytes) -> int:
        """One round trip of ``msg`` (a frame) on asyncio streams, ns."""
        t = time.perf_counter_ns()
        self.writer.write(msg)
        await self.writer.drain()
        header = await self.reader.readexactly(4)
        await self.reader.readexactly(int.from_bytes(header, "big"))
        return time.perf_counter_ns() - t

    async def close(self) -> None:
        self.sock.close()
        self.writer.close()
        await self.writer.wait_closed()
        for p in self.procs:
            p.wait(5)


# --- statistics, /proc, the report -----------------------------------------------------------


def pct(xs: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``xs`` (nearest rank; ``q = 0.99`` of fewer than 100 values is
    their maximum)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(q * len(s) + 0.999999) - 1))]


def summary(xs: Sequence[float], scale: float = 1.0) -> dict[str, float]:
    """n, p50, p99 and max of ``xs`` divided by ``scale``."""
    if not xs:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    return {"n": len(xs), "p50": statistics.median(xs) / scale, "p99": pct(xs, 0.99) / scale,
            "max": max(xs) / scale}


def poll_gone(pid: int, out: list[int], timeout_s: float) -> None:
    """Append the ``perf_counter_ns`` at which ``pid`` no longer exists (``os.kill(pid, 0)``
    raises ``ProcessLookupError``: ended and reaped), polling every 0.5 ms."""
    end = time.perf_counter() + timeout_s
    while time.perf_counter() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            out.append(time.perf_counter_ns())
            return
        time.sleep(0.0005)


def children_running(module: str, parent: int | None = None) -> list[int]:
    """Pids of the child processes of ``parent`` (default: this one) whose command line
    names ``module`` (``/proc/PID/stat`` and ``cmdline``)."""
    parent = os.getpid() if parent is None else parent
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile
        if module.encode() in argv:
            out.append(int(entry))
    return out


class Report:
    """Rows of (figure, measured, reference or target, pass mark) and the raw figures."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, bool | None]] = []
        self.data: dict[str, Any] = {}
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        self.notes.append(text)

    def row(self, figure: str, measured: str, reference: str, ok: bool | None = None) -> None:
        self.rows.append((figure, measured, reference, ok))

    def table(self) -> str:
        w0 = max(len(r[0]) for r in self.rows)
        w1 = max(len(r[1]) for r in self.rows)
        mark = {True: "PASS", False: "FAIL", None: ""}
        return "\n".join(f"{f:<{w0}}  {m:<{w1}}  {mark[ok]:4}  {ref}"
                         for f, m, ref, ok in self.rows)

    @property
    def missed(self) -> list[str]:
        return [r[0] for r in self.rows if r[3] is False]
