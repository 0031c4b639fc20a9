"""Memory soak: one agent process through 200,000 orders, its RSS sampled (issue 21, #11).

One real agent process (``python -m qtd.cli agent``: paper broker, real SQLite event store,
events published to JetStream on an embedded nats-server) runs one bot that orders on every
bar (it flips between 1 share and flat: four events per order — intent, submitted, accepted,
fill) on the bundled ``goog_1d`` bars replayed in a loop as fast as the bot takes them.

Every ``--sample`` orders the benchmark reads the agent's resident set size from
``/proc/<pid>/status`` (``VmRSS``) and the order counts from the agent's ``status`` command
reply (``orders``: held in memory, terminal held, retired). Orders sent = held + retired.

It prints the RSS curve and, after the warm-up (``--warmup`` orders), the first, last and
largest RSS and the least-squares slope in KB per 10,000 orders, beside the warm-up value.
With ``--old N`` it first runs the same agent for N orders with ``terminal_orders_kept`` set
to 10,000,000 (nothing retired within the run: the behaviour before done orders were
retired) and prints its slope as the reference measured in the same run.

Target: after the warm-up, slope <= 500 KB per 10k orders (before: ~40 MB per 10k orders in
the issue's measurement). Exits 1 if missed.

The store's fsync per order dominates the run time on a disk; ``--dir /dev/shm/...`` keeps
real SQLite and JetStream files but on tmpfs (about 1 GB for 200,000 orders).

Usage: python benchmarks/soak.py [--orders N] [--warmup N] [--sample N] [--kept N]
                                 [--old N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nats.aio.client import Client

from qtd.bus import EmbeddedNatsServer, connect
from qtd.bus.config import BusConfig
from qtd.control import NodeRequest
from qtd.control.transport import request

ROOT = Path(__file__).resolve().parents[1]
OLD_KEPT = 10_000_000
TARGET_KB_PER_10K = 500.0

STRATEGY = '''
from qtd.strategy import Strategy

class Flip(Strategy):
    class Params(Strategy.Params):
        qty: float = 1.0

    def on_start(self):
        self.n = 0

    def on_bar(self, bar):
        self.n += 1
        self.target_position(self.params.qty if self.n % 2 else 0)
'''

RISK = """[global]
duplicate_window_s = 0.0
order_spike_factor = 0.0
max_data_age_s = 3600.0

[accounts.paper-main]
equity = 1e9

[strategy_defaults]

[symbols.GOOG]
"""


def write_fleet(root: Path, url: str, kept: int) -> Path:
    """Strategy, bot, risk and agent config under ``root``; returns the agent config."""
    (root / "bots").mkdir(parents=True, exist_ok=True)
    (root / "flip.py").write_text(STRATEGY)
    (root / "risk.toml").write_text(RISK)
    (root / "bots" / "soak.toml").write_text(
        'name = "soak"\nstrategy = "../flip.py"\nvenue = "paper"\naccount = "paper-main"\n'
        'symbols = ["GOOG"]\n\n[smoke]\ndataset = "goog_1d"\n')
    cfg = root / "agent.toml"
    cfg.write_text(
        'node = "soak"\nstate_dir = "state"\nbots = ["bots"]\nrisk = "risk.toml"\n'
        'kill_file = "kill"\nadmit_smoke = false\nfailsafe = "NONE"\nhook_budget_s = 5.0\n'
        f"terminal_orders_kept = {kept}\n"
        f'[bus]\nservers = ["{url}"]\n'
        "[accounts.paper-main]\ncash = 1e9\n[market]\nspeed = 1e9\nloop = true\n")
    return cfg


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid``, KB (``VmRSS`` of ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def order_counts(nc: Client) -> dict[str, int]:
    """The agent's ``status`` reply figures for orders (``sent`` = held + retired)."""
    reply = await request(nc, "soak", "status", NodeRequest(operator="soak"), timeout_s=30)
    o = reply.data["orders"]
    return {**o, "sent": o["held"] + o["retired"]}


