"""Cost of execution quality and surveillance per event, beside the store replay they ride
on, in one run (the leader runs both on every ingested event; the CLI on a replay).

Measures, on N orders (intent, submit, ack, two partial fills; every 10th a limit order
canceled instead) across 20 bots and 3 accounts:
  1. reference: store replay (read + decode), events/s
  2. replay + ExecutionQuality.feed, events/s
  3. replay + Surveillance.feed, events/s
  4. replay + Projections.apply (what `qtd positions` does), events/s, a second reference

Usage: python benchmarks/quality.py [--orders N]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from qtd.events import (
    AnyEvent,
    Event,
    Fill,
    OrderAccepted,
    OrderCancelRequested,
    OrderIntent,
    OrderSubmitted,
    OrderType,
    Side,
)
from qtd.projections import Projections
from qtd.quality.execution_quality import ExecutionQuality
from qtd.quality.surveil import Surveillance
from qtd.store import EventStore

NODE = "bench"


def make_events(n: int) -> list[Event]:
    out: list[Event] = []
    t = 1_764_000_000_000_000_000
    for i in range(n):
        bot, acct = f"bot{i % 20}", f"acct{i % 3}"
        side = Side.BUY if (i // 20) % 2 == 0 else Side.SELL
        cid = f"{NODE}.{bot}.{i}"
        limit = i % 10 == 0
        t += 50_000_000
        b = {"node": NODE, "bot": bot, "ts_event": t, "ts_init": t}
        out.append(OrderIntent(
            **b, client_order_id=cid, cid_counter=i, account=acct, venue="paper",
            symbol=f"S{i % 20}", side=side, qty=Decimal(10),
            order_type=OrderType.LIMIT if limit else OrderType.MARKET,
            limit_price=Decimal("99.5") if limit else None, decision_price=Decimal(100)))
        out.append(OrderSubmitted(**b, client_order_id=cid, arrival_price=Decimal(100)))
        out.append(OrderAccepted(**b, client_order_id=cid))
        if limit:
            out.append(OrderCancelRequested(**b, client_order_id=cid, reason="strategy"))
            continue
        for k in range(2):
            out.append(Fill(**b, client_order_id=cid, trade_id=f"t{i}.{k}", account=acct,
                            venue="paper", symbol=f"S{i % 20}", side=side, qty=Decimal(5),
                            price=Decimal("100.01")))
    return out


async def timed(store: EventStore, fn: Callable[[AnyEvent], object] | None) -> float:
    n = 0
    t0 = time.perf_counter()
    async for batch in store.replay_batches():
        if fn is not None:
            for ev in batch:
                fn(ev)
        n += len(batch)
    return n / (time.perf_counter() - t0)


async def main(orders: int) -> None:
    events = make_events(orders)
    with tempfile.TemporaryDirectory() as tmp:
        async with await EventStore.open(Path(tmp) / "q.db", node=NODE) as store:
            for i in range(0, len(events), 5000):
                await store.append_many(events[i:i + 5000], sync=False)
            print(f"{len(events):,} events ({orders:,} orders)")
            await timed(store, None)  # warm-up: page cache, allocator
            ref = await timed(store, None)
            print(f"  replay only (reference)        {ref:>12,.0f} ev/s")
            for name, fn in (("replay + ExecutionQuality", ExecutionQuality().feed),
                             ("replay + Surveillance", Surveillance().feed),
                             ("replay + Projections (ref 2)", Projections().apply)):
                rate = await timed(store, fn)
                print(f"  {name:<30} {rate:>12,.0f} ev/s  ({rate / ref:.2f}x replay)")
            again = await timed(store, None)
            print(f"  replay only, again             {again:>12,.0f} ev/s  (noise check)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=50_000)
    asyncio.run(main(ap.parse_args().orders))
