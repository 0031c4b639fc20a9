"""Market data read rate: the Parquet catalog vs the CSV loader, same bars, same run.

Method
------
*Bars.* ``--bars`` (default 1,000,000) one-minute bars of a seeded random walk
(:func:`benchmarks.backtest.random_walk`: cents, 24/7 timestamps from 2020-09-13T12:26Z, ~1.9
years, so 23 month files), written once as a plain CSV (``time,open,high,low,close,volume``,
epoch seconds, the layout ``qtd backtest --data FILE`` reads) and once into a catalog set
``bench:RW:1m`` (:class:`qtd.catalog.Catalog`), both in a temporary directory (``--dir``).

*Timed.* Each side produces the ``list[Bar]`` the backtest feed replays (what
``qtd backtest --data`` hands to :class:`~qtd.feeds.HistoricalFeed`): the CSV side is
:func:`qtd.feeds.load_bars_csv` (parse and validate every row, build the Decimals), the
catalog side is :meth:`Catalog.read` (read the month files, build the Decimals from each
distinct price text once). Both are checked equal to the generated bars. The two alternate
``--repeat`` times (default 3) and each one's best run is reported (a neighbour's burst on
a shared machine slows whichever run it lands on). Then one pass of
:class:`~qtd.feeds.HistoricalFeed` over the bars is timed alone, so the end-to-end
figure "load + replay" can be read off for both.

Target: catalog read ≥ 5 × faster than the CSV loader. Exits 1 when missed.

Usage: ``python benchmarks/data.py [--bars 1000000] [--repeat 3] [--dir /dev/shm]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.backtest import random_walk  # noqa: E402
from qtd.catalog import Catalog, Provenance, SetKey  # noqa: E402
from qtd.feeds import Bar, HistoricalFeed, load_bars_csv  # noqa: E402

TARGET = 5.0
KEY = SetKey("bench", "RW", "1m")


def write_csv(path: Path, bars: list[Bar]) -> None:
    """Plain OHLCV CSV, epoch-second times."""
    with open(path, "w") as out:
        out.write("time,open,high,low,close,volume\n")
        out.writelines(f"{b.ts_ns // 1_000_000_000},{b.open},{b.high},{b.low},{b.close},"
                       f"{b.volume}\n" for b in bars)


def timed(fn: object) -> tuple[float, list[Bar]]:
    start = time.perf_counter()
    bars = fn()  # type: ignore[operator]
    return time.perf_counter() - start, bars


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bars", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", help="where the files go (default: a temporary directory)")
    args = ap.parse_args()
    bars = random_walk(args.bars, "RW", seed=26)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="qtd-bench-data-") as tmp:
        root = Path(tmp)
        csv = root / "rw.csv"
        t0 = time.perf_counter()
        write_csv(csv, bars)
        t_csv_write = time.perf_counter() - t0
        catalog = Catalog(root / "catalog")
        prov = Provenance(venue="bench", endpoint="benchmarks/data.py", fetched_at_ns=0,
                          rows=len(bars), first_ns=bars[0].ts_ns, last_ns=bars[-1].ts_ns,
                          source="bench")
        t0 = time.perf_counter()
        catalog.write(KEY, bars, prov)
        t_cat_write = time.perf_counter() - t0
        months = sorted(catalog.set_dir(KEY).glob("*.parquet"))
        csv_mb = csv.stat().st_size / 2**20
        cat_mb = sum(p.stat().st_size for p in months) / 2**20
        best_csv = best_cat = float("inf")
        for _ in range(args.repeat):
            t, got = timed(lambda: load_bars_csv(csv, "RW", interval="1m"))
            assert got == bars, "CSV loader returned other bars"
            best_csv = min(best_csv, t)
            del got
            t, got = timed(lambda: catalog.read(KEY))
            assert got == bars, "catalog returned other bars"
            best_cat = min(best_cat, t)
            del got
        t0 = time.perf_counter()
        replayed = sum(1 for _ in HistoricalFeed([bars]))
        t_replay = time.perf_counter() - t0
    n = len(bars)
    ratio = best_csv / best_cat
    print(f"bars: {n:,} one-minute bars, {len(months)} month files; machine load "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; best of {args.repeat}")
    print(f"files: CSV {csv_mb:.1f} MiB (written in {t_csv_write:.2f} s); catalog "
          f"{cat_mb:.1f} MiB Parquet (written in {t_cat_write:.2f} s)")
    print(f"CSV loader    load_bars_csv   {best_csv:7.3f} s  {n / best_csv:>12,.0f} bars/s")
    print(f"catalog       Catalog.read    {best_cat:7.3f} s  {n / best_cat:>12,.0f} bars/s")
    print(f"ratio         catalog / CSV   {ratio:7.2f} x  (target >= {TARGET:g} x)")
    print(f"replay        HistoricalFeed  {t_replay:7.3f} s for {replayed:,} bars: load + "
          f"replay {best_csv + t_replay:.2f} s (CSV) vs {best_cat + t_replay:.2f} s (catalog)")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
