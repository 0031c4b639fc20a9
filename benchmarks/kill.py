"""Kill switch latency: the leader's kill decision to the last agent's acknowledgement (HALTED).

N agent-protocol peers run as separate processes on loopback (default: 10, 25 and 50, so the
scaling with the process count on this machine's cores is visible). Each peer connects,
heartbeats on ``qtd.hb.<node>`` and answers every kill on ``qtd.ctl.kill`` with a
:class:`~qtd.events.KillAck` on ``qtd.ack.kill.<node>``:

* ``--peer light`` (default): HALTED in memory, ack at once — the transport floor;
* ``--peer durable``: what ``qtd agent`` writes before it acknowledges
  (:meth:`qtd.agent.control_verbs.Control.apply_kill`): the KillSwitch and
  TradingStateChanged events in
  one fsynced transaction (the router's flush), then the KillAck (a second fsync), each in
  the peer's own SQLite event store (:class:`~qtd.store.EventStore`, ``synchronous=FULL``).

The leader is the real one (:func:`qtd.leader.daemon.running_leader`); each kill goes through
``KillSwitchController.trigger_kill`` (core publish, KV put, audit), and its latency is from
the decision (``time.perf_counter()`` in ``trigger_kill``) to the arrival of the last
acknowledgement. Reference, same peers, same run: one bare nats-py core publish of a
KillCommand and a wait for every acknowledgement (no leader code). Prints p50/p99/max over
``--kills`` kills (default 100) per agent count, and the peers' CPU time per kill (from
``/proc``) over the bare run: divided by the cores, it is a floor no kill path can beat on
this machine. Target: p99 <= 10 ms with 50 agents.

    python benchmarks/kill.py [--agents 10,25,50] [--kills 100] [--peer light|durable]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from qtd.bus import BusConfig, EmbeddedNatsServer, connect
from qtd.events import Heartbeat, KillAck, KillSwitch, Scope, TradingState, TradingStateChanged
from qtd.leader.config import LeaderConfig
from qtd.leader.daemon import Leader, running_leader


async def peer(url: str, node: str, kind: str, data_dir: str) -> None:
    """One agent-protocol peer (runs in its own process)."""
    from qtd.control import decode_kill
    from qtd.store import EventStore

    nc = await connect(BusConfig(servers=(url,), name=f"peer-{node}"))
    store = await EventStore.open(Path(data_dir) / f"{node}.db", node=node) \
        if kind == "durable" else None

    async def on_kill(msg: object) -> None:
        kill = decode_kill(msg.data)  # type: ignore[attr-defined]
        now = time.time_ns()
        ack = KillAck(node=node, ts_event=now, ts_init=now, kill_id=kill.id, scope=kill.scope,
                      scope_key=kill.key, reason=kill.reason, state=TradingState.HALTED)
        if store is not None:
            await store.append_many([
                KillSwitch(node=node, ts_event=now, ts_init=now, scope=kill.scope,
                           scope_key=kill.key, active=True, reason=kill.reason),
                TradingStateChanged(node=node, ts_event=now, ts_init=now, scope=kill.scope,
                                    scope_key=kill.key, old=TradingState.ACTIVE,
                                    new=TradingState.HALTED, reason=kill.reason)])
            await store.append(ack)
        await nc.publish(f"qtd.ack.kill.{node}", msgspec.json.encode(ack))

    await nc.subscribe("qtd.ctl.kill", cb=on_kill)
    await nc.flush()
    print("ready", flush=True)
    while True:
        now = time.time_ns()
        hb = Heartbeat(node=node, ts_event=now, ts_init=now, role="agent")
        await nc.publish(f"qtd.hb.{node}", msgspec.json.encode(hb))
        await asyncio.sleep(0.5)


def _start_peers(url: str, n: int, kind: str, data_dir: str) -> list[subprocess.Popen[bytes]]:
    procs = [subprocess.Popen([sys.executable, __file__, "--run-peer", url, f"agent{i:03d}",
                               kind, data_dir], stdout=subprocess.PIPE) for i in range(n)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    return procs


def _cpu_s(procs: list[subprocess.Popen[bytes]]) -> float:
    """User + system CPU seconds the processes used so far (/proc/<pid>/stat, Linux)."""
    total = 0
    for p in procs:
        with open(f"/proc/{p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


def _pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def _line(name: str, n: int, xs: list[float]) -> str:
    ms = [x * 1000 for x in xs]
    return (f"{name:32s} {n:3d} agents: p50 {statistics.median(ms):6.2f} ms, p99 "
            f"{_pct(ms, 0.99):6.2f} ms, max {max(ms):6.2f} ms")


async def bench(counts: list[int], kills: int, kind: str) -> None:
    print(f"{os.cpu_count()} cores; peers: {kind}; {kills} kills per line")
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNatsServer(Path(tmp) / "nats")
        await server.start()
        try:
            for n in counts:
                data = Path(tmp) / f"peers{n}"
                data.mkdir()
                procs = _start_peers(server.url, n, kind, str(data))
                try:
                    cfg = msgspec.convert({"fleet_db": f"{tmp}/fleet{n}.db", "bus": {
                        "servers": [server.url], "name": "qtd-leader"},
                        "kill": {"ack_timeout_s": 5.0}}, LeaderConfig)
                    async with running_leader(cfg) as leader:
                        while len(leader.view.heartbeats) < n:
                            await asyncio.sleep(0.05)
                        lat = await _kills(leader, kills)
                    cpu0, t0 = _cpu_s(procs), time.perf_counter()
                    await asyncio.sleep(2.0)  # idle: heartbeats only
                    idle_rate = (_cpu_s(procs) - cpu0) / (time.perf_counter() - t0)
                    cpu0, t0 = _cpu_s(procs), time.perf_counter()
                    bare = await _bare(server.url, n, kills)
                    busy = _cpu_s(procs) - cpu0 - idle_rate * (time.perf_counter() - t0)
                    per_kill = max(0.0, busy) / (kills + 5)  # all peers, one kill
                finally:
                    for p in procs:
                        p.terminate()
                    for p in procs:
                        p.wait(10)
                print(_line("leader kill -> last ack", n, lat))
                print(_line("bare core publish -> last ack", n, bare))
                print(f"{'':32s} {n:3d} agents: peers' CPU per kill {per_kill * 1e3:.2f} ms "
                      f"({per_kill / n * 1e6:.0f} us each, idle heartbeats subtracted), i.e. >= "
                      f"{per_kill / (os.cpu_count() or 1) * 1e3:.2f} ms on {os.cpu_count()} "
                      "cores before the last ack can leave")
        finally:
            await server.stop()
    print("target p99 <= 10 ms (50 agents); the bare line is this machine's floor for the "
          "same peers (one nats-py publish, no leader)")


async def _bare(url: str, n: int, kills: int) -> list[float]:
    """Reference: one core publish of a KillCommand, wait for n acks; no leader code."""
    from qtd.control import KillCommand

    nc = await connect(BusConfig(servers=(url,), name="bare"))
    got: dict[str, float] = {}
    done = asyncio.Event()

    async def on_ack(m: object) -> None:
        got[m.subject] = time.perf_counter()  # type: ignore[attr-defined]
        if len(got) == n:
            done.set()

    await nc.subscribe("qtd.ack.kill.*", cb=on_ack)
    await nc.flush()
    out = []
    for i in range(kills + 5):
        got.clear()
        done.clear()
        t0 = time.perf_counter()
        await nc.publish("qtd.ctl.kill", msgspec.json.encode(KillCommand(id=f"b{i}",
                                                                         reason="bare")))
        await asyncio.wait_for(done.wait(), 5.0)
        if i >= 5:  # warm-up, as for the leader
            out.append(max(got.values()) - t0)
        await asyncio.sleep(0.02)
    await nc.close()
    return out


async def _kills(leader: Leader, kills: int) -> list[float]:
    out = []
    for i in range(kills + 5):
        rnd = await leader.kill.trigger_kill(Scope.GLOBAL, "", f"bench {i}", "bench")
        await asyncio.wait_for(rnd.all_acked.wait(), 5.0)
        if i >= 5:  # warm-up
            out.append(max(rnd.latency_s.values()))
        await asyncio.sleep(0.02)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", default="10,25,50",
                    help="agent process counts, comma-separated (default 10,25,50)")
    ap.add_argument("--kills", type=int, default=100, help="kills per agent count")
    ap.add_argument("--peer", choices=["light", "durable"], default="light",
                    help="light: ack at once; durable: two fsynced store writes first, as "
                    "qtd agent does")
    ap.add_argument("--run-peer", nargs=4, metavar=("URL", "NODE", "KIND", "DIR"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_peer:
        asyncio.run(peer(*args.run_peer))
    else:
        logging.getLogger("qtd").setLevel(logging.ERROR)
        counts = [int(x) for x in args.agents.split(",") if x.strip()]
        asyncio.run(bench(counts, args.kills, args.peer))


if __name__ == "__main__":
    main()
