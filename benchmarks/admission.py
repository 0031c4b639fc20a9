"""Admission in a child process: what it costs, and what the caller's event loop feels.

For every bot config under ``etc/bots`` (or PATH...), the same rules twice, in one run:

* reference: :func:`qtd.admit.rules.check_bot` in this process, on this event loop (what
  admission did before it moved to a child: the strategy's module body, the smoke backtest);
* child: :func:`qtd.admit.sandbox.admit_in_child` (a fresh ``python -P -m qtd.admit.child``).

Prints, per bot, wall ms and the worst stall of this process's event loop while it ran (a
1 ms sleeper's largest overshoot: what a kill arriving at an agent would have waited), then
the whole directory through :func:`qtd.admit.admit_paths` (children one per CPU at once; it
also checks routes files, in this process: no strategy code runs there).

    python benchmarks/admission.py [PATH ...]
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from qtd.admit import admit_paths, collect_files
from qtd.admit.rules import check_bot
from qtd.admit.sandbox import admit_in_child

ROOT = Path(__file__).resolve().parents[1]


async def timed(work: Awaitable[Any]) -> tuple[float, float]:
    """(wall ms of ``work``, worst event-loop stall ms while it ran)."""
    worst, done = 0.0, False

    async def sampler() -> None:
        nonlocal worst
        while not done:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - t - 0.001)

    task = asyncio.create_task(sampler())
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    await work
    took = time.perf_counter() - t0
    done = True
    await task
    return took * 1e3, worst * 1e3


async def main(paths: list[Path]) -> None:
    bots, _, _ = collect_files(paths)
    print(f"{'bot config':<34} {'in-process ms':>14} {'stall ms':>9} {'child ms':>9} "
          f"{'stall ms':>9}")
    total = [0.0, 0.0]
    for b in bots:
        ref, ref_stall = await timed(check_bot(b.resolve()))
        child, child_stall = await timed(admit_in_child(b))
        total[0] += ref
        total[1] += child
        print(f"{b!s:<34} {ref:>14.0f} {ref_stall:>9.1f} {child:>9.0f} {child_stall:>9.1f}")
    print(f"{'sum':<34} {total[0]:>14.0f} {'':>9} {total[1]:>9.0f}")
    whole, stall = await timed(admit_paths(paths))
    print(f"admit_paths({', '.join(map(str, paths))}): {whole:.0f} ms, worst stall "
          f"{stall:.1f} ms")


if __name__ == "__main__":
    asyncio.run(main([Path(p) for p in sys.argv[1:]] or [ROOT / "etc"]))
