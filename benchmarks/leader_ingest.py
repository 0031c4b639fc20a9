"""Leader ingest throughput: events/s consumed from QTD_EVENTS into fleet.db and the fleet view.

Producers are separate processes publishing realistic agent events (OrderIntent, submitted,
accepted, Fill, as JSON with ``Nats-Msg-Id``) with ``publish_async``. Three figures, same run:

1. **bare reference**: a pull consumer doing ``fetch(1000)`` + ack of each message, nothing
   else (what nats-py itself manages here).
2. **leader drain**: the real :class:`~qtd.leader.Leader` consuming a pre-filled backlog
   (decode, dedupe, fleet.db commit per batch with fsync, view and caps, ack).
3. **leader sustained**: producers publish at ``--rate`` events/s for ``--seconds`` while the
   leader consumes; lag = stream timestamp of each batch's newest message to its commit.

    python benchmarks/leader_ingest.py [--backlog 100000] [--rate 20000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import msgspec
from nats.js.api import AckPolicy, ConsumerConfig

from qtd.bus import EVENTS_STREAM, BusConfig, EmbeddedNatsServer, connect, ensure_jetstream
from qtd.events import Fill, OrderAccepted, OrderIntent, OrderSubmitted, Side, to_json
from qtd.leader import Leader
from qtd.leader.config import LeaderConfig


def _events(node: str, i: int) -> list[tuple[str, bytes]]:
    bot, sym = f"bot{i % 10}", f"S{i % 20}"
    cid = f"{node}.{bot}.{i}"
    now = time.time_ns()
    b = {"node": node, "bot": bot, "ts_event": now, "ts_init": now}
    side = Side.BUY if i % 2 else Side.SELL
    evs = [OrderIntent(**b, client_order_id=cid, cid_counter=i, account="acct", venue="paper",
                       symbol=sym, side=side, qty=Decimal(1)),
           OrderSubmitted(**b, client_order_id=cid),
           OrderAccepted(**b, client_order_id=cid, venue_order_id="v" + cid),
           Fill(**b, client_order_id=cid, trade_id="t" + cid, account="acct", venue="paper",
                symbol=sym, side=side, qty=Decimal(1), price=Decimal(100 + i % 5))]
    return [(f"qtd.evt.{node}.{bot}.{type(e).__name__}", to_json(e)) for e in evs]


async def produce(url: str, node: str, total: int, rate: float) -> None:
    """Publish ``total`` events at ``rate``/s (0: as fast as possible); own process."""
    nc = await connect(BusConfig(servers=(url,), name=f"prod-{node}"))
    js = nc.jetstream()
    seq, start, pending = 0, time.perf_counter(), []
    while seq < total:
        for subject, data in _events(node, seq // 4 + 1):
            seq += 1
            pending.append(await js.publish_async(
                subject, data, headers={"Nats-Msg-Id": f"{node}:inc1:{seq}"}))
        if len(pending) >= 2000:
            await asyncio.gather(*pending)
            pending.clear()
            if rate:
                ahead = seq / rate - (time.perf_counter() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    await asyncio.gather(*pending)
    await nc.close()


def _spawn(url: str, nodes: list[str], per_node: int, rate: float) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, __file__, "--produce", url, n, str(per_node),
                              str(rate)]) for n in nodes]


async def bare_reference(url: str, total: int) -> float:
    nc = await connect(BusConfig(servers=(url,), name="bare"))
    js = nc.jetstream()
    sub = await js.pull_subscribe("qtd.evt.>", durable="bare", stream=EVENTS_STREAM,
                                  config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT))
    got, t0 = 0, time.perf_counter()
    while got < total:
        for m in await sub.fetch(1000, timeout=2):
            await m.ack()
            got += 1
    dt = time.perf_counter() - t0
    await nc.close()
    return got / dt


async def _leader_until(leader: Leader, last_seq: int, lags: list[int]) -> float:
    t0 = time.perf_counter()
    seen = leader.ingestor.batches  # lags of this phase only
    while leader.db.stream_seq < last_seq:
        await asyncio.sleep(0.01)
        if leader.ingestor.batches != seen:
            seen = leader.ingestor.batches
            lags.append(leader.ingestor.lag_ms)
    return time.perf_counter() - t0


async def bench(backlog: int, rate: float, seconds: float) -> None:
    logging.getLogger("qtd").setLevel(logging.ERROR)
    nodes = ["n1", "n2"]
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNatsServer(Path(tmp) / "nats", js_max_storage=4 * 1024**3,
                                    js_max_memory=256 * 1024**2)
        await server.start()
        try:
            nc = await connect(BusConfig(servers=(server.url,)))
            await ensure_jetstream(nc.jetstream())
            await nc.close()
            for p in _spawn(server.url, nodes, backlog // len(nodes), 0):
                p.wait()
            print(f"bare fetch(1000)+ack each: {await bare_reference(server.url, backlog):,.0f} "
                  "msg/s")
            cfg = msgspec.convert({"fleet_db": f"{tmp}/fleet.db", "bus": {
                "servers": [server.url], "name": "qtd-leader"}}, LeaderConfig)
            async with Leader(cfg) as leader:
                dt = await _leader_until(leader, backlog, [])
                print(f"leader drain of {backlog:,} events: {backlog / dt:,.0f} events/s")
                per = int(rate * seconds) // len(nodes)
                nodes2 = ["n3", "n4"]
                procs = _spawn(server.url, nodes2, per, rate / len(nodes2))
                lags: list[int] = []
                dt = await _leader_until(leader, backlog + per * len(nodes2), lags)
                for p in procs:
                    p.wait()
                n = per * len(nodes2)
                lags.sort()
                print(f"leader sustained at {rate:,.0f}/s offered: {n / dt:,.0f} events/s over "
                      f"{dt:.1f} s; lag p50 {lags[len(lags) // 2]} ms, p99 "
                      f"{lags[int(len(lags) * 0.99)]} ms, max {lags[-1]} ms (target >= 20,000 "
                      "events/s with lag < 1 s)")
                assert leader.db.duplicates == 0
        finally:
            await server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backlog", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=20_000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--produce", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.produce:
        url, node, total, rate = args.produce
        asyncio.run(produce(url, node, int(total), float(rate)))
    else:
        asyncio.run(bench(args.backlog, args.rate, args.seconds))


if __name__ == "__main__":
    main()
