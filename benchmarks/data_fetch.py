"""Fetch rate of ``qtd data fetch`` against the venue stubs, under the published limits.

For each venue the real SDK client (python-binance ``AsyncClient.get_klines``; alpaca-py
``StockHistoricalDataClient``) fetches ``--bars`` one-minute bars from the stub on loopback
(:mod:`tests.stubs.binance_stub`, :mod:`tests.stubs.alpaca_stub`) into a fresh catalog,
through :class:`qtd.catalog.fetch.Fetcher` (validation, Parquet writes, resume ledger), with
the venue's published limits in the client's rate gate **and** enforced by the stub
(Binance: weight 2 a klines request, 6,000 a minute; Alpaca: 200 requests a minute, 10,000
bars a page). Prints bars/s, requests, the peak weight (or requests) in one window and the
429s the stub answered because qtd went over the limit (must be 0).

``--tight`` also runs Binance with the stub and the gate at 1/60 of the limit per second
(100 weight a second: 50 requests a second, the same rate as the published 6,000 a minute)
so the gate, not the stub's speed, sets the pace: again 0 × 429.

    PYTHONPATH=. python benchmarks/data_fetch.py [--bars 300000] [--tight]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from qtd.catalog import Catalog, SetKey
from qtd.catalog.fetch import Fetcher, Quiet
from qtd.feeds.bars import parse_ts
from qtd.venues import HistoryContext, get
from tests.stubs import StubServer
from tests.stubs.alpaca_stub import AlpacaStub
from tests.stubs.binance_stub import BinanceStub
from tests.stubs.history import MINUTE_NS, Series, WeightWindow

START = parse_ts("2024-01-01")


async def run(venue: str, bars: int, limits: list[tuple[str, float, int]],
              window: WeightWindow) -> dict[str, float]:
    end = START + bars * MINUTE_NS
    series = Series("1m", START, end)
    if venue == "binance":
        b = BinanceStub()
        b.klines[("ETHUSDT", "1m")], b.weight = series, window
        app, log, key, suffix = b.app, b.log, SetKey("binance", "ETHUSDT", "1m"), "/api"
    else:
        a = AlpacaStub()
        a.bars[("MSFT", "1m")], a.rate = series, window
        app, log, key, suffix = a.app, a.log, SetKey("alpaca", "MSFT", "1m"), ""
    server = await StubServer(app).start()
    history = get(venue).history
    assert history is not None
    source = history(HistoryContext(rest_url=server.http_url + suffix,
                                    credentials=("key", "secret"), limits=limits))
    try:
        with tempfile.TemporaryDirectory() as root:
            t0 = time.perf_counter()
            result = await Fetcher(Catalog(Path(root)), source, listener=Quiet()).fetch(
                key, START, end)
            elapsed = time.perf_counter() - t0
    finally:
        await source.close()
        await server.stop()
    assert result.error == "" and result.added == bars, result
    return {"bars": bars, "s": elapsed, "bars_per_s": bars / elapsed,
            "requests": len(log.entries), "peak": window.peak, "limit": window.limit,
            "over_429": window.over}


def show(name: str, r: dict[str, float]) -> None:
    print(f"{name:<34} {r['bars']:>8,.0f} bars in {r['s']:6.2f} s = {r['bars_per_s']:>8,.0f} "
          f"bars/s; {r['requests']:.0f} requests, peak {r['peak']:.0f}/{r['limit']:.0f} "
          f"per window, 429 caused by us: {r['over_429']:.0f}")


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bars", type=int, default=300_000)
    p.add_argument("--tight", action="store_true")
    args = p.parse_args()
    show("binance klines (6,000 weight/min)", await run(
        "binance", args.bars, [("REQUEST_WEIGHT", 60.0, 6000), ("RAW_REQUESTS", 300.0, 61000)],
        WeightWindow(60.0, 6000)))
    show("alpaca bars (200 requests/min)", await run(
        "alpaca", args.bars, [("REQUESTS", 60.0, 200)], WeightWindow(60.0, 200)))
    if args.tight:
        show("binance, 100 weight/s (gate-bound)", await run(
            "binance", args.bars, [("REQUEST_WEIGHT", 1.0, 100)], WeightWindow(1.0, 100)))


if __name__ == "__main__":
    asyncio.run(main())
