"""Agent figures: one agent, 50 bots on 20 symbols at 10 bars/s each, beside bare JetStream.

Measures (issue 12), in one run against one embedded nats-server (JetStream, file storage;
``--js-sync always`` fsyncs every write before its ack, ``--js-sync default`` keeps
nats-server's 2-minute interval — safe for qtd because the outbox audits the stream on every
connect and re-sends what a crashed server lost, :meth:`qtd.outbox.Outbox.audit`):
  1. CPU of the agent process, % of one core (``resource.getrusage``), while trading;
  2. event → JetStream ack latency p50/p99: from the moment the store's append returned
     (the event is durable in SQLite) to the PubAck of its publish by the outbox (the
     outbox's ``observer`` hook), split into append → publish and publish → ack;
  3. outbox drain rate after a NATS outage (events/s): the backlog stored while NATS was
     down, divided by the time from reconnection to its last ack;
  reference: bare JetStream ``publish`` + ack one at a time (p50/p99) and pipelined
  ``publish_async`` (msg/s) on the same server, in the same run.

Targets: p99 <= 2 ms; drain >= 20,000 events/s. Exits 1 if a target is missed.

Bars are synthetic one-minute bars replayed at 600x (10 bars/s per symbol); each bot flips
its position every ``--trade-every`` bars (a market order, filled by the paper broker: four
events per order — intent, submitted, accepted, fill). Symbols S00..S19 are registered for
the paper venue in this process only.

Usage: python benchmarks/agent.py [--duration S] [--outage S] [--trade-every N] [--dir DIR]
                                 [--js-sync always|default]
       (the issue's figure uses a 60 s outage: --outage 60)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from qtd.admit.instruments import INSTRUMENTS, Instrument
from qtd.agent.config import load_agent_config
from qtd.agent.daemon import Agent, build_agent
from qtd.bus import EmbeddedNatsServer, connect, ensure_jetstream
from qtd.bus.config import BusConfig
from qtd.feeds import Bar

N_BOTS, N_SYMBOLS, BARS_PER_S = 50, 20, 10
SYMBOLS = [f"S{i:02d}" for i in range(N_SYMBOLS)]

STRATEGY = '''
from qtd.strategy import Strategy

class Flip(Strategy):
    class Params(Strategy.Params):
        qty: float = 1.0
        every: int = 5

    def on_start(self):
        self.n = 0

    def on_bar(self, bar):
        self.n += 1
        if self.n % self.params.every == 0:
            self.target_position(self.params.qty if (self.n // self.params.every) % 2 else 0)
'''


def synthetic_bars(n: int, step_ns: int = 60_000_000_000) -> list[Bar]:
    """``n`` one-minute bars zig-zagging around 100 (restamped per symbol by the feed)."""
    t0, out = 1_600_000_000_000_000_000, []
    for i in range(n):
        px = Decimal(100 + (i % 7)) + Decimal(i % 3) / 10
        out.append(Bar("SYN", t0 + i * step_ns, step_ns, px, px + 1, px - 1, px, Decimal(100)))
    return out


def write_fleet(root: Path, url: str, every: int) -> Path:
    (root / "bots").mkdir(parents=True, exist_ok=True)
    (root / "flip.py").write_text(STRATEGY)
    risk = ["[global]", "duplicate_window_s = 0.0", "order_spike_factor = 0.0",
            "max_data_age_s = 60.0", "[accounts.paper-main]", "equity = 1e9",
            "[strategy_defaults]"] + [f"[symbols.{s}]" for s in SYMBOLS]
    (root / "risk.toml").write_text("\n".join(risk) + "\n")
    market = ["[market]", f"speed = {60.0 * BARS_PER_S}"]
    for i in range(N_BOTS):
        sym = SYMBOLS[i % N_SYMBOLS]
        (root / "bots" / f"b{i:02d}.toml").write_text(
            f'name = "b{i:02d}"\nstrategy = "../flip.py"\nvenue = "paper"\n'
            f'account = "paper-main"\nsymbols = ["{sym}"]\n[params]\nevery = {every}\n')
        market += [f"[market.bots.b{i:02d}]", f'dataset = "goog_1d"\nsymbol = "{sym}"',
                   f"speed = {60.0 * BARS_PER_S}"]
    cfg = root / "agent.toml"
    cfg.write_text(
        'node = "bench"\nstate_dir = "state"\nbots = ["bots"]\nrisk = "risk.toml"\n'
        'kill_file = "kill"\nadmit_smoke = false\nfailsafe = "NONE"\n'
        f'[bus]\nservers = ["{url}"]\nreconnect_wait_min = 0.05\nreconnect_wait_max = 0.2\n'
        "[accounts.paper-main]\ncash = 1e9\n" + "\n".join(market) + "\n")
    return cfg


class AckClock:
    """Records when each seq became durable (store listener) and when JetStream acked it."""

    def __init__(self) -> None:
        self.appended: dict[int, float] = {}
        self.acked: dict[int, float] = {}
        self.sent: dict[int, float] = {}
        self.recording = False

    def on_append(self, events: Any) -> None:
        now = time.perf_counter()
        if self.recording:
            for ev in events:
                self.appended[ev.seq] = now

    def observe(self, what: str, seq: int) -> None:
        """The outbox's observer: ``("sent" | "acked", seq)``."""
        (self.sent if what == "sent" else self.acked).setdefault(seq, time.perf_counter())

    def latencies_ms(self, start: str = "appended", end: str = "acked") -> list[float]:
        a, b = getattr(self, start), getattr(self, end)
        return sorted((b[s] - a[s]) * 1000 for s in self.appended if s in b and s in a)


def pct(xs: list[float], p: float) -> float:
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