async def soak(root: Path, server: EmbeddedNatsServer, orders: int, sample: int,
               kept: int) -> list[tuple[int, int, dict[str, int]]]:
    """Run one agent process to ``orders`` orders; return (orders, RSS KB, counts) samples."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = write_fleet(root, server.url, kept)
    log = (root / "agent.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "qtd.cli", "agent", "--config", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    samples: list[tuple[int, int, dict[str, int]]] = []
    nc = await connect(BusConfig(servers=(server.url,)))
    try:
        nxt, t0 = 0, time.monotonic()
        while nxt <= orders:
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited ({proc.returncode}); see {log.name}")
            try:
                counts = await order_counts(nc)
            except Exception:  # not up yet, or busy: ask again
                await asyncio.sleep(0.5)
                continue
            if counts["sent"] >= nxt:
                samples.append((counts["sent"], rss_kb(proc.pid), counts))
                print(f"  {counts['sent']:>8,} orders  RSS {samples[-1][1] / 1024:7.1f} MB  "
                      f"held {counts['held']:>7,} (terminal {counts['terminal_held']:>7,})  "
                      f"retired {counts['retired']:>8,}  {time.monotonic() - t0:6.0f} s",
                      flush=True)
                nxt = (counts["sent"] // sample + 1) * sample
            await asyncio.sleep(0.05)
    finally:
        await nc.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return samples


def slope_kb_per_10k(points: list[tuple[int, int]]) -> float:
    """Least-squares slope of RSS (KB) over orders, in KB per 10,000 orders."""
    n = len(points)
    if n < 2:
        return float("nan")
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return sxy / sxx * 10_000 if sxx else float("nan")


def summary(name: str, samples: list[tuple[int, int, dict[str, int]]], warmup: int) -> float:
    """Print the curve summary after the warm-up; return the slope (KB per 10k orders)."""
    warm = [(o, r) for o, r, _ in samples if o < warmup]
    after = [(o, r) for o, r, _ in samples if o >= warmup]
    if not after:
        print(f"{name}: no samples after the warm-up ({warmup:,} orders)")
        return float("nan")
    slope = slope_kb_per_10k(after)
    rss = [r for _, r in after]
    last = samples[-1][2]
    print(f"{name}: {after[-1][0]:,} orders; RSS at warm-up end ({after[0][0]:,} orders) "
          f"{after[0][1] / 1024:.1f} MB, last {after[-1][1] / 1024:.1f} MB, "
          f"max {max(rss) / 1024:.1f} MB; slope after warm-up {slope:,.0f} KB per 10k orders")
    if warm:
        print(f"  warm-up: {warm[0][1] / 1024:.1f} MB at {warm[0][0]:,} orders -> "
              f"{after[0][1] / 1024:.1f} MB (slope {slope_kb_per_10k(warm + after[:1]):,.0f} "
              "KB per 10k orders)")
    print(f"  orders in memory at the end: held {last['held']:,}, terminal "
          f"{last['terminal_held']:,} (bound {last['terminal_kept']:,}), retired "
          f"{last['retired']:,}, recalled {last['recalled']:,}")
    return slope


async def run(args: argparse.Namespace) -> int:
    root = Path(args.dir or tempfile.mkdtemp(prefix="qtd-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    server = EmbeddedNatsServer(root / "nats", js_max_storage=16 << 30)
    async with server:
        ref = float("nan")
        if args.old:
            print(f"reference: terminal_orders_kept = {OLD_KEPT:,} (nothing retired), "
                  f"{args.old:,} orders")
            old = await soak(root / "old", server, args.old, args.sample, OLD_KEPT)
            ref = summary("reference (every order kept)", old, min(args.warmup, args.old // 2))
        print(f"soak: terminal_orders_kept = {args.kept:,}, {args.orders:,} orders")
        new = await soak(root / "new", server, args.orders, args.sample, args.kept)
    slope = summary("bounded", new, args.warmup)
    if args.old:
        print(f"slope: bounded {slope:,.0f} vs every order kept {ref:,.0f} KB per 10k orders")
    ok = slope <= TARGET_KB_PER_10K
    print(f"target slope <= {TARGET_KB_PER_10K:,.0f} KB per 10k orders after warm-up: "
          + ("met" if ok else "MISSED"))
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--orders", type=int, default=200_000, help="orders of the soak")
    p.add_argument("--warmup", type=int, default=20_000, help="orders before the slope")
    p.add_argument("--sample", type=int, default=5_000, help="orders between RSS samples")
    p.add_argument("--kept", type=int, default=1_000, help="terminal_orders_kept")
    p.add_argument("--old", type=int, default=0,
                   help="first run this many orders with every order kept (reference)")
    p.add_argument("--dir", help="working directory (default: a new temp dir)")
    args = p.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
