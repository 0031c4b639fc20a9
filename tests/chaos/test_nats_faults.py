"""Chaos: NATS faults beyond a clean stop/start (that one is in test_agent_chaos.py).

- **Pause**: nats-server SIGSTOPped mid-stream (the TCP connection stays up but nothing
  answers: publishes and acks hang, unlike a clean stop), then SIGCONTed.
- **Cluster**: a 3-node JetStream cluster on loopback (stream and KV at 3 replicas); the node
  the agent is connected to is SIGKILLed mid-stream.

In both, a real agent trades two paper bots and a third bot whose orders break its local
cap after its first five of the day (max_trades_per_day): the stream the leader consumes
must hold every stored event exactly once and in seq order, and the agent's risk engine must
keep denying that bot's orders while NATS is unavailable (local caps never depend on the
bus).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from qtd.bus import BusConfig, EmbeddedNatsServer, connect, find_nats_server
from qtd.events import AnyEvent, Fill, OrderDenied
from qtd.store import EventStore
from tests.agent_rig import (
    running_agent,
    store_events,
    stream_events,
    synthetic_bars,
    wait_for,
    write_fleet,
)

FAULT_S = float(os.environ.get("QTD_CHAOS_OUTAGE_S", "3"))
BOTS = {"b1": {}, "b2": {}, "greedy": {}}


def _fleet(root: Path, servers: list[str], *, replicas: int = 1) -> Path:
    cfg = write_fleet(root, BOTS, bus_url=servers[0], market="speed = 6000.0",
                      extra=f"jetstream_replicas = {replicas}")
    text = cfg.read_text().replace(f'servers = ["{servers[0]}"]',
                                   "servers = [" + ", ".join(f'"{s}"' for s in servers) + "]")
    cfg.write_text(text)
    risk = root / "risk.toml"
    risk.write_text(risk.read_text() + "\n[strategies.greedy]\nmax_trades_per_day = 5\n")
    return cfg


def _assert_exactly_once_in_order(stream: list[tuple[str, AnyEvent]],
                                  stored: list[AnyEvent]) -> None:
    ids = [mid for mid, _ in stream]
    assert len(ids) == len(set(ids)), "a Msg-Id appears twice in the stream"
    assert [ev.seq for _, ev in stream] == [ev.seq for ev in stored]  # all, once, in order
    assert [ev for _, ev in stream] == stored


async def _drained(store: EventStore) -> bool:
    return await store.watermark() == store.last_seq


def _denied_greedy(stored: list[AnyEvent], lo: int, hi: int) -> int:
    return sum(1 for e in stored if isinstance(e, OrderDenied) and e.bot == "greedy"
               and lo < e.seq <= hi)


async def test_nats_paused_mid_stream_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(tmp_path / "nats", js_max_memory=16 << 20,
                                js_max_storage=64 << 20)
    await server.start()
    try:
        cfg = _fleet(tmp_path, [server.url])
        bars = synthetic_bars(int(100 * (FAULT_S + 4)))
        async with running_agent(cfg, items={"goog_1d": bars}) as agent:
            await wait_for(lambda: agent.store.last_seq > 100)
            server.pause()
            paused_at = agent.store.last_seq
            await asyncio.sleep(FAULT_S)
            resumed_at = agent.store.last_seq
            server.resume()
            feed = next(iter(agent.feeds.values()))
            await wait_for(feed.done.is_set, FAULT_S + 20)
            await wait_for(lambda: _drained(agent.store), 30)
        nc = await connect(BusConfig(servers=(server.url,)))
        try:
            stream = await stream_events(nc.jetstream())
        finally:
            await nc.close()
    finally:
        if server.is_running:
            server.resume()
        await server.stop()
    stored = await store_events(tmp_path / "state" / "events.db")
    assert resumed_at - paused_at > 50, "trading stopped while NATS was paused"
    assert _denied_greedy(stored, paused_at, resumed_at) > 0, "local cap not enforced"
    _assert_exactly_once_in_order(stream, stored)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@contextlib.asynccontextmanager
async def _cluster(root: Path) -> AsyncIterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    """Three nats-server processes in one JetStream cluster; yields (url, process) each."""
    ports = _free_ports(6)
    client, route = ports[:3], ports[3:]
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for i in range(3):
            d = root / f"n{i}"
            d.mkdir(parents=True)
            routes = ", ".join(f'"nats-route://127.0.0.1:{route[j]}"' for j in range(3) if j != i)
            (d / "nats.conf").write_text(
                f'server_name: "n{i}"\nlisten: "127.0.0.1:{client[i]}"\n'
                f'cluster {{ name: "qtd-chaos"\n listen: "127.0.0.1:{route[i]}"\n'
                f" routes: [{routes}] }}\n"
                f'jetstream {{ store_dir: "{d}"\n max_memory_store: 16MB\n'
                f" max_file_store: 64MB }}\n")
            log = (d / "log").open("wb")
            procs.append((f"nats://127.0.0.1:{client[i]}", subprocess.Popen(
                [str(find_nats_server()), "-c", str(d / "nats.conf")], stdout=log,
                stderr=subprocess.STDOUT)))
            log.close()
        # JetStream is usable once the cluster elected its meta leader.
        nc = await nats.connect([u for u, _ in procs], connect_timeout=2)
        try:
            js = nc.jetstream()
            for _ in range(300):
                try:
                    await js.account_info()
                    break
                except Exception:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("the JetStream cluster did not form")
        finally:
            await nc.close()
        yield procs
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.terminate()
        for _, p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.mark.slow
async def test_cluster_node_lost_mid_stream_loses_and_duplicates_nothing(
        tmp_path: Path) -> None:
    async with _cluster(tmp_path / "cluster") as nodes:
        urls = [u for u, _ in nodes]
        cfg = _fleet(tmp_path, urls, replicas=3)
        bars = synthetic_bars(int(100 * (FAULT_S + 4)))  # as the paused test: 7 s of bars
        async with running_agent(cfg, items={"goog_1d": bars}, timeout_s=60) as agent:
            await wait_for(lambda: agent.store.last_seq > 100, 30)
            link = agent.link
            assert link is not None and link.nc is not None
            victim_url = str(link.nc.connected_url.netloc)
            victim = next(p for u, p in nodes if u.endswith(victim_url))
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
            lost_at = agent.store.last_seq
            await asyncio.sleep(FAULT_S)
            after = agent.store.last_seq
            feed = next(iter(agent.feeds.values()))
            await wait_for(feed.done.is_set, FAULT_S + 30)
            await wait_for(lambda: link.connected, 30)
            assert str(link.nc.connected_url.netloc) != victim_url
            await wait_for(lambda: _drained(agent.store), 60)
        survivors = tuple(u for u, p in nodes if p.poll() is None)
        nc = await connect(BusConfig(servers=survivors))
        try:
            stream = await stream_events(nc.jetstream())
        finally:
            await nc.close()
    stored = await store_events(tmp_path / "state" / "events.db")
    assert after - lost_at > 50, "trading stopped while a NATS node was lost"
    assert _denied_greedy(stored, lost_at, after) > 0, "local cap not enforced"
    assert sum(isinstance(e, Fill) for e in stored) > 100
    _assert_exactly_once_in_order(stream, stored)
