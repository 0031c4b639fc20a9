"""Kill switch latency: the leader's kill decision to the last agent's acknowledgements.

An agent acknowledges a kill twice (:meth:`qtd.agent.control_verbs.Control.apply_kill`):
*in force* the moment the scope is HALTED in its memory (no order passes its risk engine from
then on), then *durable* once the KillSwitch, TradingStateChanged and KillAck events are
fsynced. The leader is the real one (:func:`qtd.leader.daemon.running_leader`, in this
process); each kill goes through ``KillSwitchController.trigger_kill`` (core publish, KV
put, audit), and its latencies are from the decision (``time.perf_counter()`` in
``trigger_kill``) to the arrival of the last in-force ack and of the last durable ack.
Reference, same agents, same run: one bare nats-py core publish of a KillCommand and a wait
for every acknowledgement (no leader code): the floor of the transport and the agents on this
machine. p50/p99/max over ``--kills`` kills (default 100, after 5 warm-up kills). After each
kill every agent is resumed (the leader's ``resume`` releasing that kill; for the bare line a
``resume`` request to each agent), so each kill moves the agents from ACTIVE to HALTED and the
kill set holds one kill, as in operation; the next kill follows ``--gap-ms`` later (default
20 ms with peers, 250 ms with real agents, whose kill and resume take several ms of CPU each:
a kill then finds the fleet at rest, not still storing the previous round).

Two modes (``--mode``, default both):

* ``real``: ``--real`` (default 10) real ``qtd agent`` processes (``python -m qtd.cli agent``;
  each has one resting paper bot, whose order the first kill cancels, in its own strategy
  worker process, and its own SQLite event store), with the default ``kill_store_delay_s``
  (5 ms between a kill's cancels and storing it, so the agents sharing these cores all ack
  in force first). Target: leader decision -> last in-force ack **p99 <= 10 ms**; the
  durable acks' p99 is printed beside it.
* ``peers``: agent-protocol peers, one process each (``--agents``, default 10,25,50, so the
  scaling with the process count on this machine's cores is visible). Each heartbeats on
  ``qtd.hb.<node>`` and answers every kill on ``qtd.ctl.kill`` on ``qtd.ack.kill.<node>``:
  ``--peer light`` (default) one ack at once, in memory (an ack without ``stage``, read as
  in force and durable: the transport floor); ``--peer durable`` as ``qtd agent``: the
  in-force ack at once, then the KillSwitch and TradingStateChanged events in one fsynced
  transaction and the KillAck in a second (its own SQLite store, ``synchronous=FULL``), then
  the durable ack. Target: leader p99 <= 1.25x the bare publish p99 with 50 peers (this
  2-core machine cannot host 50 agents under 10 ms: the bare floor alone is above it). Also
  prints the peers' CPU time per kill (from ``/proc``) over the bare run: divided by the
  cores, a floor (with the resume's share) no kill path can beat on this machine.

    python benchmarks/kill.py [--mode all|real|peers] [--real 10] [--agent-tree DIR]
                              [--agents 10,25,50] [--kills 100] [--gap-ms MS]
                              [--peer light|durable]
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
from qtd.control import NodeReply, NodeRequest
from qtd.events import (
    AckStage,
    Heartbeat,
    KillAck,
    KillSwitch,
    Scope,
    TradingState,
    TradingStateChanged,
)
from qtd.leader.config import LeaderConfig
from qtd.leader.daemon import Leader, running_leader
from qtd.leader.killround import KillRound

ROOT = Path(__file__).resolve().parent.parent
Lat = tuple[list[float], list[float]]  # seconds to the last in-force ack, to the last durable


async def peer(url: str, node: str, kind: str, data_dir: str) -> None:
    """One agent-protocol peer (runs in its own process)."""
    from qtd.control import decode_kill
    from qtd.store import EventStore

    nc = await connect(BusConfig(servers=(url,), name=f"peer-{node}"))
    store = await EventStore.open(Path(data_dir) / f"{node}.db", node=node) \
        if kind == "durable" else None
    subject = f"qtd.ack.kill.{node}"

    async def on_kill(msg: object) -> None:
        kill = decode_kill(msg.data)  # type: ignore[attr-defined]
        now = time.time_ns()
        ack = KillAck(node=node, ts_event=now, ts_init=now, kill_id=kill.id, scope=kill.scope,
                      scope_key=kill.key, reason=kill.reason, state=TradingState.HALTED)
        if store is not None:
            in_force = msgspec.structs.replace(ack, stage=AckStage.IN_FORCE)
            await nc.publish(subject, msgspec.json.encode(in_force))
            await store.append_many([
                KillSwitch(node=node, ts_event=now, ts_init=now, scope=kill.scope,
                           scope_key=kill.key, active=True, reason=kill.reason),
                TradingStateChanged(node=node, ts_event=now, ts_init=now, scope=kill.scope,
                                    scope_key=kill.key, old=TradingState.ACTIVE,
                                    new=TradingState.HALTED, reason=kill.reason)])
            await store.append(ack)
        await nc.publish(subject, msgspec.json.encode(ack))

    async def on_resume(msg: object) -> None:
        reply = NodeReply(ok=True, node=node, verb="resume", message="ACTIVE")
        await msg.respond(msgspec.json.encode(reply))  # type: ignore[attr-defined]

    await nc.subscribe("qtd.ctl.kill", cb=on_kill)
    await nc.subscribe(f"qtd.ctl.{node}.resume", cb=on_resume)
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


def _line(name: str, n: int, xs: list[float], ref: str = "") -> str:
    ms = [x * 1000 for x in xs]
    return (f"{name:40s} {n:3d} agents: p50 {statistics.median(ms):6.2f} ms, p99 "
            f"{_pct(ms, 0.99):6.2f} ms, max {max(ms):6.2f} ms{ref}")


def _leader_cfg(tmp: str, n: int, url: str) -> LeaderConfig:
    return msgspec.convert({"fleet_db": f"{tmp}/fleet{n}.db", "bus": {
        "servers": [url], "name": "qtd-leader"},
        "kill": {"ack_timeout_s": 5.0, "durable_timeout_s": 5.0}}, LeaderConfig)


async def bench_peers(counts: list[int], kills: int, kind: str, gap_s: float) -> None:
    print(f"== protocol peers ({kind}); {os.cpu_count()} cores; {kills} kills per line, "
          f"{gap_s * 1e3:g} ms apart")
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNatsServer(Path(tmp) / "nats")
        await server.start()
        try:
            for n in counts:
                data = Path(tmp) / f"peers{n}"
                data.mkdir()
                procs = _start_peers(server.url, n, kind, str(data))
                try:
                    async with running_leader(_leader_cfg(tmp, n, server.url)) as leader:
                        while len(leader.view.heartbeats) < n:
                            await asyncio.sleep(0.05)
                        lat = await _kills(leader, kills, gap_s)
                    cpu0, t0 = _cpu_s(procs), time.perf_counter()
                    await asyncio.sleep(2.0)  # idle: heartbeats only
                    idle_rate = (_cpu_s(procs) - cpu0) / (time.perf_counter() - t0)
                    cpu0, t0 = _cpu_s(procs), time.perf_counter()
                    bare = await _bare(server.url, n, kills, gap_s)
                    busy = _cpu_s(procs) - cpu0 - idle_rate * (time.perf_counter() - t0)
                    per_kill = max(0.0, busy) / (kills + 5)  # all peers, one kill
                finally:
                    _stop(procs)
                _print_pair(n, lat, bare, target_ms=None)
                print(f"{'':40s} {n:3d} agents: peers' CPU per kill and resume "
                      f"{per_kill * 1e3:.2f} ms ({per_kill / n * 1e6:.0f} us each, idle "
                      f"heartbeats subtracted), i.e. >= "
                      f"{per_kill / (os.cpu_count() or 1) * 1e3:.2f} ms on {os.cpu_count()} "
                      "cores per round")
        finally:
            await server.stop()


def _print_pair(n: int, lat: Lat, bare: Lat, target_ms: float | None) -> None:
    """The leader's figures beside the bare floor (and the target) of the same run."""
    ratio = _pct(lat[0], 0.99) / _pct(bare[0], 0.99)
    target = (f"  [target p99 <= {target_ms:g} ms]" if target_ms is not None
              else "  [target p99 <= 1.25x bare, with 50 agents]")
    print(_line("leader kill -> last in-force ack", n, lat[0], target))
    print(_line("bare core publish -> last in-force ack", n, bare[0],
                f"  [leader/bare p99 {ratio:.2f}x]"))
    print(_line("leader kill -> last durable ack", n, lat[1]))
    print(_line("bare core publish -> last durable ack", n, bare[1]))


