"""Order path latency: signal → risk check → write-ahead intent → adapter request on the wire.

For each of N orders (default 10,000) the benchmark calls ``OrderRouter.submit`` (risk check,
client_order_id, durable ``OrderIntent`` append to a real SQLite store, token) which hands
the order to a real broker adapter (BinanceBroker: python-binance AsyncClient; or
AlpacaBroker: alpaca-py in a worker thread) talking to the local venue stub, which runs in
a **separate process** so that it does not share this event loop or the GIL.

Method (one host clock, ``time.time_ns()`` in both processes):
  * ``t0``: just before ``router.submit`` (the strategy's order request, i.e. the signal);
  * ``t_adapter``: when the adapter's ``submit`` is entered (risk + intent done);
  * ``t_wire``: when the stub's request handler starts (the request is on the wire and
    parsed by the stub's HTTP server: this includes loopback transit and uvicorn's parsing,
    so it *over*-states the time inside qtd);
  * ``t_done``: when ``router.submit`` returns (the venue answered, OrderSubmitted stored).
Inside qtd = ``t_wire - t0``; venue round trip (reported separately) = ``t_done - t_wire``.
LIMIT orders far from the market are used so that the stub does not fill them.

Target: p99 of inside-qtd ≤ 2 ms. Exits 1 if missed.

Usage: python benchmarks/order_path.py [--orders N] [--venue binance|alpaca] [--warmup N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qtd.brokers.alpaca import AlpacaBroker  # noqa: E402
from qtd.brokers.base import SubmitToken  # noqa: E402
from qtd.brokers.binance import BinanceBroker  # noqa: E402
from qtd.brokers.retry import RetryPolicy  # noqa: E402
from qtd.clock import LiveClock  # noqa: E402
from qtd.events import OrderIntent, Side  # noqa: E402
from qtd.store import EventStore  # noqa: E402
from tests.stubs.rig import Rig  # noqa: E402

STUB = """
import sys, uvicorn
from starlette.responses import JSONResponse
sys.path.insert(0, {root!r})
from tests.stubs.{mod} import {cls}
stub = {cls}({args})
async def log(request):
    return JSONResponse([[p.get("newClientOrderId") or p.get("client_order_id"), t]
                         for r, p, t in stub.log.entries if r.startswith("POST")])
stub.app.add_route("/_bench/log", log)
uvicorn.run(stub.app, host="127.0.0.1", port={port}, log_level="warning", lifespan="off",
            ws="websockets-sansio")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_stub(venue: str) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    unlimited = "orders_per_10s=10**9, weight_per_min=10**9"  # measure qtd, not the gate
    mod, cls, args = (("binance_stub", "BinanceStub", unlimited) if venue == "binance"
                      else ("alpaca_stub", "AlpacaStub", "price='100'"))
    code = STUB.format(root=str(ROOT), mod=mod, cls=cls, args=args, port=port)
    proc = subprocess.Popen([sys.executable, "-W", "ignore", "-c", code])
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return proc, port
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit("stub did not start")


def stamping(cls: type[Any]) -> type[Any]:
    """The adapter class, recording when its submit is entered (ns, per client_order_id)."""

    class Stamped(cls):  # type: ignore[misc, valid-type]
        stamps: ClassVar[dict[str, int]] = {}

        async def submit(self, intent: OrderIntent, token: SubmitToken) -> None:
            self.stamps[intent.client_order_id] = time.time_ns()
            await super().submit(intent, token)

    return Stamped


def make_broker(venue: str, port: int) -> Any:
    clock, url = LiveClock(), f"http://127.0.0.1:{port}"
    if venue == "binance":
        return stamping(BinanceBroker)(
            account="acct", node="bench", clock=clock, api_key="key", api_secret="secret",
            symbols=["BTCUSDT"], api_url=f"{url}/api", ws_api_url=f"ws://127.0.0.1:{port}/ws-api/v3",
            policy=RetryPolicy())
    return stamping(AlpacaBroker)(account="acct", node="bench", clock=clock, api_key="key",
                                  secret_key="s", base_url=url,
                                  stream_url=f"ws://127.0.0.1:{port}/stream")


def pct(xs: list[float], p: float) -> float:
    return statistics.quantiles(xs, n=1000)[int(p * 10) - 1] if len(xs) > 1 else xs[0]


async def run(venue: str, n: int, warmup: int, tmp: Path) -> dict[str, Any]:
    proc, port = start_stub(venue)
    store = await EventStore.open(tmp / "events.db", node="bench")
    broker = make_broker(venue, port)
    try:
        await broker.start()
        sym, px, limit = ("BTCUSDT", "50000", "25000.00") if venue == "binance" else \
            ("AAPL", "100", "50")
        rig = await Rig(store, broker, [sym]).start({sym: px})
        t0s: dict[str, int] = {}
        dones: dict[str, int] = {}
        for i in range(warmup + n):
            t0 = time.time_ns()
            intent = await rig.submit(sym, "0.01" if venue == "binance" else "1",
                                      Side.BUY, limit=limit)
            if i >= warmup:
                t0s[intent.client_order_id], dones[intent.client_order_id] = t0, time.time_ns()
        await rig.stop()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_bench/log") as resp:
            wire = {cid: t for cid, t in json.load(resp)}
    finally:
        await broker.close()
        await store.close()
        proc.terminate()
        proc.wait(5)
    missing = [c for c in t0s if c not in wire]
    if missing:
        raise SystemExit(f"{len(missing)} orders never reached the stub, e.g. {missing[0]}")
    inside = [(wire[c] - t) / 1e6 for c, t in t0s.items()]
    risk = [(broker.stamps[c] - t) / 1e6 for c, t in t0s.items()]
    rtt = [(dones[c] - wire[c]) / 1e6 for c in t0s]
    return {"inside": inside, "risk_intent": risk, "venue_rtt": rtt}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--orders", type=int, default=10_000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--venue", choices=["binance", "alpaca"], default="binance")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        res = asyncio.run(run(args.venue, args.orders, args.warmup, Path(d)))
    print(f"order path, {args.orders} orders, venue {args.venue} (stub in its own process)")
    for key, label in (("risk_intent", "signal → risk → durable intent → adapter"),
                       ("inside", "signal → request on the wire (inside qtd)"),
                       ("venue_rtt", "venue round trip (wire → answer → stored)")):
        xs = res[key]
        print(f"  {label:46s} p50 {pct(xs, 50):7.3f} ms  p99 {pct(xs, 99):7.3f} ms  "
              f"max {max(xs):7.3f} ms")
    p99 = pct(res["inside"], 99)
    ok = p99 <= 2.0
    print(f"target p99 inside qtd <= 2 ms: {'met' if ok else 'MISSED'} ({p99:.3f} ms)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
