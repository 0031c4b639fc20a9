"""The timing helpers of ``benchmarks/isolation.py``: a kill due while the event loop is
stuck in a C call must be timed from when it was due, not from when the delivering thread
got the GIL back (which would hide the whole stall), and percentiles are nearest-rank."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from benchmarks.isolation_parts import KillRig, KillThread, pct
from qtd.events import Scope, TradingState


async def test_a_kill_due_during_a_stuck_loop_is_timed_from_its_due_time(
        tmp_path: Path) -> None:
    rig = await KillRig.open(tmp_path)
    try:
        kt = KillThread(asyncio.get_running_loop(), rig, [0.0, 0.05, 0.1])
        kt.go()
        t0 = time.perf_counter_ns()
        sum(range(5 * 10**7))  # one C call holding the GIL: the thread cannot deliver
        stall = time.perf_counter_ns() - t0
        await kt.joined()
        sent, due, probes = rig.take()
    finally:
        await rig.close()
    assert len(sent) == len(due) == len(probes) == 3
    # due <= t0 + 0.1 s and in force >= t0 + stall, whatever the machine's speed
    assert min(due) >= stall - 100_000_000, (due, stall)
    assert max(sent) < min(due)  # delivery came only after the stall
    assert rig.router.risk.states.get(Scope.GLOBAL) is TradingState.ACTIVE  # resumed each time


def test_percentiles_are_nearest_rank() -> None:
    xs = list(range(1, 201))
    assert pct(xs, 0.99) == 198 and pct(xs, 0.5) == 100
    assert pct(xs[:50], 0.99) == 50  # fewer than 100 values: the maximum
