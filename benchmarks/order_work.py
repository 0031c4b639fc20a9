"""Python work per filled order in a backtest: bytecode instructions executed, counted.

Wall-clock figures on a shared 2-core host move by 10-30 % from run to run, more than most
single changes to the order path are worth; this benchmark counts instead. It runs the
:class:`Flip` strategy of ``benchmarks/backtest.py`` (one filled order per bar, all into one
position) through :func:`qtd.backtest.run_backtest` with the event log on, and counts the
Python bytecode instructions executed (``sys.settrace`` with ``f_trace_opcodes``; see the
``sys.settrace`` and ``frame.f_trace_opcodes`` entries of the Python reference) over
``--bars`` bars after ``--warmup`` bars, once with orders and once with the same strategy's
orders suppressed (the per-bar floor, the reference measured in the same run). Per filled
order = (with orders − floor) / fills. The count is deterministic for one Python version
and one code tree: compare two commits by running it in each.

It counts Python instructions only: the work inside C functions (Decimal arithmetic,
msgspec, dict operations) is not in it, so it complements ``benchmarks/backtest.py``'s µs per
order (the target), it does not replace it. ``--top N`` prints the N functions executing the
most instructions per order.

    python benchmarks/order_work.py [--bars 100] [--warmup 200] [--top 25]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

import qtd.backtest as qb
from qtd.feeds import MarketData

sys.path.insert(0, str(Path(__file__).resolve().parent))
import backtest as bench  # this directory's benchmark module


class Counter:
    """Counts the instructions executed while tracing, by function (``co_qualname``)."""

    def __init__(self) -> None:
        self.by: collections.Counter[str] = collections.Counter()

    def trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            self.by[frame.f_code.co_qualname] += 1
        return self.trace

    @property
    def total(self) -> int:
        return sum(self.by.values())


def count(bars: int, warmup: int, orders: bool) -> tuple[Counter, int]:
    """Instructions over ``bars`` Flip bars after ``warmup`` ones; and the fills in them."""
    stream = bench.random_walk(warmup + bars + 1, "FLP", 2)
    counter, step = Counter(), qb.Backtest._step
    seen = {"items": 0, "fills_before": 0, "fills_after": 0}

    async def counted(self: qb.Backtest, item: MarketData) -> None:
        seen["items"] += 1
        if not warmup < seen["items"] <= warmup + bars:
            await step(self, item)
            return
        if seen["items"] == warmup + 1:
            seen["fills_before"] = len(self.fills)
        sys.settrace(counter.trace)
        try:
            await step(self, item)
        finally:
            sys.settrace(None)
        seen["fills_after"] = len(self.fills)

    qb.Backtest._step = counted  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(bench.qtd_rate([stream], Path(tmp) / "run", orders=orders,
                                       strategy=bench.Flip))
    finally:
        qb.Backtest._step = step  # type: ignore[method-assign]
    return counter, seen["fills_after"] - seen["fills_before"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bars", type=int, default=100, help="bars counted (100)")
    ap.add_argument("--warmup", type=int, default=200, help="bars run before counting (200)")
    ap.add_argument("--top", type=int, default=25, help="functions listed (25; 0: none)")
    args = ap.parse_args()
    if args.bars < 2 or args.warmup < 0:
        ap.error("--bars must be >= 2 and --warmup >= 0")
    full, fills = count(args.bars, args.warmup, orders=True)
    floor, _ = count(args.bars, args.warmup, orders=False)
    if not fills:
        raise SystemExit("no fills in the counted bars")
    per_order = (full.total - floor.total) / fills
    print(f"Flip, {args.bars} bars after {args.warmup}: {fills} filled orders")
    print(f"with orders        {full.total / args.bars:9,.0f} instructions per bar")
    print(f"floor (no orders)  {floor.total / args.bars:9,.0f} instructions per bar  [reference]")
    print(f"per filled order   {per_order:9,.0f} instructions")
    if args.top:
        print("\nfunctions by instructions per order (with orders, floor's share subtracted):")
        diff = full.by.copy()
        diff.subtract(floor.by)
        for name, n in diff.most_common(args.top):
            print(f"{n / fills:9,.1f}  {name}")


if __name__ == "__main__":
    main()
