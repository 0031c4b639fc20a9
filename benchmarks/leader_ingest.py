"""Leader ingest throughput: events/s consumed from QTD_EVENTS into fleet.db and the fleet view.

Producers are separate processes publishing realistic agent events (OrderIntent, submitted,
accepted, Fill, as JSON with ``Nats-Msg-Id``) with ``publish_async`` to an embedded
nats-server (JetStream file storage, ``sync_interval: always`` unless ``--nats-sync``: on a
slow disk the producers cannot offer 20,000 events/s with an fsync per message, so the
sustained phase is producer-bound; ``--nats-sync 2m`` lifts that). Figures, same run, same
server:

1. **publish**: the producers' own rate filling the backlog (JetStream's ceiling here).
2. **bare references** on that backlog, nothing but NATS: nats-py ``fetch(1000)`` + ack of
   each message; nats-py ``fetch(1000)`` + one ack of the last (``AckPolicy.ALL``, the
   leader's ack pattern); :class:`~qtd.leader.pull.BatchPuller` + one ack of the last.
   Then a **bare sustained follower**: a nats-py pull consumer in its own process while the
   producers publish at ``--rate`` for ``--seconds`` (its lag p50/p99/max); it runs before
   the leader starts, so the two never compete for the cores.
3. **leader drain**: the real leader (:mod:`qtd.leader.daemon`) consuming everything stored so far
   (decode, dedupe, one fleet.db transaction per batch with fsync, view, caps, the quality
   monitor, ack) — its capacity.
4. **leader sustained**: producers publish at ``--rate`` events/s for ``--seconds`` while the
   leader consumes; printed: the rate the producers achieved, the leader's rate from its
   first to its last commit of the phase (and counting the producers' start-up), and the
   lag (stream timestamp of each batch's newest message to its commit) p50/p99/max.
   Target: >= 20,000 events/s with lag < 1 s.

``--profile`` runs the drain under cProfile and prints the top functions by own time (note:
cProfile counts every resumption of a coroutine as a call).

    python benchmarks/leader_ingest.py [--backlog 100000] [--rate 20000] [--seconds 10]
                                       [--batch 5000] [--no-fsync] [--profile]
                                       [--nats-sync always|2m]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import pstats
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import msgspec
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from qtd.bus import EVENTS_STREAM, BusConfig, EmbeddedNatsServer, connect, ensure_jetstream
from qtd.events import Fill, OrderAccepted, OrderIntent, OrderSubmitted, Side, from_json, to_json
from qtd.leader.config import LeaderConfig
from qtd.leader.daemon import Leader, running_leader
from qtd.leader.pull import BatchPuller


def _events(node: str, i: int) -> list[tuple[str, bytes]]:
    bot, sym = f"bot{i % 10}", f"S{i % 20}"
    cid = f"{node}.{bot}.{i}"
    now = time.time_ns()
    b = {"node": node, "bot": bot, "ts_event": now, "ts_init": now}
    side = Side.BUY if i % 2 else Side.SELL
    account = f"acct-{node}-{bot}"  # one account per bot, as `qtd up` runs them
    evs = [OrderIntent(**b, client_order_id=cid, cid_counter=i, account=account, venue="paper",
                       symbol=sym, side=side, qty=Decimal(1)),
           OrderSubmitted(**b, client_order_id=cid),
           OrderAccepted(**b, client_order_id=cid, venue_order_id="v" + cid),
           Fill(**b, client_order_id=cid, trade_id="t" + cid, account=account, venue="paper",
                symbol=sym, side=side, qty=Decimal(1), price=Decimal(100 + i % 5))]
    return [(f"qtd.evt.{node}.{bot}.{type(e).__name__}", to_json(e)) for e in evs]


async def produce(url: str, node: str, total: int, rate: float) -> None:
    """Publish ``total`` events at ``rate``/s (0: as fast as possible); own process.
    Prints ``produced <n> <seconds>``."""
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
    print(f"produced {seq} {time.perf_counter() - start:.3f}", flush=True)
    await nc.close()


async def bare_follow(url: str, total: int) -> None:
    """Reference for the sustained phase (own process): nats-py ``fetch`` + ack of the last
    on a fresh consumer of the new events; prints ``lags <p50> <p99> <max>`` in ms (stream
    timestamp of each batch's newest message to its arrival here)."""
    nc = await connect(BusConfig(servers=(url,), name="bare-follow"))
    js = nc.jetstream()
    info = await js.stream_info(EVENTS_STREAM)
    await js.add_consumer(EVENTS_STREAM, ConsumerConfig(
        durable_name="bare-follow", ack_policy=AckPolicy.ALL, max_ack_pending=50_000,
        filter_subject="qtd.evt.>", deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=info.state.last_seq + 1))
    sub = await js.pull_subscribe_bind(durable="bare-follow", stream=EVENTS_STREAM)
    print("ready", flush=True)
    got, lags = 0, []
    while got < total:
        try:
            msgs = await sub.fetch(1000, timeout=0.25)
        except TimeoutError:
            continue
        stamped = msgs[-1].metadata.timestamp.timestamp()
        lags.append(max(0, int((time.time() - stamped) * 1000)))
        await msgs[-1].ack()
        got += len(msgs)
    print(f"lags {_pct(lags, 0.5)} {_pct(lags, 0.99)} {max(lags)}", flush=True)
    await nc.close()


def _spawn(url: str, nodes: list[str], per_node: int, rate: float) -> list[subprocess.Popen[str]]:
    return [subprocess.Popen([sys.executable, __file__, "--produce", url, n, str(per_node),
                              str(rate)], stdout=subprocess.PIPE, text=True) for n in nodes]


def _produced(procs: list[subprocess.Popen[str]]) -> float:
    """Wait for the producers; their combined rate, events/s (over the slowest one's time)."""
    total, slowest = 0, 0.0
    for p in procs:
        out, _ = p.communicate()
        _, n, secs = out.split()
        total, slowest = total + int(n), max(slowest, float(secs))
    return total / slowest


async def _consumer(nc: Client, name: str, policy: AckPolicy) -> None:
    await nc.jetstream().add_consumer(EVENTS_STREAM, ConsumerConfig(
        durable_name=name, ack_policy=policy, max_ack_pending=50_000,
        filter_subject="qtd.evt.>"))


async def bare_references(url: str, total: int) -> dict[str, float]:
    """msg/s of three NATS-only pull consumers over the same backlog (module docstring)."""
    nc = await connect(BusConfig(servers=(url,), name="bare"))
    js = nc.jetstream()
    out = {}
    for name, policy in (("each", AckPolicy.EXPLICIT), ("last", AckPolicy.ALL)):
        await _consumer(nc, f"bare-{name}", policy)
        sub = await js.pull_subscribe_bind(durable=f"bare-{name}", stream=EVENTS_STREAM)
        got, t0 = 0, time.perf_counter()
        while got < total:
            msgs = await sub.fetch(1000, timeout=2)
            if policy is AckPolicy.EXPLICIT:
                for m in msgs:
                    await m.ack()
            else:
                await msgs[-1].ack()
            got += len(msgs)
        out[f"nats-py fetch(1000) + ack {name}"] = got / (time.perf_counter() - t0)
    for decode in (False, True):
        name = "bare-puller-decode" if decode else "bare-puller"
        await _consumer(nc, name, AckPolicy.ALL)
        puller = await BatchPuller(nc, EVENTS_STREAM, name).start()
        got, t0 = 0, time.perf_counter()
        while got < total:
            msgs = await puller.fetch(5000, timeout=2)
            if decode:
                for m in msgs:
                    from_json(m.data)
            await msgs[-1].ack()
            got += len(msgs)
        what = " + decode" if decode else ""
        out[f"BatchPuller(5000){what} + ack last"] = got / (time.perf_counter() - t0)
        await puller.unsubscribe()
    await nc.close()
    return out


async def _leader_until(leader: Leader, last_seq: int, lags: list[int]
                        ) -> tuple[float, float, int]:
    """Wait until the leader has committed stream seq ``last_seq``; appends each new batch's
    lag (ms) to ``lags``. Returns (seconds from the call, seconds from the first commit of
    this phase, events committed after that first commit): the second pair is the leader's
    own rate over the window it was consuming, without the producers' process start-up."""
    t0 = time.perf_counter()
    start_seq = leader.db.stream_seq
    first_t, first_seq = 0.0, 0
    seen = leader.ingestor.batches  # lags of this phase only
    while leader.db.stream_seq < last_seq:
        await asyncio.sleep(0.005)
        if leader.ingestor.batches != seen:
            seen = leader.ingestor.batches
            lags.append(leader.ingestor.lag_ms)
            if not first_t and leader.db.stream_seq > start_seq:
                first_t, first_seq = time.perf_counter(), leader.db.stream_seq
    end = time.perf_counter()
    return end - t0, end - first_t if first_t else 0.0, last_seq - first_seq


def _pct(xs: list[int], q: float) -> int:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0


async def bench(args: argparse.Namespace) -> None:
    logging.getLogger("qtd").setLevel(logging.ERROR)
    nodes, backlog = ["n1", "n2"], args.backlog
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNatsServer(Path(tmp) / "nats", js_max_storage=4 * 1024**3,
                                    js_max_memory=256 * 1024**2, sync_interval=args.nats_sync)
        await server.start()
        try:
            nc = await connect(BusConfig(servers=(server.url,)))
            await ensure_jetstream(nc.jetstream())
            await nc.close()
            print(f"publish (2 producer processes, JetStream sync_interval {args.nats_sync}): "
                  f"{_produced(_spawn(server.url, nodes, backlog // 2, 0)):,.0f} events/s")
            for name, rate in (await bare_references(server.url, backlog)).items():
                print(f"bare {name}: {rate:,.0f} msg/s")
            per = int(args.rate * args.seconds) // 2
            # the sustained reference runs on its own, before the leader starts: the
            # follower and the leader never compete for the machine's cores
            follow = subprocess.Popen([sys.executable, __file__, "--follow", server.url,
                                       str(2 * per)], stdout=subprocess.PIPE, text=True)
            assert follow.stdout is not None and follow.stdout.readline().strip() == "ready"
            offered_ref = _produced(_spawn(server.url, ["f1", "f2"], per, args.rate / 2))
            ref = follow.communicate(timeout=60)[0].strip().split()
            print(f"bare nats-py follower sustained (own process; producers {offered_ref:,.0f}/s"
                  "): " + (f"lag p50 {ref[1]} ms, p99 {ref[2]} ms, max {ref[3]} ms"
                          if ref[:1] == ["lags"] else f"failed ({' '.join(ref)!r})"))
            cfg = msgspec.convert({"fleet_db": f"{tmp}/fleet.db", "bus": {
                "servers": [server.url], "name": "qtd-leader"}, "ingest": {
                "batch": args.batch, "fsync": not args.no_fsync}}, LeaderConfig)
            async with running_leader(cfg) as leader:
                prof = cProfile.Profile() if args.profile else None
                if prof is not None:
                    prof.enable()
                stored = backlog + 2 * per
                dt, _, _ = await _leader_until(leader, stored, [])
                if prof is not None:
                    prof.disable()
                print(f"leader drain of {stored:,} events (batch <= {args.batch}, fsync "
                      f"{not args.no_fsync}): {stored / dt:,.0f} events/s"
                      f"{' (under cProfile)' if prof else ''}")
                procs = _spawn(server.url, ["n3", "n4"], per, args.rate / 2)
                lags: list[int] = []
                dt, window, consumed = await _leader_until(leader, stored + 2 * per, lags)
                offered = _produced(procs)
                rate = consumed / window if window > 0 else 0.0
                print(f"leader sustained, {args.rate:,.0f}/s asked of the producers, "
                      f"{offered:,.0f}/s achieved by them: leader {rate:,.0f} events/s "
                      f"({consumed:,} events from its first to its last commit of the phase, "
                      f"{window:.1f} s; {2 * per / dt:,.0f}/s counting the producers' "
                      f"start-up); lag p50 {_pct(lags, 0.5)} ms, p99 {_pct(lags, 0.99)} ms, "
                      f"max {max(lags, default=0)} ms; {len(lags)} batches (target >= 20,000 "
                      "events/s with lag < 1 s)")
                assert leader.db.duplicates == 0
        finally:
            await server.stop()
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backlog", type=int, default=100_000, help="events in the backlog")
    ap.add_argument("--rate", type=float, default=20_000, help="sustained offer, events/s")
    ap.add_argument("--seconds", type=float, default=10, help="sustained phase length")
    ap.add_argument("--batch", type=int, default=5000, help="leader ingest.batch")
    ap.add_argument("--no-fsync", action="store_true", help="leader ingest.fsync = false")
    ap.add_argument("--profile", action="store_true", help="cProfile the leader's drain")
    ap.add_argument("--nats-sync", default="always",
                    help="JetStream sync_interval: 'always' (qtd's production setting) or e.g. "
                    "'2m' (nats-server's default) to offer more than this disk can fsync")
    ap.add_argument("--produce", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--follow", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.follow:
        asyncio.run(bare_follow(args.follow[0], int(args.follow[1])))
    elif args.produce:
        url, node, total, rate = args.produce
        asyncio.run(produce(url, node, int(total), float(rate)))
    else:
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