async def bench_real(n: int, kills: int, gap_s: float, tree: str = "") -> None:
    """``n`` real ``qtd agent`` processes (module docstring), run from ``tree`` (a qtd
    checkout; "" this one)."""
    sys.path.insert(0, str(ROOT))
    from tests.agent_rig import write_fleet

    print(f"== real qtd agent processes{f' from {tree}' if tree else ''}; "
          f"{os.cpu_count()} cores; {kills} kills, {gap_s * 1e3:g} ms apart")
    env = {**os.environ, "PYTHONPATH": tree} if tree else None
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNatsServer(Path(tmp) / "nats")
        await server.start()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            async with running_leader(_leader_cfg(tmp, n, server.url)) as leader:
                logs = []
                for i in range(n):
                    node = f"agent{i:03d}"
                    cfg = write_fleet(Path(tmp) / node, {"rest": {"_strategy": "rester"}},
                                      node=node, bus_url=server.url,
                                      market="speed = 86400.0")
                    logs.append((node, Path(tmp) / f"{node}.log"))
                    with logs[-1][1].open("ab") as out:
                        procs.append(subprocess.Popen(
                            [sys.executable, "-m", "qtd.cli", "agent", "--config", str(cfg)],
                            stdout=out, stderr=subprocess.STDOUT, cwd=tree or ROOT, env=env))
                for node, log in logs:
                    await _ready(log, f"agent {node} ready".encode())
                while len(leader.view.heartbeats) < n:
                    await asyncio.sleep(0.05)
                lat = await _kills(leader, kills, gap_s)
            cpu0, t0 = _cpu_s(procs), time.perf_counter()
            await asyncio.sleep(2.0)  # idle: heartbeats, market data
            idle_rate = (_cpu_s(procs) - cpu0) / (time.perf_counter() - t0)
            cpu0, t0 = _cpu_s(procs), time.perf_counter()
            bare = await _bare(server.url, n, kills, gap_s)
            busy = _cpu_s(procs) - cpu0 - idle_rate * (time.perf_counter() - t0)
        finally:
            _stop(procs)
            await server.stop()
    _print_pair(n, lat, bare, target_ms=10.0)
    per_kill = max(0.0, busy) / (kills + 5)
    print(f"{'':40s} {n:3d} agents: agents' CPU per kill and resume {per_kill * 1e3:.2f} ms "
          f"({per_kill / n * 1e6:.0f} us each, idle subtracted; strategy workers not "
          f"counted), i.e. >= {per_kill / (os.cpu_count() or 1) * 1e3:.2f} ms on "
          f"{os.cpu_count()} cores per round")


