"""Bot runner: hooks quarantined, time budget, isolation between bots, fills and reloads."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from decimal import Decimal
from typing import Annotated, Any

import pytest
from msgspec import Meta

from qtd.clock import SimClock
from qtd.data import load_dataset
from qtd.events import (
    Fill,
    OrderDenied,
    ParamsChanged,
    Side,
    StrategyError,
    TradingState,
    TradingStateChanged,
)
from qtd.feeds import Bar, HistoricalFeed, Trade
from qtd.orders import OrderRequest
from qtd.runner import (
    WATCHDOG,
    BotRunner,
    BotSpec,
    BotState,
    HookAborted,
    HookGuard,
    HookThread,
    HookTimeout,
    run_bots,
)
from qtd.strategy import CancelAll, Strategy

BUDGET = 0.2


def bars(n: int = 30, symbol: str = "GOOG") -> list[Bar]:
    return [
        Bar(symbol, i * 60_000_000_000, 60_000_000_000, Decimal(100 + i), Decimal(101 + i),
            Decimal(99 + i), Decimal(100 + i), Decimal(10))
        for i in range(n)
    ]


class Recorder:
    """Order sink that fills every market order at once at its decision price."""

    def __init__(self, deny: bool = False) -> None:
        self.requests: list[OrderRequest] = []
        self.cancels: list[CancelAll] = []
        self.runners: list[BotRunner] = []
        self.deny = deny

    async def submit(self, req: OrderRequest) -> Any:
        self.requests.append(req)
        if self.deny:
            return OrderDenied(node="n", bot=req.bot, ts_event=0, ts_init=0, account=req.account,
                               symbol=req.symbol, side=req.side, qty=req.qty, check="test",
                               message="no")
        fill = Fill(node="n", bot=req.bot, ts_event=0, ts_init=0,
                    client_order_id=f"c{len(self.requests)}", trade_id=f"t{len(self.requests)}",
                    account=req.account, venue=req.venue, symbol=req.symbol, side=req.side,
                    qty=req.qty, price=req.decision_price or Decimal(1))
        for r in self.runners:
            r.deliver_fill(fill)
        return None

    async def cancel(self, req: CancelAll) -> None:
        self.cancels.append(req)


def make(cls: type[Strategy], sink: Recorder, name: str = "b1", params: Any = None,
         **kw: Any) -> BotRunner:
    spec = BotSpec(name=name, account="acct", venue="paper", symbols=("GOOG",))
    r = BotRunner(cls, params or cls.Params(), spec, clock=SimClock(), submit=sink.submit,
                  cancel=sink.cancel, hook_budget_s=BUDGET, **kw)
    sink.runners.append(r)
    return r


class Raises(Strategy):
    def on_bar(self, bar: Bar) -> None:
        if bar.close > 105:
            raise ZeroDivisionError("boom on purpose")


class Loops(Strategy):
    def on_bar(self, bar: Bar) -> None:
        while True:
            pass


class Slow(Strategy):
    def on_bar(self, bar: Bar) -> None:
        deadline = time.monotonic() + 5 * BUDGET
        while time.monotonic() < deadline:
            pass


class Swallows(Strategy):
    """Catches Exception around a loop: the watchdog's abort is a BaseException."""

    def on_bar(self, bar: Bar) -> None:
        while True:
            try:  # noqa: SIM105 - the point is a bare try/except in user code
                sum(range(1000))
            except Exception:
                pass


class Buyer(Strategy):
    class Params(Strategy.Params):
        qty: Annotated[float, Meta(gt=0)] = 2.0

    def on_start(self) -> None:
        self.fills: list[Fill] = []
        self.seen = 0

    def on_bar(self, bar: Bar) -> None:
        self.seen += 1
        self.target_position(self.params.qty)
        if self.seen == 5:
            self.cancel_all()
            self.log.info("fifth bar", close=bar.close)

    def on_fill(self, fill: Fill) -> None:
        self.fills.append(fill)


async def test_exception_halts_bot_with_traceback() -> None:
    sink = Recorder()
    r = make(Raises, sink)
    assert await r.run(bars()) is BotState.HALTED
    err = [e for e in r.events if isinstance(e, StrategyError)]
    assert len(err) == 1 and err[0].hook == "on_bar" and err[0].error_type == "ZeroDivisionError"
    assert "boom on purpose" in err[0].traceback and "raise ZeroDivisionError" in err[0].traceback
    halted = [e for e in r.events if isinstance(e, TradingStateChanged)]
    assert halted[0].new is TradingState.HALTED and halted[0].scope_key == "b1"


