"""Risk engine benchmarks: one full pre-trade check, and the local kill switch.

Method
------
*Check.* An engine with every control enabled at every scope (global, account, strategy,
symbol: order qty / notional, collar, stale data, reduce-only, position qty / notional /
% equity, gross / net notional, open orders, order rate, trades per day, cooldown, spike,
duplicate guard), limits set so every order passes (the full path runs; a denial stops
early and is cheaper). Requests cycle through 4 sizes × 2 sides × 2 order types over 3
symbols in which the bot holds positions; the simulated clock advances 1 ms per check.
Each call is timed on its own with ``time.perf_counter_ns()`` around it; the same loop
around an empty function call is measured in the same run, so the timer overhead shows
(figures are *including* that overhead). GC is disabled during timing.

*Kill switch.* A real EventStore (under /dev/shm when available), a PaperBroker and the
OrderRouter; 1,000 resting LIMIT orders placed through the router; then
``OrderRouter.kill(GLOBAL)`` is timed from activation to (a) the HALTED state being in
force and (b) cancel requests issued to the broker for all 1,000 orders (the durable record
of the cancels follows in one batch and is not included). Repeated ``--kill-runs`` times.

Targets: check p99 <= 20 µs; kill state change p99 <= 1 ms; cancels issued p99 <= 10 ms.
Exits 1 if a target is missed.

Usage: ``python benchmarks/risk.py [--checks 1000000] [--kill-runs 20]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from qtd.brokers.paper import PaperBroker
from qtd.clock import SimClock
from qtd.control import KillCommand
from qtd.events import Fill, OrderIntent, OrderType, Scope, Side
from qtd.execution import OrderRouter
from qtd.orders import ClientOrderIds, OrderRequest
from qtd.projections import Projections
from qtd.risk import RiskEngine, parse_risk_config
from qtd.risk.engine import Approved
from qtd.store import EventStore

T0 = 1_700_000_000_000_000_000
SYMBOLS = ("AAA", "BBB", "CCC")
ALL_LIMITS = {
    "max_order_qty": 1e6, "max_order_notional": 1e9, "max_position_qty": 1e7,
    "max_position_notional": 1e10, "max_position_pct_equity": 100.0, "max_open_orders": 100_000,
    "max_orders_per_s": 100_000, "max_trades_per_day": 10**9, "trade_cooldown_s": 1e-6,
    "price_collar_bps": 500.0, "max_data_age_s": 3600.0,
}


def full_config() -> dict[str, object]:
    """Every control enabled at every scope, with limits no benchmark order reaches."""
    return {
        "global": {**ALL_LIMITS, "duplicate_window_s": 1e-4, "order_spike_factor": 10.0,
                   "order_spike_min_baseline": 100_000.0, "restricted_symbols": ["ZZZ"]},
        "accounts": {"acct": {**ALL_LIMITS, "equity": 1e11, "max_daily_loss": 1e9,
                              "max_daily_loss_pct": 50.0}},
        "strategies": {"bot": {**ALL_LIMITS, "max_order_notional": 1e9,
                               "max_gross_notional": 1e12, "max_net_notional": 1e12}},
        "symbols": {s: dict(ALL_LIMITS) for s in (*SYMBOLS, "ZZZ")},
        "breakers": {
            "daily_loss": {"max_loss": 1e9}, "drawdown": {"max_drawdown_pct": 50.0},
            "consecutive_losses": {"max_losses": 1000}, "win_streak": {"max_wins": 1000},
            "sharpe": {"min_sharpe": -100.0}, "execution_throttle": {"max_fills": 10**6},
        },
    }


def _pct(values: list[int], q: float) -> float:
    values.sort()
    return values[min(len(values) - 1, int(q * len(values)))]


def _p99(values: list[int]) -> float:
    return max(values) if len(values) < 100 else _pct(values, 0.99)


def bench_check(n: int) -> tuple[float, float, float, float]:
    clock = SimClock(T0)
    proj = Projections()
    engine = RiskEngine(parse_risk_config(full_config()), proj, clock, "bench")
    for i, sym in enumerate(SYMBOLS):
        engine.on_market_data(sym, Decimal("100.00"), T0)
        fill = Fill(node="bench", bot="bot", ts_event=T0, ts_init=T0, client_order_id=f"x{i}",
                    trade_id=f"t{i}", account="acct", venue="paper", symbol=sym,
                    side=Side.BUY, qty=Decimal(50), price=Decimal("100.00"))
        proj.apply(fill)
        engine.on_event(fill)
    reqs = [
        OrderRequest(bot="bot", account="acct", venue="paper", symbol=sym, side=side,
                     qty=Decimal(q), order_type=ot,
                     limit_price=Decimal("100.50") if ot is OrderType.LIMIT else None)
        for sym in SYMBOLS for side in (Side.BUY, Side.SELL) for q in (1, 2, 5, 10)
        for ot in (OrderType.MARKET, OrderType.LIMIT)
    ]
    check, pc, m = engine.check, time.perf_counter_ns, len(reqs)
    times = [0] * n
    empty = [0] * n

    def noop(a: object, b: object) -> None:
        return None

    gc.disable()
    try:
        now = T0
        for i in range(n):
            now += 1_000_000
            r = reqs[i % m]
            t = pc()
            res = check(r, now)
            times[i] = pc() - t
            if not isinstance(res, Approved):
                raise SystemExit(f"benchmark order denied: {res.denial.message}")  # type: ignore[union-attr]
        for i in range(n):
            r = reqs[i % m]
            t = pc()
            noop(r, now)
            empty[i] = pc() - t
    finally:
        gc.enable()
    return _pct(times, 0.5), _pct(times, 0.99), _pct(empty, 0.5), _pct(empty, 0.99)


async def bench_kill(runs: int, orders: int) -> tuple[list[int], list[int]]:
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    halted, cancels = [], []
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        store = await EventStore.open(Path(tmp) / "events.db", node="bench")
        clock = SimClock(T0)
        proj = Projections()
        cfg = parse_risk_config({
            "global": {"duplicate_window_s": 0.0, "order_spike_factor": 0.0},
            "accounts": {"acct": {"equity": 1e9}}, "strategies": {"bot": {}},
            "symbols": {"AAA": {}},
        })
        engine = RiskEngine(cfg, proj, clock, "bench")
        broker = PaperBroker(account="acct", node="bench", clock=clock)
        router = OrderRouter(store=store, clock=clock, risk=engine, cids=ClientOrderIds(store),
                             brokers={"acct": broker}, projections=proj)
        broker.on_price("AAA", Decimal(100), T0)
        await router.on_market_data("AAA", Decimal(100), T0)
        req = OrderRequest(bot="bot", account="acct", venue="paper", symbol="AAA",
                           side=Side.BUY, qty=Decimal(1), order_type=OrderType.LIMIT,
                           limit_price=Decimal(99))
        for _ in range(runs):
            for _ in range(orders):
                clock.advance(1_000)
                out = await router.submit(req)
                assert isinstance(out, OrderIntent), out
            for ev in broker.pending_reports():
                await router.on_venue_event(ev)
            report = await router.kill(KillCommand(scope=Scope.GLOBAL, reason="bench"))
            assert len(report.canceled) == orders, len(report.canceled)
            halted.append(report.halted_ns)
            cancels.append(report.cancels_issued_ns)
            for ev in broker.pending_reports():
                await router.on_venue_event(ev)
            await router.resume(Scope.GLOBAL, "", operator="bench", reason="next run")
        await store.close()
    return halted, cancels


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checks", type=int, default=1_000_000)
    ap.add_argument("--kill-runs", type=int, default=20)
    ap.add_argument("--kill-orders", type=int, default=1_000)
    args = ap.parse_args()
    p50, p99, e50, e99 = bench_check(args.checks)
    print(f"pre-trade check, all controls, {args.checks:,} checks "
          "(perf_counter_ns per call, incl. timer overhead):")
    print(f"  check       p50 {p50 / 1e3:7.2f} µs p99 {p99 / 1e3:7.2f} µs (target p99 <= 20 µs)")
    print(f"  empty call  p50 {e50 / 1e3:7.2f} µs   p99 {e99 / 1e3:7.2f} µs")
    halted, cancels = asyncio.run(bench_kill(args.kill_runs, args.kill_orders))
    h50, h99 = statistics.median(halted), _p99(halted)
    c50, c99 = statistics.median(cancels), _p99(cancels)
    print(f"local kill switch, GLOBAL, {args.kill_orders:,} open orders, {args.kill_runs} runs "
          "(p99 = max when runs < 100):")
    print(f"  HALTED in force  p50 {h50 / 1e6:7.3f} ms p99 {h99 / 1e6:7.3f} ms (target <= 1 ms)")
    print(f"  cancels issued   p50 {c50 / 1e6:7.3f} ms p99 {c99 / 1e6:7.3f} ms (target <= 10 ms)")
    missed = [name for name, ok in (
        ("check p99", p99 <= 20_000), ("kill state p99", h99 <= 1_000_000),
        ("kill cancels p99", c99 <= 10_000_000)) if not ok]
    if missed:
        print("MISSED: " + ", ".join(missed))
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
