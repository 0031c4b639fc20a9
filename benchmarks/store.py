"""Event store figures beside a bare sqlite3 loop writing the same rows, in one run.

Measures (issue: foundation; issue 21 finding 10 for 4):
  1. durable single append (the write-ahead of one order intent): p50/p99, µs
     reference: sqlite3, same schema and pragmas (WAL, synchronous=FULL), INSERT + commit
     of the same rows with their checksum and chain computed beforehand
  2. batched append, events/s (1,000 events per transaction)
     reference: sqlite3 executemany of the same pre-encoded rows, same batch size
  3. replay into projections (orders, positions, daily PnL), events/s
     reference: sqlite3 reading the same rows without decoding or verifying
  4. checksum + hash chain of one event in memory (what tamper evidence adds to an
     append before SQLite sees it), µs; reference: encoding the event's row (event_row)

Targets: synced append p99 <= 2 ms; batched >= 50,000 events/s and >= 0.5x bare sqlite3;
replay >= 200,000 events/s. Exits 1 if a target is missed.

Usage: python benchmarks/store.py [--single N] [--batches N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from qtd.events import Event, Fill, OrderAccepted, OrderIntent, OrderSubmitted, Side
from qtd.projections import Projections
from qtd.store import MIGRATIONS, EventStore, event_row, integrity

BATCH = 1000
NODE = "bench"


def make_events(n_orders: int) -> list[Event]:
    """A realistic mix: per order an intent, submit, ack and two partial fills."""
    out: list[Event] = []
    t = 1_764_000_000_000_000_000
    for i in range(n_orders):
        cid = f"bench.bot{i % 8}.abcdef.{i + 1}"
        bot, sym = f"bot{i % 8}", ("AAPL", "MSFT", "BTCUSDT", "ES")[i % 4]
        side = Side.BUY if (i // 3) % 2 else Side.SELL
        base = dict(node=NODE, bot=bot, ts_init=t)
        out.append(OrderIntent(**base, ts_event=t, client_order_id=cid, cid_counter=i + 1,
                               account="acct", venue="paper", symbol=sym, side=side,
                               qty=Decimal(10), decision_price=Decimal("100.25")))
        out.append(OrderSubmitted(**base, ts_event=t + 1, client_order_id=cid))
        out.append(OrderAccepted(**base, ts_event=t + 2, client_order_id=cid,
                                 venue_order_id=f"v{i}"))
        for k, (q, px) in enumerate((("4", "100.25"), ("6", "100.50"))):
            out.append(Fill(**base, ts_event=t + 3 + k, client_order_id=cid,
                            trade_id=f"{i}-{k}", account="acct", venue="paper", symbol=sym,
                            side=side, qty=Decimal(q), price=Decimal(px) + i % 7,
                            commission=Decimal("0.01")))
        t += 1_000_000
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def bare_connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    for version in sorted(MIGRATIONS):
        for stmt in MIGRATIONS[version]:
            con.execute(stmt)
    return con


INSERT = ("INSERT INTO events (seq, ts, kind, node, bot, symbol, client_order_id, payload, "
          "crc, chain) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def sealed(events: list[Event]) -> list[tuple[object, ...]]:
    """The rows of events (seq set) with their checksum and chain, as the store writes them."""
    return integrity.seal([event_row(e) for e in events], integrity.genesis("bench"))[0]


def seal_cost(events: list[Event]) -> tuple[float, float]:
    """(µs per event to encode its row, µs per event to add checksum and chain)."""
    t0 = time.perf_counter()
    rows = [event_row(e) for e in events]
    t1 = time.perf_counter()
    integrity.seal(rows, integrity.genesis("bench"))
    t2 = time.perf_counter()
    return (t1 - t0) / len(events) * 1e6, (t2 - t1) / len(events) * 1e6


def bare_single(path: Path, rows: list[tuple[object, ...]]) -> list[float]:
    con = bare_connect(path)
    lat = []
    for row in rows:
        t0 = time.perf_counter()
        con.execute(INSERT, row)  # autocommit: one synced transaction per row
        lat.append(time.perf_counter() - t0)
    con.close()
    return lat


def bare_batched(path: Path, rows: list[tuple[object, ...]]) -> float:
    con = bare_connect(path)
    t0 = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        con.execute("BEGIN IMMEDIATE")
        con.executemany(INSERT, rows[i:i + BATCH])
        con.execute("COMMIT")
    dt = time.perf_counter() - t0
    con.close()
    return len(rows) / dt


def bare_read(path: Path) -> float:
    con = sqlite3.connect(path)
    t0 = time.perf_counter()
    n = 0
    last = 0
    while True:
        rows = con.execute("SELECT seq, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                           (last, 5000)).fetchall()
        n += len(rows)
        if len(rows) < 5000:
            break
        last = rows[-1][0]
    dt = time.perf_counter() - t0
    con.close()
    return n / dt


async def qtd_single(path: Path, events: list[Event]) -> list[float]:
    lat = []
    async with await EventStore.open(path, node=NODE) as s:
        for ev in events:
            t0 = time.perf_counter()
            await s.append(ev)
            lat.append(time.perf_counter() - t0)
    return lat


async def qtd_batched(path: Path, events: list[Event]) -> float:
    async with await EventStore.open(path, node=NODE) as s:
        t0 = time.perf_counter()
        for i in range(0, len(events), BATCH):
            await s.append_many(events[i:i + BATCH])
        return len(events) / (time.perf_counter() - t0)


async def qtd_replay(path: Path) -> tuple[float, Projections]:
    async with await EventStore.open(path, readonly=True) as s:
        t0 = time.perf_counter()
        proj = await Projections().rebuild(s.replay_batches())
        return (proj.last_seq / (time.perf_counter() - t0)), proj


def row(label: str, value: str, ref: str, target: str, ok: bool) -> bool:
    print(f"  {label:<38}{value:>18}{ref:>22}   {target:<24}{'ok' if ok else 'MISSED'}")
    return ok


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--single", type=int, default=2000, help="durable appends to time")
    ap.add_argument("--batches", type=int, default=200, help="batches of 1,000 events")
    ap.add_argument("--dir", type=Path, default=None, help="directory for the files "
                    "(default: a temp dir; put it on the disk you will run on)")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="qtd-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    n_events = args.batches * BATCH
    events = make_events(n_events // 5 + 1)[:n_events]
    intents = [e for e in make_events(args.single)[: args.single * 5] if isinstance(e, OrderIntent)]
    intents = intents[: args.single]
    print(f"qtd store benchmark — {n_events:,} events batched, {len(intents):,} durable "
          f"appends, files in {work}")

    with_seq = [type(e)(**{**_fields(e), "seq": i + 1}) for i, e in enumerate(intents)]
    bare_lat = bare_single(work / "bare_single.db", sealed(with_seq))
    qtd_lat = await qtd_single(work / "qtd_single.db", intents)

    numbered = [type(e)(**{**_fields(e), "seq": i + 1}) for i, e in enumerate(events)]
    rows_b = sealed(numbered)
    row_us, seal_us = seal_cost(numbered)
    bare_rate = bare_batched(work / "bare_batch.db", rows_b)
    qtd_rate = await qtd_batched(work / "qtd_batch.db", events)

    bare_read_rate = bare_read(work / "qtd_batch.db")
    replay_rate, proj = await qtd_replay(work / "qtd_batch.db")
    assert proj.last_seq == n_events and len(proj.orders.orders) == n_events // 5

    us = 1e6
    print(f"\n  {'figure':<38}{'qtd':>18}{'bare sqlite3':>22}   {'target':<24}result")
    oks = [
        row("durable append p50", f"{pct(qtd_lat, 50) * us:.0f} µs",
            f"{pct(bare_lat, 50) * us:.0f} µs", "-", True),
        row("durable append p99", f"{pct(qtd_lat, 99) * us:.0f} µs",
            f"{pct(bare_lat, 99) * us:.0f} µs", "<= 2000 µs", pct(qtd_lat, 99) <= 2e-3),
        row("durable append mean", f"{statistics.fmean(qtd_lat) * us:.0f} µs",
            f"{statistics.fmean(bare_lat) * us:.0f} µs", "-", True),
        row("batched append (1,000/txn)", f"{qtd_rate:,.0f} ev/s", f"{bare_rate:,.0f} ev/s",
            ">= 50,000 ev/s", qtd_rate >= 50_000),
        row("batched: qtd / bare sqlite3", f"{qtd_rate / bare_rate:.2f}x", "1.00x", ">= 0.50x",
            qtd_rate / bare_rate >= 0.5),
        row("replay into projections", f"{replay_rate:,.0f} ev/s",
            f"{bare_read_rate:,.0f} rows/s", ">= 200,000 ev/s", replay_rate >= 200_000),
        row("checksum + chain per event", f"{seal_us:.2f} µs", f"{row_us:.2f} µs (row)", "-",
            True),
    ]
    print("\n  (bare sqlite3 replay reference reads rows only; qtd decodes and projects them)")
    return 0 if all(oks) else 1


def _fields(e: Event) -> dict[str, object]:
    return {f: getattr(e, f) for f in e.__struct_fields__}


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