async def bare_reference(url: str, n: int = 2000) -> tuple[float, float, float]:
    nc = await connect(BusConfig(servers=(url,)))
    try:
        js = nc.jetstream()
        await ensure_jetstream(js, "ref", stream="REF_EVENTS", bucket="ref_control")
        lat = []
        for i in range(n):
            t = time.perf_counter()
            await js.publish(f"ref.evt.n.b.K{i % 3}", b'{"x":1}' * 20)
            lat.append((time.perf_counter() - t) * 1000)
        lat.sort()
        t = time.perf_counter()
        futs = [await js.publish_async(f"ref.evt.n.b.K{i % 3}", b'{"x":1}' * 20)
                for i in range(n * 5)]
        await asyncio.gather(*futs)
        rate = n * 5 / (time.perf_counter() - t)
        return pct(lat, 50), pct(lat, 99), rate
    finally:
        await nc.close()


async def loop_lag(stop: asyncio.Event, out: list[float], step_s: float = 0.001) -> None:
    """How late the event loop wakes a 1 ms sleep (ms): what any callback, an ack's
    included, waits behind the agent's other work."""
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(step_s)
        out.append((time.perf_counter() - t - step_s) * 1000)


async def measure(agent: Agent, clock: AckClock, duration: float, lag: list[float]
                  ) -> tuple[float, int]:
    r0, t0, s0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), \
        agent.store.last_seq
    clock.recording = True
    stop = asyncio.Event()
    probe = asyncio.create_task(loop_lag(stop, lag))
    await asyncio.sleep(duration)
    stop.set()
    await probe
    clock.recording = False
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / (t1 - t0) * 100
    return cpu, agent.store.last_seq - s0


async def drain(agent: Agent, server: EmbeddedNatsServer, outage: float) -> tuple[int, float]:
    await server.stop()
    await asyncio.sleep(outage)
    await server.start()
    link = agent.link
    assert link is not None
    while not link.connected:
        await asyncio.sleep(0.005)
    t0, target = time.perf_counter(), agent.store.last_seq
    backlog = target - await agent.store.watermark()
    while await agent.store.watermark() < target:
        await asyncio.sleep(0.002)
    return backlog, backlog / (time.perf_counter() - t0)


async def run(args: argparse.Namespace) -> int:
    INSTRUMENTS["paper"].update({s: Instrument(venue="paper", symbol=s, asset_class="equity",
                                               currency="USD", calendar="XNYS")
                                 for s in SYMBOLS})
    root = Path(args.dir or tempfile.mkdtemp(prefix="qtd-bench-agent-"))
    server = EmbeddedNatsServer(root / "nats", js_max_storage=4 << 30,
                                sync_interval="always" if args.js_sync == "always" else None)
    async with server:
        ref50, ref99, ref_rate = await bare_reference(server.url)
        cfg = load_agent_config(write_fleet(root, server.url, args.trade_every))
        bars = synthetic_bars(int(BARS_PER_S * (args.duration + args.outage + 60)))
        clock = AckClock()
        agent = await build_agent(cfg, items={"goog_1d": bars}, on_stored=clock.on_append)
        task = asyncio.create_task(agent.run())
        await asyncio.wait_for(agent.ready.wait(), 60)
        assert agent.link is not None and agent.link.outbox is not None
        agent.link.outbox.observer = clock.observe
        await asyncio.sleep(2)  # warm up
        lag: list[float] = []
        cpu, events = await measure(agent, clock, args.duration, lag)
        backlog, rate = await drain(agent, server, args.outage)
        agent.request_shutdown()
        await asyncio.wait_for(task, 60)
    lat = clock.latencies_ms()
    print(f"JetStream sync_interval: {args.js_sync}")
    print(f"agent: {N_BOTS} bots, {N_SYMBOLS} symbols, {BARS_PER_S} bars/s per symbol, "
          f"{events / args.duration:,.0f} events/s stored over {args.duration:.0f} s")
    print(f"  CPU of the agent process      {cpu:6.1f} % of one core")
    lag.sort()
    print(f"  event-loop lag (1 ms sleep)   p50 {pct(lag, 50):.3f} ms  p99 {pct(lag, 99):.3f} ms")
    print(f"  event -> JetStream ack        p50 {pct(lat, 50):.3f} ms  p99 {pct(lat, 99):.3f} ms"
          f"  ({len(lat)} events; target p99 <= 2 ms)")
    q, w = clock.latencies_ms("appended", "sent"), clock.latencies_ms("sent", "acked")
    print(f"    of which append -> publish  p50 {pct(q, 50):.3f} ms  p99 {pct(q, 99):.3f} ms;"
          f"  publish -> ack p50 {pct(w, 50):.3f} ms  p99 {pct(w, 99):.3f} ms")
    print(f"  outbox drain after {args.outage:.0f} s outage {rate:10,.0f} events/s "
          f"({backlog} events; target >= 20,000)")
    print(f"  reference: bare JetStream publish+ack p50 {ref50:.3f} ms  p99 {ref99:.3f} ms; "
          f"publish_async {ref_rate:,.0f} msg/s")
    ok = pct(lat, 99) <= 2.0 and rate >= 20_000
    print("targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=20.0, help="seconds of steady trading")
    p.add_argument("--outage", type=float, default=10.0, help="NATS outage, seconds")
    p.add_argument("--trade-every", type=int, default=2, help="bars between a bot's orders")
    p.add_argument("--dir", help="working directory (default: a new temp dir)")
    p.add_argument("--js-sync", choices=["always", "default"], default="always",
                   help="JetStream fsync: qtd's 'always' or nats-server's default (2 min)")
    args = p.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
