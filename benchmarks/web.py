"""Status page at fleet scale: first render server time, live frame size and time, frame pace.

A :class:`~qtd.leader.FleetView` is fed ``--bots`` bots (one filled order each) and, per bot,
the PnL tick its agent sends with stage, state and ``--limits`` risk limits in use (the shape
:func:`qtd.agent.telemetry.bot_limits` produces). Figures, same run:

1. **first render**: time of ``GET /`` through the app (fleet snapshot, HTML, middleware;
   an in-process client, so no network), the first call and the median of the next
   ``--repeat``; with limits vs the **reference** of the same fleet whose agents reported no
   limits.
2. **live frame**: one tick of :class:`~qtd.web.live.PnlHub` (snapshot, frame, JSON encode):
   time and size in bytes (raw, and deflated as permessage-deflate sends it), with limits vs
   the reference.
3. **pace**: the hub running with ``push_interval_s = 1`` for ``--seconds`` while every bot's
   PnL changes 10 times a second: frames received by one WebSocket subscriber per second
   (one frame per period however many bots change) and the spacing between them.
4. **browser** (when Chromium is installed): the page served by uvicorn under the same churn,
   loaded in headless Chromium (Playwright, ``tests/e2e/browser.py``): DOMContentLoaded and
   load times, then the browser's main thread time (DevTools ``TaskDuration``, over a CDP
   session) per live frame over ``--seconds``.

    python benchmarks/web.py [--bots 500] [--limits 12] [--repeat 20] [--seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import statistics
import sys
import time
import zlib
from decimal import Decimal
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.e2e.browser

from qtd.clock import LiveClock
from qtd.control import ControlAction
from qtd.events import (
    AnyEvent,
    Fill,
    LimitUsage,
    OrderAccepted,
    OrderIntent,
    OrderSubmitted,
    PnLSnapshot,
    Scope,
    Side,
)
from qtd.fleetsnapshot import FleetSnapshot
from qtd.leader.view import FleetView
from qtd.projections import TradingDay
from qtd.web import WebServer, create_app
from qtd.web.live import PnlHub

NAMES = [("max_position_qty", Scope.STRATEGY, "units"),
         ("max_position_notional", Scope.STRATEGY, "currency"),
         ("max_gross_notional", Scope.STRATEGY, "currency"),
         ("max_net_notional", Scope.STRATEGY, "currency"),
         ("max_open_orders", Scope.STRATEGY, "orders"),
         ("max_orders_per_s", Scope.STRATEGY, "orders/s"),
         ("max_trades_per_day", Scope.STRATEGY, "orders"),
         ("max_position_pct_equity", Scope.ACCOUNT, "%"),
         ("max_open_orders", Scope.ACCOUNT, "orders"),
         ("max_daily_loss", Scope.ACCOUNT, "currency"),
         ("max_daily_loss_pct", Scope.ACCOUNT, "%"),
         ("max_position_qty", Scope.SYMBOL, "units")]


class Source:
    """A FleetSource over a FleetView (reads only)."""

    def __init__(self, view: FleetView) -> None:
        self.view = view

    def snapshot(self) -> FleetSnapshot:
        return self.view.snapshot()

    def versions(self) -> None:  # no version table: the panel is not shown
        return None

    def quality(self) -> None:  # no quality monitor: the panel is not shown
        return None

    async def daily_report(self, day: str | None) -> None:
        return None

    async def control(self, action: ControlAction) -> dict[str, Any]:
        raise NotImplementedError

    async def ack(self, alert_id: str, operator: str) -> bool:
        return False

    async def bot_events(self, node: str, bot: str, limit: int,
                         kinds: tuple[str, ...] = ()) -> list[AnyEvent]:
        return []


def fleet(bots: int, limits: int) -> FleetView:
    clock = LiveClock()
    view = FleetView(trading_day=TradingDay(), capital=Decimal(10_000_000), currency="USD",
                     clock=clock)
    for i in range(bots):
        node, bot, sym = f"node-{i % 20}", f"bot-{i}", f"S{i % 50}"
        now = clock.now_ns()
        b: dict[str, Any] = {"node": node, "bot": bot, "ts_event": now, "ts_init": now}
        cid = f"{node}.{bot}.1"
        for ev in (OrderIntent(**b, client_order_id=cid, cid_counter=1, account=f"acct-{i}",
                               venue="paper", symbol=sym, side=Side.BUY, qty=Decimal(10)),
                   OrderSubmitted(**b, client_order_id=cid),
                   OrderAccepted(**b, client_order_id=cid),
                   Fill(**b, client_order_id=cid, trade_id="t" + cid, account=f"acct-{i}",
                        venue="paper", symbol=sym, side=Side.BUY, qty=Decimal(10),
                        price=Decimal(100 + i % 7))):
            view.apply(ev)
        tick(view, node, bot, i, limits, 0)
    return view


def tick(view: FleetView, node: str, bot: str, i: int, limits: int, n: int) -> None:
    now = view.clock.now_ns()
    used = [LimitUsage(name=name, scope=scope, key=bot if scope is Scope.STRATEGY else
                       f"acct-{i}" if scope is Scope.ACCOUNT else f"S{i % 50}",
                       limit=1000.0, used=float((i * 37 + k * 11 + n) % 1000), unit=unit)
            for k, (name, scope, unit) in enumerate(NAMES[:limits])]
    view.on_pnl(PnLSnapshot(node=node, bot=bot, ts_event=now, ts_init=now,
                            account=f"acct-{i}", realized=Decimal(n % 97),
                            unrealized=Decimal(0), fees=Decimal(0), stage="paper",
                            state="ACTIVE", limits=used))


def render_ms(src: Source, repeat: int) -> tuple[float, float, int]:
    """(first, median of the next ``repeat``) server time of GET / in ms, and its size."""
    times = []
    size = 0
    with TestClient(create_app(src, push_interval_s=3600, allowed_hosts=("testserver",))) as client:
        for _ in range(repeat + 1):
            t0 = time.perf_counter()
            r = client.get("/")
            times.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, r.text[:200]
            size = len(r.content)
    return times[0], statistics.median(times[1:]), size


def frame_figures(src: Source, repeat: int) -> tuple[float, int, int]:
    """(median tick ms, raw bytes, deflated bytes) of the live frame."""
    hub = PnlHub(src)
    times = []
    text = ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        text = hub.tick()
        times.append((time.perf_counter() - t0) * 1000)
    raw = text.encode()
    deflate = zlib.compressobj(wbits=-15)
    return statistics.median(times), len(raw), len(deflate.compress(raw) + deflate.flush())


async def churn(view: FleetView, bots: int, limits: int) -> None:
    """Every bot's PnL tick, 10 times a second, until cancelled."""
    n = 0
    while True:
        n += 1
        for i in range(bots):
            tick(view, f"node-{i % 20}", f"bot-{i}", i, limits, n)
        await asyncio.sleep(0.1)


