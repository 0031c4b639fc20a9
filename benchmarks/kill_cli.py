"""The kill command's own timing on ``qtd up``: p50/p99 over N kills, command start →
summary printed.

Starts ``qtd up`` (2 agents, a leader, a private nats-server) on a temporary state
directory, waits until the leader sees both agents alive, then runs ``qtd kill`` N times as
a subprocess against it (what an operator types), releasing every kill and resuming the
fleet between kills (not timed), so each kill meets an ACTIVE fleet. For each kill: command
start → its summary on stdout (read from the pipe), command start → exit, and the command's
own "acknowledged in X ms". References measured in the same run, interleaved with the
kills (the machine's load changes by the minute): the interpreter start
with ``import qtd.cli``, ``qtd --version`` (interpreter start plus building the parser,
which imports every subcommand's module: the floor of any ``qtd`` command) and a bare NATS
request/reply round trip on the same server.

    python benchmarks/kill_cli.py [--kills 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import msgspec
import nats
from nats.aio.msg import Msg

from qtd.agent.killround import leader_roster
from qtd.bus import Subjects
from qtd.up.procs import stop_leftovers

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
ACKED = re.compile(rb"(\d+) of (\d+) agents acknowledged in (\d+) ms")


def _pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def _line(name: str, xs: list[float]) -> str:
    return (f"{name:48s} p50 {statistics.median(xs):7.1f} ms   p99 {_pct(xs, 0.99):7.1f} ms"
            f"   max {max(xs):7.1f} ms   (n={len(xs)})")


def _one_kill(url: str, i: int) -> tuple[float, float, float, int, bytes]:
    """(start → summary, start → exit, the command's own ack ms, exit status, output)."""
    argv = [sys.executable, "-m", "qtd.cli", "kill", "--server", url, "--reason",
            f"bench {i}", "--operator", "bench"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            cwd=ROOT, env=ENV)
    assert proc.stdout is not None
    out = os.read(proc.stdout.fileno(), 65536)  # the summary: one flushed write
    t_summary = time.perf_counter()
    out += proc.stdout.read()
    rc = proc.wait()
    t_exit = time.perf_counter()
    m = ACKED.search(out)
    own = float(m.group(3)) if m else float("nan")
    return (t_summary - t0) * 1000, (t_exit - t0) * 1000, own, rc, out


def _run_ms(argv: list[str], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, *argv], check=True, cwd=ROOT, env=ENV,
                       stdout=subprocess.DEVNULL)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def _rtt_ms(url: str, n: int) -> list[float]:
    nc = await nats.connect(url)
    try:
        async def echo(msg: Msg) -> None:
            await msg.respond(msg.data)
        await nc.subscribe("bench.echo", cb=echo)
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await nc.request("bench.echo", b"x", timeout=5)
            out.append((time.perf_counter() - t0) * 1000)
        return out
    finally:
        await nc.close()


async def _wait_fleet(state: Path, up: subprocess.Popen[bytes], agents: int) -> str:
    """The NATS URL of the fleet once the leader reports ``agents`` agents alive."""
    leader_toml = state / "etc" / "leader.toml"
    for _ in range(1200):
        assert up.poll() is None, f"qtd up exited: see {state.parent / 'up.out'}"
        if leader_toml.exists():
            url = str(tomllib.loads(leader_toml.read_text())["bus"]["servers"][0])
            nc = await nats.connect(url)
            try:
                roster = await leader_roster(nc, Subjects("qtd"))
            finally:
                await nc.close()
            if roster and sum(a.alive for a in roster) >= agents:
                return url
        await asyncio.sleep(0.25)
    raise TimeoutError("the fleet did not come up within 5 minutes")


async def _resume(url: str) -> None:
    """Release every kill and resume the fleet through the leader (not timed)."""
    nc = await nats.connect(url)
    try:
        body = msgspec.json.encode({"operator": "bench", "reason": "next kill",
                                    "everything": True})
        await nc.request("qtd.ctl.leader.resume", body, timeout=10)
    finally:
        await nc.close()


async def bench(kills: int, agents: int) -> None:
    print(f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at start; qtd up with "
          f"{agents} agents; {kills} kills")
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        with (Path(tmp) / "up.out").open("wb") as log:
            up = subprocess.Popen([sys.executable, "-m", "qtd.cli", "up", "--state-dir",
                                   str(state), "--agents", str(agents), "--duration", "900"],
                                  stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=ENV)
        try:
            url = await _wait_fleet(state, up, agents)
            summary, exit_, own, startup, parser, bad = [], [], [], [], [], []
            for i in range(kills):  # references interleaved: the same load as each kill
                await _resume(url)
                startup += await asyncio.to_thread(_run_ms, ["-c", "import qtd.cli"], 1)
                parser += await asyncio.to_thread(_run_ms, ["-m", "qtd.cli", "--version"], 1)
                s, e, o, rc, out = await asyncio.to_thread(_one_kill, url, i)
                summary.append(s)
                exit_.append(e)
                own.append(o)
                if rc != 0:
                    bad.append(out.decode(errors="replace"))
            rtt = await _rtt_ms(url, 200)
        finally:
            up.send_signal(signal.SIGINT)
            try:
                await asyncio.to_thread(up.wait, 60)
            except subprocess.TimeoutExpired:
                up.kill()
            await stop_leftovers(state / "pids.json", str(state), timeout_s=10)
    print(_line("qtd kill: command start -> summary printed", summary))
    print(_line("qtd kill: command start -> exit", exit_))
    print(_line("qtd kill: its own 'acknowledged in X ms'", own))
    print(_line("reference: python -c 'import qtd.cli'", startup))
    print(_line("reference: qtd --version (builds every parser)", parser))
    print(_line("reference: bare NATS request/reply", rtt))
    print(f"load {os.getloadavg()[0]:.2f} at end")
    print(f"kills not acknowledged by every agent (exit != 0): {len(bad)}")
    for text in bad[:3]:
        print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=50)
    p.add_argument("--agents", type=int, default=2)
    a = p.parse_args()
    asyncio.run(bench(a.kills, a.agents))


if __name__ == "__main__":
    main()
