"""Kill switch latency: the leader's kill decision to the last agent's acknowledgement.

N agent-protocol peers run as separate processes on loopback (default 50). Each is a
lightweight peer, not the full ``qtd agent``: it connects, heartbeats on ``qtd.hb.<node>``,
and answers every kill on ``qtd.ctl.kill`` with a :class:`~qtd.events.KillAck` on
``qtd.ack.kill.<node>`` at once (the real agent also cancels orders and fsyncs its KillAck
before answering; that cost is the agent's and is measured by its own benchmark).

The leader is the real :class:`~qtd.leader.Leader`; each kill goes through
``KillSwitchController.trigger_kill`` (core publish, KV put, audit) and the latency of a kill
is the time from the decision (``time.perf_counter()`` in ``trigger_kill``) to the arrival
of the last acknowledgement. Prints p50/p99/max over ``--kills`` kills (default 100).

    python benchmarks/kill.py [--agents 50] [--kills 100]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from qtd.bus import BusConfig, EmbeddedNatsServer, connect
from qtd.events import Heartbeat, KillAck, Scope, TradingState
from qtd.leader import Leader
from qtd.leader.config import LeaderConfig


async def peer(url: str, node: str) -> None:
    """One agent-protocol peer (runs in its own process)."""
    from qtd.agent.control import decode_kill

    nc = await connect(BusConfig(servers=(url,), name=f"peer-{node}"))

    async def on_kill(msg: object) -> None:
        kill = decode_kill(msg.data)  # type: ignore[attr-defined]
        now = time.time_ns()
        ack = KillAck(node=node, ts_event=now, ts_init=now, kill_id=kill.id, scope=kill.scope,
                      scope_key=kill.key, reason=kill.reason, state=TradingState.HALTED)
        await nc.publish(f"qtd.ack.kill.{node}", msgspec.json.encode(ack))

    await nc.subscribe("qtd.ctl.kill", cb=on_kill)
    await nc.flush()
    print("ready", flush=True)
    while True:
        now = time.time_ns()
        hb = Heartbeat(node=node, ts_event=now, ts_init=now, role="agent")
        await nc.publish(f"qtd.hb.{node}", msgspec.json.encode(hb))
        await asyncio.sleep(0.5)


def _start_peers(url: str, n: int) -> list[subprocess.Popen[bytes]]:
    procs = [subprocess.Popen([sys.executable, __file__, "--peer", url, f"agent{i:03d}"],
                              stdout=subprocess.PIPE) for i in range(n)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    return procs


def _pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, round(q * (len(xs) - 1)))]


async def bench(n_agents: int, kills: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNatsServer(Path(tmp) / "nats")
        await server.start()
        procs = _start_peers(server.url, n_agents)
        try:
            cfg = msgspec.convert({"fleet_db": f"{tmp}/fleet.db", "bus": {
                "servers": [server.url], "name": "qtd-leader"},
                "kill": {"ack_timeout_s": 5.0}}, LeaderConfig)
            async with Leader(cfg) as leader:
                while len(leader.view.heartbeats) < n_agents:
                    await asyncio.sleep(0.05)
                lat = await _kills(leader, kills)
            bare = await _bare(server.url, n_agents, kills)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(10)
            await server.stop()
    for name, xs in (("leader kill -> last ack", lat), ("bare core publish -> last ack", bare)):
        ms = [x * 1000 for x in xs]
        print(f"{name}: {n_agents} agent processes on loopback, {kills} kills: "
              f"p50 {statistics.median(ms):.2f} ms, p99 {_pct(ms, 0.99):.2f} ms, "
              f"max {max(ms):.2f} ms")
    print("target p99 <= 10 ms; the bare line is the floor of this machine (same peers, "
          "one nats-py publish, no leader)")


async def _bare(url: str, n: int, kills: int) -> list[float]:
    """Reference: one core publish of a KillMessage, wait for n acks; no leader code."""
    from qtd.agent.control import KillMessage

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
    for i in range(kills):
        got.clear()
        done.clear()
        t0 = time.perf_counter()
        await nc.publish("qtd.ctl.kill", msgspec.json.encode(KillMessage(id=f"b{i}",
                                                                         reason="bare")))
        await asyncio.wait_for(done.wait(), 5.0)
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
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--peer", nargs=2, metavar=("URL", "NODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peer:
        asyncio.run(peer(*args.peer))
    else:
        logging.getLogger("qtd").setLevel(logging.ERROR)
        asyncio.run(bench(args.agents, args.kills))


if __name__ == "__main__":
    main()