async def pace(view: FleetView, bots: int, limits: int, seconds: float) -> list[float]:
    """Arrival times (s) of the frames one subscriber gets while every bot changes at 10 Hz."""
    hub = PnlHub(Source(view), period_s=1.0)
    q: asyncio.Queue[str] = asyncio.Queue(4)
    hub.subscribers.add(q)
    arrivals: list[float] = []

    async def receive() -> None:
        while True:
            await q.get()
            arrivals.append(time.perf_counter())

    runner = asyncio.create_task(hub.run())
    tasks = [asyncio.create_task(churn(view, bots, limits)), asyncio.create_task(receive())]
    await asyncio.sleep(seconds)
    hub.stop()
    await runner
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return arrivals


async def browser(view: FleetView, bots: int, limits: int, seconds: float
                  ) -> tuple[float, float, dict[str, float], int]:
    """(DOMContentLoaded ms, load ms, main-thread ms per frame by DevTools metric
    (``TaskDuration`` = all of it, then script, style and layout), frames) in Chromium."""
    from tests.e2e.browser import chromium_page

    server = WebServer(create_app(Source(view), push_interval_s=1.0))
    await server.start()
    mover = asyncio.create_task(churn(view, bots, limits))
    try:
        async with chromium_page() as page:
            cdp = await page.context.new_cdp_session(page)
            await cdp.send("Performance.enable")
            await page.goto(server.url)
            ticks = "Number(document.querySelector('#conn').dataset.ticks || 0)"
            async with asyncio.timeout(60):
                while not await page.evaluate(f"{ticks} >= 1"):
                    await asyncio.sleep(0.1)
            nav = await page.evaluate("(n => [n.domContentLoadedEventEnd, n.loadEventEnd])("
                                      "performance.getEntriesByType('navigation')[0])")

            async def busy() -> tuple[dict[str, float], int]:
                m = {x["name"]: x["value"] for x in
                     (await cdp.send("Performance.getMetrics"))["metrics"]}
                return m, int(await page.evaluate(ticks))

            (b0, n0) = await busy()
            await asyncio.sleep(seconds)
            (b1, n1) = await busy()
    finally:
        mover.cancel()
        await asyncio.gather(mover, return_exceptions=True)
        await server.stop()
    frames = max(n1 - n0, 1)
    per = {k: (b1[k] - b0[k]) * 1000 / frames for k in _PARTS}
    return nav[0], nav[1], per, n1 - n0


