"""Paper broker bar fill rules (next open / close, limits and stops through a later bar's range,
gaps, commission per notional and per unit, slippage, latency) and the backtest driving them."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from qtd.backtest import BacktestBot, run_backtest
from qtd.brokers.paper import PaperBroker
from qtd.clock import SimClock
from qtd.events import Fill, OrderIntent, OrderType, Side
from qtd.feeds import Bar
from qtd.risk.load import parse_risk_config
from qtd.risk.tokens import mint_submit
from qtd.runner import BotSpec
from qtd.store import EventStore
from qtd.strategy import Strategy

H = 3600 * 10**9
D = Decimal


def _bar(i: int, o: str, h: str, lo: str, c: str) -> Bar:
    return Bar("AAPL", i * H, H, D(o), D(h), D(lo), D(c), D(1000))


def _intent(cid: str, side: Side = Side.BUY, kind: OrderType = OrderType.MARKET,
            limit: str | None = None, stop: str | None = None, qty: str = "10") -> OrderIntent:
    return OrderIntent(
        node="n", bot="b", ts_event=1, ts_init=1, client_order_id=cid, cid_counter=1,
        account="a", venue="paper", symbol="AAPL", side=side, qty=D(qty), order_type=kind,
        limit_price=D(limit) if limit else None, stop_price=D(stop) if stop else None)


class Rig:
    def __init__(self, **kw: Any) -> None:
        self.clock = SimClock(0)
        self.broker = PaperBroker(account="a", node="n", clock=self.clock, **kw)

    def bar(self, b: Bar) -> None:  # as the backtest drives it: open, match, then close
        self.clock.set(max(self.clock.now_ns(), b.ts_ns))
        self.broker.on_bar(b)
        self.clock.set(b.ts_ns + b.interval_ns)

    async def send(self, intent: OrderIntent) -> None:
        await self.broker.submit(intent, mint_submit(intent))

    def fills(self) -> list[tuple[Decimal, Decimal, int]]:
        return [(e.price, e.commission, e.ts_event) for e in self.broker.pending_reports()
                if isinstance(e, Fill)]


async def test_market_fills_at_next_open_with_costs() -> None:
    r = Rig(commission_bps=D(10), commission_per_unit=D("0.01"), slippage_bps=D(100))
    r.bar(_bar(0, "100", "101", "99", "100"))
    await r.send(_intent("m"))
    assert r.fills() == []  # decided on bar 0's close: nothing fills at that close
    r.bar(_bar(1, "102", "103", "101", "102"))
    # 102 x 1.01 = 103.02; commission 10 x 103.02 x 0.1 % + 10 x 0.01
    assert r.fills() == [(D("103.02"), D("1.0302") + D("0.10"), H)]


async def test_market_fills_at_this_close_when_configured() -> None:
    r = Rig(fill_at="close")
    r.bar(_bar(0, "100", "101", "99", "100.5"))
    await r.send(_intent("m", Side.SELL))
    assert [p for p, _, _ in r.fills()] == [D("100.5")]


async def test_latency_delays_a_market_order_by_whole_bars() -> None:
    r = Rig(latency_ns=H + 1)
    r.bar(_bar(0, "100", "101", "99", "100"))
    await r.send(_intent("m"))
    r.bar(_bar(1, "102", "103", "101", "102"))
    r.bar(_bar(2, "104", "105", "103", "104"))
    r.bar(_bar(3, "106", "107", "105", "106"))
    assert [(p, ts) for p, _, ts in r.fills()] == [(D(106), 3 * H)]


@pytest.mark.parametrize(("side", "limit", "bar", "want"), [
    (Side.BUY, "99", ("100", "101", "98.5", "100"), "99"),    # trades through: at the limit
    (Side.BUY, "99", ("97", "98", "96", "97"), "97"),         # gaps through: at the open
    (Side.BUY, "99", ("100", "101", "99.5", "100"), None),    # never reaches it
    (Side.SELL, "101", ("100", "101.5", "99", "100"), "101"),
    (Side.SELL, "101", ("103", "104", "102", "103"), "103"),
])
async def test_limit_orders_on_a_later_bar(side: Side, limit: str, bar: tuple[str, ...],
                                           want: str | None) -> None:
    r = Rig(slippage_bps=D(50))  # never applied to limit fills
    r.bar(_bar(0, "100", "100", "96", "100"))  # bar 0 reaches every limit: too early
    await r.send(_intent("l", side, OrderType.LIMIT, limit=limit))
    r.bar(_bar(1, *bar))
    assert [p for p, _, _ in r.fills()] == ([D(want)] if want else [])


@pytest.mark.parametrize(("side", "stop", "bar", "want"), [
    (Side.BUY, "102", ("100", "103", "99", "101"), "102"),
    (Side.BUY, "102", ("104", "105", "103", "104"), "104"),   # gap through the stop
    (Side.SELL, "98", ("100", "101", "97", "99"), "98"),
    (Side.SELL, "98", ("96", "97", "95", "96"), "96"),
    (Side.SELL, "98", ("100", "101", "98.5", "99"), None),
])
async def test_stop_orders_on_a_later_bar(side: Side, stop: str, bar: tuple[str, ...],
                                          want: str | None) -> None:
    r = Rig()
    r.bar(_bar(0, "100", "101", "99", "100"))
    await r.send(_intent("s", side, OrderType.STOP, stop=stop))
    r.bar(_bar(1, *bar))
    assert [p for p, _, _ in r.fills()] == ([D(want)] if want else [])


async def test_ticks_keep_last_price_semantics_after_bars() -> None:
    r = Rig()
    r.bar(_bar(0, "100", "101", "99", "100"))
    r.broker.on_price("AAPL", D("100.25"), H + 5)
    await r.send(_intent("m"))
    assert [p for p, _, _ in r.fills()] == [D("100.25")]


class _BuyOnce(Strategy):
    def on_bar(self, bar: Bar) -> None:
        if not self.position.qty:
            self.target_position(5)


async def test_backtest_stamps_next_open_fills_at_the_bar_open(tmp_path: Path) -> None:
    risk = parse_risk_config({"global": {"duplicate_window_s": 0.0, "order_spike_factor": 0.0},
                              "accounts": {"a": {"equity": 1e9}}, "strategies": {"b": {}},
                              "symbols": {"AAPL": {}}})
    bars = [_bar(i, str(100 + i), str(101 + i), str(99 + i), str(100 + i)) for i in range(4)]
    bot = BacktestBot(strategy=_BuyOnce, params=_BuyOnce.Params(),
                      spec=BotSpec(name="b", account="a", venue="paper", symbols=("AAPL",)))
    async with await EventStore.open(tmp_path / "f.db", node="t") as store:
        res = await run_backtest([bot], bars, store=store, risk=risk,
                                 accounts={"a": {"cash": D(1000)}})
    (fill,) = res.fills
    assert (fill.price, fill.ts_event, fill.qty) == (D(101), H, 5)
    assert res.final_equity == D(1000) + 5 * (D(103) - D(101))
    assert res.curve.exposed == [False, True, True, True]
    assert res.curve.equity[-1] == float(res.final_equity)