async def _ready(log: Path, text: bytes, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not (log.exists() and text in log.read_bytes()):
        if time.monotonic() > deadline:
            raise SystemExit(f"{log}: no {text!r} after {timeout_s:g} s:\n"
                             + log.read_bytes()[-2000:].decode(errors="replace"))
        await asyncio.sleep(0.1)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(30)


async def _bare(url: str, n: int, kills: int, gap_s: float) -> Lat:
    """Reference: one core publish of a KillCommand, wait for n in-force and n durable acks
    (an ack without ``stage`` is both); no leader code."""
    from qtd.control import KillCommand

    nc = await connect(BusConfig(servers=(url,), name="bare"))
    first: dict[str, float] = {}
    durable: dict[str, float] = {}
    done = asyncio.Event()

    async def on_ack(m: object) -> None:
        t, subject = time.perf_counter(), m.subject  # type: ignore[attr-defined]
        first.setdefault(subject, t)
        if b'"stage":"in_force"' not in m.data:  # type: ignore[attr-defined]
            durable.setdefault(subject, t)
            if len(durable) == n:
                done.set()

    await nc.subscribe("qtd.ack.kill.*", cb=on_ack)
    await nc.flush()
    in_force, out = [], []
    for i in range(kills + 5):
        first.clear()
        durable.clear()
        done.clear()
        t0 = time.perf_counter()
        await nc.publish("qtd.ctl.kill", msgspec.json.encode(KillCommand(id=f"b{i}",
                                                                         reason="bare")))
        await asyncio.wait_for(done.wait(), 10.0)
        if i >= 5:  # warm-up, as for the leader
            in_force.append(max(first.values()) - t0)
            out.append(max(durable.values()) - t0)
        nodes = [subject.rsplit(".", 1)[-1] for subject in first]
        await asyncio.gather(*(nc.request(f"qtd.ctl.{node}.resume", _RESUME, timeout=10.0)
                               for node in nodes))
        await asyncio.sleep(gap_s)
    await nc.close()
    return in_force, out


_RESUME = msgspec.json.encode(NodeRequest(operator="bench", reason="next kill"))


async def _all_durable(rnd: KillRound) -> None:
    while not rnd.expected <= set(rnd.durable):
        rnd.durable_seen.clear()
        await rnd.durable_seen.wait()


async def _kills(leader: Leader, kills: int, gap_s: float) -> Lat:
    in_force, durable = [], []
    for i in range(kills + 5):
        rnd = await leader.kill.trigger_kill(Scope.GLOBAL, "", f"bench {i}", "bench")
        await asyncio.wait_for(rnd.all_acked.wait(), 10.0)
        await asyncio.wait_for(_all_durable(rnd), 10.0)
        if i >= 5:  # warm-up
            in_force.append(max(rnd.latency_s.values()))
            durable.append(max(rnd.durable_s.values()))
        result = await leader.kill.resume("bench", "next kill", timeout_s=10.0,
                                          kill_ids=[rnd.kill_id])
        bad = {n: r for n, r in result.agents.items() if not r.startswith("ok")}
        if bad:
            raise SystemExit(f"resume after kill {i} refused: {bad}")
        await asyncio.sleep(gap_s)
    return in_force, durable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["all", "real", "peers"], default="all")
    ap.add_argument("--real", type=int, default=10, help="real qtd agent processes (10)")
    ap.add_argument("--agent-tree", default="", metavar="DIR",
                    help="run the real agents from another qtd checkout (e.g. one whose "
                    "agents ack once, after the fsyncs: its single ack reads as both)")
    ap.add_argument("--agents", default="10,25,50",
                    help="peer process counts, comma-separated (default 10,25,50)")
    ap.add_argument("--kills", type=int, default=100, help="kills per line")
    ap.add_argument("--gap-ms", type=float, default=None,
                    help="ms from a kill's resume to the next kill (default 250 with real "
                    "agents, 20 with peers)")
    ap.add_argument("--peer", choices=["light", "durable"], default="light",
                    help="light: ack at once; durable: in-force ack, two fsynced store "
                    "writes, durable ack, as qtd agent does")
    ap.add_argument("--run-peer", nargs=4, metavar=("URL", "NODE", "KIND", "DIR"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_peer:
        asyncio.run(peer(*args.run_peer))
        return
    logging.getLogger("qtd").setLevel(logging.ERROR)
    if args.mode in ("all", "real"):
        gap = 0.25 if args.gap_ms is None else args.gap_ms / 1e3
        asyncio.run(bench_real(args.real, args.kills, gap, args.agent_tree))
    if args.mode in ("all", "peers"):
        counts = [int(x) for x in args.agents.split(",") if x.strip()]
        gap = 0.02 if args.gap_ms is None else args.gap_ms / 1e3
        asyncio.run(bench_peers(counts, args.kills, args.peer, gap))


if __name__ == "__main__":
    main()