_PARTS = ("TaskDuration", "ScriptDuration", "RecalcStyleDuration", "LayoutDuration")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bots", type=int, default=500, help="bots in the fleet (default 500)")
    ap.add_argument("--limits", type=int, default=12, choices=range(1, len(NAMES) + 1),
                    metavar=f"1..{len(NAMES)}", help="risk limits per bot (default 12)")
    ap.add_argument("--repeat", type=int, default=20, help="timed repeats (default 20)")
    ap.add_argument("--seconds", type=float, default=6.0, help="pace run length (default 6)")
    a = ap.parse_args()
    print(f"building a fleet of {a.bots} bots ...", flush=True)
    src, ref = Source(fleet(a.bots, a.limits)), Source(fleet(a.bots, 0))
    print(f"{'':34}{'with ' + str(a.limits) + ' limits/bot':>22}{'reference: none':>18}")
    (f1, m1, s1), (f0, m0, s0) = render_ms(src, a.repeat), render_ms(ref, a.repeat)
    print(f"{'first render GET / (first call)':34}{f1:>19.1f} ms{f0:>15.1f} ms")
    print(f"{'first render GET / (median)':34}{m1:>19.1f} ms{m0:>15.1f} ms")
    print(f"{'page size':34}{s1:>19,} B {s0:>14,} B")
    (t1, r1, d1), (t0, r0, d0) = frame_figures(src, a.repeat), frame_figures(ref, a.repeat)
    print(f"{'live frame: build + encode':34}{t1:>19.1f} ms{t0:>15.1f} ms")
    print(f"{'live frame: size raw':34}{r1:>19,} B {r0:>14,} B")
    print(f"{'live frame: size deflated':34}{d1:>19,} B {d0:>14,} B")
    print(f"pace: hub at 1 s for {a.seconds:.0f} s while all {a.bots} bots change 10x/s ...",
          flush=True)
    arrivals = asyncio.run(pace(src.view, a.bots, a.limits, a.seconds))
    gaps = [b - x for x, b in itertools.pairwise(arrivals)]
    if gaps:
        print(f"frames received: {len(arrivals)} in {a.seconds:.0f} s; spacing mean "
              f"{statistics.fmean(gaps):.3f} s, min {min(gaps):.3f} s, max {max(gaps):.3f} s")
    if shutil.which("chromium") is None:
        print("browser: skipped (chromium not installed: apt-get install -y chromium)")
        return
    print("browser: headless Chromium on the served page under the same churn ...", flush=True)
    for name, view, n in ((f"with {a.limits} limits/bot", src.view, a.limits),
                          ("reference: none", ref.view, 0)):
        dcl, load, per, frames = asyncio.run(browser(view, a.bots, n, a.seconds))
        print(f"  {name:22} DOMContentLoaded {dcl:6.0f} ms, load {load:6.0f} ms; per live "
              f"frame ({frames} frames): main thread {per['TaskDuration']:.1f} ms (script "
              f"{per['ScriptDuration']:.1f}, style {per['RecalcStyleDuration']:.1f}, layout "
              f"{per['LayoutDuration']:.1f})")


if __name__ == "__main__":
    main()
