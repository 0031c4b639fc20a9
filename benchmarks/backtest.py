"""Backtest throughput: qtd's live code path vs backtesting.py, same bars, same strategy.

Method
------
*Bars.* A seeded random walk of 1-minute OHLCV bars (close-to-close log-normal steps of
0.2 %, highs/lows 0.1 % beyond open/close, prices rounded to cents, 24/7 timestamps from
2020-09-13T12:26Z). Random-walk bars rather than chained real data so any length has the
same statistics; the strategy and the engines do the same work per bar either way.

*Strategy.* SMA(10)/SMA(30) crossover, 1 unit, long only: ``strategies/ma_cross.py`` in
qtd, the equivalent ``crossover`` strategy in backtesting.py (``commission=0``, market
orders at the next open in both).

*qtd.* :func:`qtd.backtest.run_backtest`: bot runner (hooks inline under the watchdog's
time budget), risk engine (permissive limits: every pre-trade check runs; no PnL breaker
threshold is set, so nothing reads the account's equity and no mark re-values it), order
router with write-ahead intents, paper broker, projections and the **event log on** (an
:class:`~qtd.store.EventStore` file in a temporary directory, ``--dir`` to choose, e.g.
/dev/shm; every signal, intent, ack and fill is stored, the last commit fsynced). Timed from
the first to the last bar, including the final store commit (the store is opened before,
closed after). *backtesting.py*: ``Backtest(df, ...).run()`` timed whole (it includes its
stats computation).

*Noise.* The two engines run alternately ``--repeat`` times (default 3) on the same bars and
each one's best run is reported (as ``timeit`` does): on a shared machine a neighbour's
burst slows whichever run it lands on, and the best run is the one it disturbed least.

*Breakdown.* The same bars also run through the same strategy with its orders suppressed
(:func:`without_orders`: its ``target_position`` only counts the calls), so every bar does the
same indicator and crossover work and no order is sent (best of ``--repeat``). Its rate
is qtd's per-bar floor (feed, clock, paper broker, marks, breakers, bot runner, strategy);
``(1/rate - 1/floor) x bars / fills`` is what one filled order costs on top (signal, risk
checks, write-ahead intent, paper fill, its events stored and applied, and re-valuing the
open position on the bars it is held), and ``(1/(1.5 x backtesting.py rate) - 1/floor) x
bars / fills`` is what the target leaves for it.

*CPU split.* Beside each per-order cost: the CPU per filled order of the event loop's
thread (``time.thread_time``) and of the store's writer process (the
:class:`~qtd.store.BulkAppender` child that seals and commits the event batches; its CPU
from ``os.times`` once it has exited, less one idle start of it measured in the same run),
each over its without-orders run, divided by the fills. The writer runs beside the loop,
on another core: on a 2-core machine the two share the machine, so a run is as fast as
the busier of them allows, and a busy writer slows the loop: on 2026-12-07 here (2 cores,
60,000 flip orders, two runs each) the loop's own thread CPU per order was 57-66 us with the
writer running and 51-54 us with its batches dropped (a scratch patch, not an option), and
its wall time per order 67-74 us against 51-54 us. Short runs carry the writer's fixed
costs (its first pages, the final fsync).

*Multi-symbol.* 20 symbols × 50,000 bars, one bot per symbol, merged by
:class:`~qtd.feeds.HistoricalFeed` in time order, one store: qtd only (best of
``--repeat``).

*Fills piling up.* One bot, one symbol, :class:`Flip` (long 1 unit on odd bars, flat on
even ones: one filled order per bar, all into the same position) over ``--flip`` FEW and
MANY bars (default 10,000 and 200,000), each with its own without-orders floor; µs per
filled order = ``(1/rate - 1/floor) x bars / fills`` (best of ``--repeat``). The reference is
backtesting.py on the same flip over ``--bt-flip`` bars (its trades accumulate too; #1275).

Targets: qtd bars/s ≥ 1.5 × backtesting.py bars/s; the per-order cost at MANY fills within
10 % of that at FEW. Exits 1 when either is missed.

Usage: ``python benchmarks/backtest.py [--bars 200000] [--symbols 20] [--bars-each 50000]
[--repeat 3] [--dir /dev/shm] [--flip 10000 200000] [--bt-flip 10000]``
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import sys
import tempfile
import time
import warnings
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from qtd.admit.loader import load_strategy
from qtd.backtest import BacktestBot, run_backtest
from qtd.feeds import Bar, HistoricalFeed
from qtd.risk.load import parse_risk_config
from qtd.runner import BotSpec
from qtd.store import EventStore
from qtd.strategy import Strategy

MIN_NS = 60 * 10**9
T0 = 1_600_000_000 * 10**9
TARGET = 1.5
STRATEGY = Path(__file__).resolve().parents[1] / "strategies" / "ma_cross.py"


def random_walk(n: int, symbol: str, seed: int) -> list[Bar]:
    """``n`` 1-minute bars of a seeded random walk (module docstring); equal prices share
    one Decimal object to keep a million bars in memory."""
    rng, p, cache = random.Random(seed), 100.0, {}
    out = []

    def q(x: float) -> Decimal:
        k = round(x * 100)
        d = cache.get(k)
        if d is None:
            d = cache[k] = Decimal(k) / 100
        return d

    one = Decimal(1)
    for i in range(n):
        c = max(1.0, p * math.exp(rng.gauss(0, 0.002)))
        o, cl = q(p), q(c)
        h = max(q(max(p, c) * (1 + abs(rng.gauss(0, 0.001)))), o, cl)
        lo = min(q(min(p, c) * (1 - abs(rng.gauss(0, 0.001)))), o, cl)
        out.append(Bar(symbol, T0 + i * MIN_NS, MIN_NS, o, h, lo, cl, one))
        p = c
    return out


def without_orders(cls: type[Strategy]) -> type[Strategy]:
    """``cls`` whose ``target_position`` counts its calls (``signals``) instead of ordering."""

    class WithoutOrders(cls):  # type: ignore[valid-type,misc]
        signals = 0

        def target_position(self, *args: Any, **kwargs: Any) -> None:
            self.signals += 1

    return WithoutOrders


class Flip(Strategy):
    """Long ``qty`` on odd bars, flat on even ones: one filled order per bar, all in one
    position (the per-order cost as fills pile up)."""

    class Params(Strategy.Params):
        fast: int = 10  # unused: the same Params shape as ma_cross
        slow: int = 30
        qty: float = 1.0

    def on_start(self) -> None:
        self.n = 0

    def on_bar(self, bar: Bar) -> None:
        self.n += 1
        self.target_position(self.params.qty if self.n % 2 else 0, reason="flip")


class Run(NamedTuple):
    """One timed qtd run: bars/s, fills, events stored, and the CPU seconds of the event
    loop's thread and of the store's writer process (a child: its CPU is counted once it has
    exited, which the run's end waits for)."""

    rate: float
    fills: int
    events: int
    loop_cpu_s: float
    writer_cpu_s: float


async def qtd_rate(streams: list[list[Bar]], tmp: Path, *, orders: bool = True,
                   strategy: type[Strategy] | None = None) -> Run:
    """Bars/s of qtd over ``streams`` (one bot per stream); also fills, events stored and
    the CPU split (:class:`Run`). ``orders=False`` runs the strategy
    :func:`without_orders`; ``strategy`` replaces ``strategies/ma_cross.py``."""
    symbols = [s[0].symbol for s in streams]
    cls, problems = strategy, []
    if cls is None:
        cls, _, problems = await load_strategy(STRATEGY)  # as admission loads it
    assert cls is not None, problems
    if not orders:
        cls = without_orders(cls)
    risk = parse_risk_config({
        "global": {"duplicate_window_s": 0.0, "order_spike_factor": 0.0},
        "accounts": {"bench": {"equity": 1e12}},
        "strategies": {f"ma-{s}": {} for s in symbols}, "symbols": {s: {} for s in symbols}})
    bots = [BacktestBot(strategy=cls, params=cls.Params(fast=10, slow=30, qty=1),
                        spec=BotSpec(name=f"ma-{s}", account="bench", venue="paper",
                                     symbols=(s,))) for s in symbols]
    items = streams[0] if len(streams) == 1 else list(HistoricalFeed(streams))
    tmp.mkdir(parents=True, exist_ok=True)
    store = await EventStore.open(tmp / f"bench-{len(streams)}.db", node="bench")
    try:
        c0, cpu0, t = _children_cpu(), time.thread_time(), time.perf_counter()
        res = await run_backtest(bots, items, store=store, risk=risk,
                                 accounts={"bench": {"cash": Decimal(10**9)}})
        dt, cpu, writer = (time.perf_counter() - t, time.thread_time() - cpu0,
                           _children_cpu() - c0)
    finally:
        await store.close()
    return Run(len(items) / dt, sum(b.fills for b in res.bots.values()), res.last_seq, cpu,
               writer)


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's exited children so far."""
    t = os.times()
    return t.children_user + t.children_system


def _best(runs: list[Run]) -> Run:
    """The fastest of ``runs`` (best of ``--repeat``, as ``timeit`` reports)."""
    return max(runs, key=lambda r: r.rate)


def backtesting_rate(bars: list[Bar]) -> tuple[float, int]:
    """Bars/s of backtesting.py on the same bars and strategy; also its trade count."""
    from backtesting import Strategy
    from backtesting.lib import crossover
    from backtesting.test import SMA

    class SmaCross(Strategy):  # type: ignore[misc]
        def init(self) -> None:
            self.fast = self.I(SMA, self.data.Close, 10)
            self.slow = self.I(SMA, self.data.Close, 30)

        def next(self) -> None:
            if crossover(self.fast, self.slow):
                self.buy(size=1)
            elif crossover(self.slow, self.fast):
                self.position.close()

    return _bt_run(bars, SmaCross)


def _bt_run(bars: list[Bar], strategy: type) -> tuple[float, int]:
    """Bars/s and trade count of backtesting.py running ``strategy`` on ``bars``."""
    import pandas as pd
    from backtesting import Backtest

    df = pd.DataFrame({k: [float(getattr(b, k.lower())) for b in bars]
                       for k in ("Open", "High", "Low", "Close", "Volume")},
                      index=pd.to_datetime([b.ts_ns for b in bars]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        stats = Backtest(df, strategy, cash=10**9).run()
        dt = time.perf_counter() - t
    return len(bars) / dt, int(stats["# Trades"])


def backtesting_flip_rate(bars: list[Bar]) -> tuple[float, int]:
    """Bars/s of backtesting.py running :class:`Flip` (buy 1 on odd bars, close on even
    ones); also its trade count."""
    from backtesting import Strategy as BtStrategy

    class BtFlip(BtStrategy):  # type: ignore[misc]
        def init(self) -> None:
            self.n = 0

        def next(self) -> None:
            self.n += 1
            if self.n % 2:
                self.buy(size=1)
            else:
                self.position.close()

    return _bt_run(bars, BtFlip)


async def writer_start_cpu(tmp: Path) -> float:
    """CPU seconds of starting and stopping the store's writer process with nothing to
    write (once per run that fills a batch; subtracted from a run's writer CPU)."""
    tmp.mkdir(parents=True, exist_ok=True)
    store = await EventStore.open(tmp / "start.db", node="bench")
    try:
        c0 = _children_cpu()
        await store.bulk_appender().close()
        return _children_cpu() - c0
    finally:
        await store.close()


def cpu_per_order(run: Run, floor: Run, start_s: float) -> tuple[float, float]:
    """µs of CPU per filled order of ``run`` over its without-orders ``floor``: the event
    loop's thread, and the store's writer process (less its start, ``start_s``, when the
    run started it and the floor did not)."""
    n = max(run.fills, 1)
    writer = run.writer_cpu_s - floor.writer_cpu_s
    if run.writer_cpu_s and not floor.writer_cpu_s:
        writer -= start_s
    return (run.loop_cpu_s - floor.loop_cpu_s) / n * 1e6, writer / n * 1e6


def flip_cost(fills: int, repeat: int, tmp: Path) -> tuple[float, Run, Run]:
    """qtd's µs per filled order over ``fills`` orders into one position (:class:`Flip`,
    one order per bar): ``(1/rate - 1/floor) x bars / fills`` with both rates the best of
    ``repeat``; also those two runs."""
    bars = random_walk(fills + 1, "FLP", 2)
    runs, floors = [], []
    for i in range(repeat):  # alternately: a neighbour's burst hits both alike
        runs.append(asyncio.run(qtd_rate([bars], tmp / f"flip{fills}-{i}", strategy=Flip)))
        floors.append(asyncio.run(qtd_rate([bars], tmp / f"flip{fills}-f{i}", orders=False,
                                           strategy=Flip)))
    best, floor = _best(runs), _best(floors)
    cost = (1 / best.rate - 1 / floor.rate) * len(bars) / max(best.fills, 1) * 1e6
    return cost, best, floor


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bars", type=int, default=200_000, help="bars of the one-symbol run")
    ap.add_argument("--symbols", type=int, default=20, help="symbols of the multi-symbol run")
    ap.add_argument("--bars-each", type=int, default=50_000, help="bars per symbol there")
    ap.add_argument("--repeat", type=int, default=3, help="runs per engine; best is kept")
    ap.add_argument("--dir", help="directory for the event stores (default: system temp)")
    ap.add_argument("--flip", type=int, nargs=2, default=[10_000, 200_000],
                    metavar=("FEW", "MANY"), help="fills of the two one-position runs")
    ap.add_argument("--bt-flip", type=int, default=10_000,
                    help="bars of backtesting.py's flip reference (0: skip it)")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error(f"--repeat {args.repeat}: must be >= 1 (the best of the runs is kept)")
    bars = random_walk(args.bars, "SYN", 1)
    bt_rate = 0.0
    runs, floors = [], []
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        for i in range(args.repeat):
            r, bt_trades = backtesting_rate(bars)
            bt_rate = max(bt_rate, r)
            q = asyncio.run(qtd_rate([bars], Path(d) / f"run{i}"))
            f = asyncio.run(qtd_rate([bars], Path(d) / f"sig{i}", orders=False))
            assert f.fills == 0, f"the strategy without orders traded ({f.fills} fills)"
            runs.append(q)
            floors.append(f)
            print(f"  run {i + 1}/{args.repeat}: backtesting.py {r:>10,.0f} bars/s   "
                  f"qtd {q.rate:>10,.0f} bars/s   qtd without orders {f.rate:>10,.0f} bars/s",
                  flush=True)
        best, floor_run = _best(runs), _best(floors)
        rate, fills, events, floor = best.rate, best.fills, best.events, floor_run.rate
        print(f"backtesting.py  {args.bars:>9,} bars   {bt_rate:>10,.0f} bars/s  "
              f"({bt_trades} trades)")
        print(f"qtd (event log)  {args.bars:>9,} bars   {rate:>10,.0f} bars/s  "
              f"({fills} fills, {events:,} events stored)")
        ratio = rate / bt_rate
        print(f"ratio qtd / backtesting.py = {ratio:.3f} (target >= {TARGET})", flush=True)
        per_order_us = (1 / rate - 1 / floor) * args.bars / max(fills, 1) * 1e6
        print(f"breakdown: qtd without orders (same indicators) {floor:>10,.0f} bars/s "
              f"({floor / bt_rate:.2f} x backtesting.py); each filled order adds "
              f"{per_order_us:.1f} us ({fills} orders: "
              f"{(1 / rate - 1 / floor) * rate:.0%} of qtd's time)", flush=True)
        budget_us = (1 / (TARGET * bt_rate) - 1 / floor) * args.bars / max(fills, 1) * 1e6
        print(f"           the target leaves {budget_us:.1f} us per filled order "
              "(negative: the per-bar floor alone misses it)", flush=True)
        start_s = asyncio.run(writer_start_cpu(Path(d) / "start"))
        print("           " + _cpu_line(best, floor_run, start_s), flush=True)
        del bars
        streams = [random_walk(args.bars_each, f"S{i:02d}", 100 + i)
                   for i in range(args.symbols)]
        m = _best([asyncio.run(qtd_rate(streams, Path(d) / f"multi{i}"))
                   for i in range(args.repeat)])
        m_rate, m_fills, m_events = m.rate, m.fills, m.events
        print(f"qtd {args.symbols} symbols x {args.bars_each:,} bars   {m_rate:>10,.0f} "
              f"bars/s  ({m_fills} fills, {m_events:,} events stored)   [one symbol above: "
              f"qtd {rate:,.0f}, backtesting.py {bt_rate:,.0f} bars/s]", flush=True)
        del streams
        few, many = args.flip
        cost_few, few_run, few_floor = flip_cost(few, args.repeat, Path(d))
        cost_many, many_run, many_floor = flip_cost(many, args.repeat, Path(d))
        flat = cost_many / cost_few
        print(f"one position, one filled order per bar: {few_run.fills:,} fills "
              f"{cost_few:.1f} us per order; {many_run.fills:,} fills {cost_many:.1f} us per "
              f"order (ratio {flat:.3f}, target within 10%)", flush=True)
        for run, fl in ((few_run, few_floor), (many_run, many_floor)):
            print(f"   {run.fills:,} fills: " + _cpu_line(run, fl, start_s), flush=True)
        if args.bt_flip:
            fb = random_walk(args.bt_flip, "FLP", 2)
            bt_flip = max(backtesting_flip_rate(fb) for _ in range(args.repeat))
            q_flip = _best([asyncio.run(qtd_rate([fb], Path(d) / f"qflip{i}", strategy=Flip))
                            for i in range(args.repeat)])
            print(f"   reference, the same flip on {args.bt_flip:,} bars: backtesting.py "
                  f"{bt_flip[0]:,.0f} bars/s ({bt_flip[1]:,} trades), qtd {q_flip.rate:,.0f} "
                  f"bars/s ({q_flip.fills:,} fills)", flush=True)
    return 0 if ratio >= TARGET and abs(flat - 1) <= 0.10 else 1


def _cpu_line(run: Run, floor: Run, start_s: float) -> str:
    loop_us, writer_us = cpu_per_order(run, floor, start_s)
    per_order = (run.events - floor.events) / max(run.fills, 1)
    return (f"CPU per filled order: event loop {loop_us:.1f} us (its thread), store writer "
            f"{writer_us:.1f} us (its own process, beside the loop: {per_order:.1f} events "
            f"stored per order, {writer_us / max(per_order, 1e-9):.1f} us each; its start, "
            f"{start_s * 1e3:.0f} ms, not counted); {os.cpu_count()} cores")


if __name__ == "__main__":
    sys.exit(main())