@pytest.mark.parametrize("cls", [Loops, Slow, Swallows])
async def test_overrunning_hook_halts_and_the_loop_is_freed(cls: type[Strategy]) -> None:
    r = make(cls, Recorder())
    assert await r.run(bars()) is BotState.HALTED
    assert r.error is not None and r.error.error_type == "HookTimeout"
    assert "budget" in r.error.message and r.error.hook == "on_bar"
    assert not r.guard.busy and r.guard not in WATCHDOG._guards
    # nothing is left pending for the event loop's thread: it keeps running Python code
    total = 0
    for i in range(200_000):
        total += i
    await asyncio.sleep(0.05)
    assert total == 199_999 * 200_000 // 2


def test_guard_fires_only_on_one_call_busy_for_the_whole_budget() -> None:
    g = HookGuard(1.0)
    g.enter()
    assert not g.exit()
    assert not g.check(0.0) and not g.check(5.0)  # idle
    g.enter()
    assert not g.check(10.0)  # first seen busy
    assert not g.exit()
    g.enter()  # a new call since the last poll: seen afresh, never aborted early
    assert not g.check(10.5) and not g.check(11.4)
    assert not g.exit()
    with pytest.raises(ValueError, match="hook_budget_s=0"):
        HookGuard(0)


def test_guard_aborts_a_busy_call_in_its_own_thread() -> None:
    g = HookGuard(1.0)
    stop = threading.Event()
    outcome: list[object] = []
    started = threading.Event()

    def spin() -> None:
        started.set()
        while not stop.is_set():
            pass

    def work() -> None:
        g.bind()
        try:
            g.enter()
            try:
                spin()
            finally:
                outcome.append(g.exit())
        except HookAborted:
            outcome.append("aborted")

    t = threading.Thread(target=work, daemon=True)
    t.start()
    started.wait(5)
    assert not g.check(100.0)  # first seen
    assert not g.check(100.5)  # within the budget
    assert g.check(101.0) and not g.check(102.0)  # aborted once
    t.join(5)
    stop.set()
    assert outcome == [True, "aborted"]


async def test_one_bot_crashing_never_stops_the_others() -> None:
    sink = Recorder()
    good = make(Buyer, sink, "good")
    bad = make(Raises, sink, "bad")
    looping = make(Loops, sink, "loop")
    feed_bars = bars(40)
    states = await run_bots([(good, feed_bars), (bad, feed_bars), (looping, feed_bars)])
    assert states == {"good": BotState.STOPPED, "bad": BotState.HALTED, "loop": BotState.HALTED}
    assert good.strategy is not None and good.strategy.seen == 40  # type: ignore[attr-defined]
    assert all(req.bot == "good" for req in sink.requests)


async def test_orders_fills_and_target_position() -> None:
    sink = Recorder()
    r = make(Buyer, sink)
    assert await r.run(bars(10)) is BotState.STOPPED
    # one order to reach the target, then the filled position holds it
    assert [(q.side, q.qty) for q in sink.requests] == [(Side.BUY, Decimal("2.0"))]
    assert sink.requests[0].decision_price == Decimal(100)
    s: Any = r.strategy
    assert len(s.fills) == 1 and s.position.qty == Decimal(2)
    assert s.pnl.unrealized == Decimal(2) * (Decimal(109) - Decimal(100))
    assert len(sink.cancels) == 1 and sink.cancels[0].symbol is None


async def test_denied_order_releases_inflight() -> None:
    sink = Recorder(deny=True)
    r = make(Buyer, sink)
    await r.run(bars(3))
    assert len(sink.requests) == 3  # re-requested each bar since nothing is in flight


async def test_structured_log_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="qtd.strategy")
    await make(Buyer, Recorder()).run(bars(6))
    rec = next(r for r in caplog.records if r.getMessage().startswith("fifth bar"))
    assert rec.bot == "b1" and rec.fields == {"close": Decimal(104)}  # type: ignore[attr-defined]


async def test_trades_and_other_symbols() -> None:
    class Ticks(Strategy):
        def on_start(self) -> None:
            self.n = 0

        def on_trade(self, trade: Trade) -> None:
            self.n += 1

    r = make(Ticks, Recorder())
    ticks = [Trade("GOOG", i, Decimal(1), Decimal(1)) for i in range(5)]
    ticks += [Trade("AAPL", 10 + i, Decimal(1), Decimal(1)) for i in range(3)]
    await r.run(ticks)
    assert r.strategy.n == 5  # type: ignore[union-attr]


async def test_bad_order_arguments_are_strategy_errors() -> None:
    class Bad(Strategy):
        def on_bar(self, bar: Bar) -> None:
            self.buy(-1)

    r = make(Bad, Recorder())
    assert await r.run(bars(2)) is BotState.HALTED
    assert r.error is not None and r.error.error_type == "ValueError"


async def test_error_in_start_and_stop() -> None:
    class BadStart(Strategy):
        def on_start(self) -> None:
            raise RuntimeError("no start")

    class BadStop(Strategy):
        def on_stop(self) -> None:
            raise RuntimeError("no stop")

    r1, r2 = make(BadStart, Recorder()), make(BadStop, Recorder())
    assert await r1.run(bars(2)) is BotState.HALTED and r1.error.hook == "on_start"  # type: ignore[union-attr]
    assert await r2.run(bars(2)) is BotState.HALTED and r2.error.hook == "on_stop"  # type: ignore[union-attr]


async def test_swap_params_at_bar_boundary() -> None:
    sink = Recorder()
    r = make(Buyer, sink, params=Buyer.Params(qty=1.0), params_hash="old")

    async def feed() -> Any:
        for i, b in enumerate(bars(6)):
            if i == 3:
                r.swap_params(Buyer.Params(qty=3.0), "new")
            yield b

    await r.run(feed())
    assert [q.qty for q in sink.requests] == [Decimal("1.0"), Decimal("2.0")]
    ch = [e for e in r.events if isinstance(e, ParamsChanged)]
    assert ch and ch[0].old_hash == "old" and ch[0].new_hash == "new" and ch[0].accepted


async def test_submit_failure_halts_only_that_bot() -> None:
    async def broken(req: OrderRequest) -> None:
        raise ConnectionError("router down")

    spec = BotSpec(name="x", account="a", venue="paper", symbols=("GOOG",))
    r = BotRunner(Buyer, Buyer.Params(), spec, clock=SimClock(), submit=broken)
    assert await r.run(bars(3)) is BotState.HALTED
    assert r.error is None
    assert "router down" in next(e for e in r.events if isinstance(e, TradingStateChanged)).reason


async def test_request_stop_and_live_fill_wakeup() -> None:
    """With a feed that blocks (live), fills still reach on_fill and stop works."""
    sink = Recorder()
    r = make(Buyer, sink)
    gate = asyncio.Event()

    async def feed() -> Any:
        yield bars(1)[0]
        await gate.wait()

    task = asyncio.create_task(r.run(feed()))
    for _ in range(100):
        if r.strategy is not None and r.strategy.fills:  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.01)
    assert r.strategy.fills  # type: ignore[union-attr]
    r.request_stop()
    assert await task is BotState.STOPPED


async def test_real_data_replay_with_historical_feed() -> None:
    clock = SimClock()
    sink = Recorder()
    spec = BotSpec(name="g", account="a", venue="paper", symbols=("GOOG",))
    r = BotRunner(Buyer, Buyer.Params(), spec, clock=clock, submit=sink.submit)
    goog: Any = load_dataset("goog_1d")[:300]
    assert await r.run(HistoricalFeed([goog], clock=clock)) is BotState.STOPPED
    assert clock.now_ns() == goog[-1].close_ts_ns


async def test_hook_thread_runs_and_times_out() -> None:
    t = HookThread("t")
    assert await t.call(lambda a: a + 1, 1, timeout_s=1) == 2
    with pytest.raises(KeyError):
        await t.call({}.__getitem__, "x", timeout_s=1)
    ev = threading.Event()
    with pytest.raises(HookTimeout):
        await t.call(lambda: [ev.is_set() or None for _ in iter(int, 1)], timeout_s=0.05)
    for _ in range(100):
        if not t.alive:
            break
        await asyncio.sleep(0.01)
    assert not t.alive
