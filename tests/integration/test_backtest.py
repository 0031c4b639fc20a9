"""Backtest = the live order path + historical feed + paper broker + simulated clock."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from qtd.admit import admit_bot
from qtd.backtest import Backtest, BacktestBot, WriteBehindStore, run_backtest
from qtd.brokers.paper import PaperBroker
from qtd.clock import SimClock
from qtd.data import load_dataset
from qtd.events import Fill, OrderIntent, OrderSubmitted, TradingState
from qtd.feeds import Bar, HistoricalFeed
from qtd.projections import Projections
from qtd.risk.load import bind_profiles, load_risk_config, parse_risk_config
from qtd.runner import BotSpec
from qtd.store import EventStore
from qtd.strategy import Strategy
from qtd.workers.load import load_admitted

ROOT = Path(__file__).resolve().parents[2]


async def _bot(name: str) -> BacktestBot:
    adm = await admit_bot(ROOT / f"etc/bots/{name}.toml", smoke=False)
    assert adm.ok, adm.problems
    cls, params = load_admitted(adm.ref())
    return BacktestBot(
        strategy=cls, params=params,
        spec=BotSpec(name=name, account="paper-main", venue="paper", symbols=("GOOG",)),
    )


async def _run(tmp: Path, tag: str) -> tuple[EventStore, dict]:
    store = await EventStore.open(tmp / f"{tag}.db", node="bt")
    risk = bind_profiles(load_risk_config(ROOT / "etc/risk.toml"),
                         {"momo-goog": "momo-goog", "revert-goog": "revert-goog"})
    bots = [await _bot("momo-goog"), await _bot("revert-goog")]
    result = await run_backtest(bots, load_dataset("goog_1d"), store=store, risk=risk)
    return store, result.bots


async def test_two_bots_on_real_goog_data_trade_through_the_order_path(tmp_path: Path) -> None:
    store, bots = await _run(tmp_path, "a")
    try:
        assert bots["momo-goog"].fills > 10 and bots["revert-goog"].fills > 10
        assert all(b.state == "STOPPED" and not b.error for b in bots.values())
        events = [e async for e in store.replay()]
        first_seen: dict[str, str] = {}
        for e in events:  # intent before submit before any fill, for every order
            cid = getattr(e, "client_order_id", None)
            if cid is not None:
                first_seen.setdefault(cid, type(e).__name__)
        assert set(first_seen.values()) == {"OrderIntent"}
        intents = {e.client_order_id for e in events if isinstance(e, OrderIntent)}
        assert {e.client_order_id for e in events if isinstance(e, Fill)} <= intents
        assert sum(isinstance(e, OrderSubmitted) for e in events) == len(intents)
        rebuilt = await Projections().rebuild(store.replay_batches())
        realized = {b: sum((p.realized for p in rebuilt.positions.values() if p.bot == b), 0)
                    for b in bots}
        assert realized == {b: r.realized for b, r in bots.items()}
    finally:
        await store.close()


async def test_same_data_same_code_same_result(tmp_path: Path) -> None:
    s1, a = await _run(tmp_path, "a")
    s2, b = await _run(tmp_path, "b")
    try:
        assert a == b
        # client_order_ids differ only by the store incarnation hash: compare bot + counter
        fills1 = [(e.bot, e.client_order_id.rsplit(".", 1)[1], e.qty, e.price)
                  for e in await s1.query(kind="Fill")]
        fills2 = [(e.bot, e.client_order_id.rsplit(".", 1)[1], e.qty, e.price)
                  for e in await s2.query(kind="Fill")]
        assert fills1 == fills2 and fills1
    finally:
        await s1.close()
        await s2.close()


class _LoopsLater(Strategy):
    """Trades like a buyer, then loops forever in its 50th on_bar."""

    def on_start(self) -> None:
        self.seen = 0

    def on_bar(self, bar: Bar) -> None:
        self.seen += 1
        if self.seen == 50:
            while True:
                pass
        self.target_position(1 if self.seen % 10 < 5 else 0)


async def test_event_log_is_complete_with_write_behind_batches(tmp_path: Path) -> None:
    """Small batches force many intermediate commits: every event still lands once, in
    order, with the seq the run handed out, and the file has them all after a reopen."""
    path = tmp_path / "wb.db"
    store = await EventStore.open(path, node="bt")
    risk = bind_profiles(load_risk_config(ROOT / "etc/risk.toml"), {"momo-goog": "momo-goog"})
    res = await run_backtest([await _bot("momo-goog")], load_dataset("goog_1d"), store=store,
                             risk=risk, write_batch=7)
    assert res.bots["momo-goog"].fills > 10 and res.last_seq > 7 * 10
    assert store.last_seq == res.last_seq
    await store.close()
    ro = await EventStore.open(path, readonly=True)
    try:
        events = [e async for e in ro.replay()]
        assert [e.seq for e in events] == list(range(1, res.last_seq + 1))
        assert [e for e in events if isinstance(e, Fill)] == res.fills
        kinds = {type(e).__name__ for e in events}
        assert {"OrderIntent", "OrderSubmitted", "OrderAccepted", "Fill"} <= kinds
    finally:
        await ro.close()
    with pytest.raises(ValueError, match="write_batch=0"):
        WriteBehindStore(store, 0)


async def test_a_looping_bot_halts_alone_and_the_backtest_goes_on(tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "loop.db", node="bt")
    risk = bind_profiles(load_risk_config(ROOT / "etc/risk.toml"),
                         {"momo-goog": "momo-goog", "looper": "momo-goog"})
    looper = BacktestBot(strategy=_LoopsLater, params=_LoopsLater.Params(),
                         spec=BotSpec(name="looper", account="paper-main", venue="paper",
                                      symbols=("GOOG",)))
    try:
        res = await run_backtest([await _bot("momo-goog"), looper], load_dataset("goog_1d"),
                                 store=store, risk=risk, hook_budget_s=0.2)
        assert res.bots["looper"].state == "HALTED"
        assert res.bots["looper"].error.startswith("HookTimeout: on_bar did not return")
        assert res.bots["looper"].fills > 0  # it traded before it looped
        assert res.bots["momo-goog"].state == "STOPPED" and res.bots["momo-goog"].fills > 10
        errors = await store.query(kind="StrategyError", bot="looper")
        assert len(errors) == 1 and errors[0].hook == "on_bar"
        halted = await store.query(kind="TradingStateChanged", bot="looper")
        assert [e.new for e in halted] == [TradingState.HALTED]
        assert res.items == len(load_dataset("goog_1d"))
    finally:
        await store.close()


class _Flipper(Strategy):
    def on_start(self) -> None:
        self.seen = 0

    def on_bar(self, bar: Bar) -> None:
        self.seen += 1
        self.target_position(2 if self.seen % 7 < 4 else 0)


class _CheckedBacktest(Backtest):
    """Records the exact mark-to-market equity next to every curve point."""

    exact: list[float]

    def _mark(self, ts: int, sym: str, price: Decimal) -> None:
        super()._mark(ts, sym, price)
        self.exact.append(float(self.equity()))


async def test_equity_curve_is_the_mark_to_market_at_every_point(tmp_path: Path) -> None:
    goog: list[Bar] = load_dataset("goog_1d")[:400]  # type: ignore[assignment]
    streams = [[msgspec.structs.replace(b, symbol=s) for b in goog] for s in ("A", "B", "C")]
    store = await EventStore.open(tmp_path / "eq.db", node="bt")
    names = {f"flip-{s}": s for s in ("A", "B", "C")}
    risk = parse_risk_config({"accounts": {"acct": {"equity": 1e9}},
                              "strategies": {n: {} for n in names},
                              "symbols": {s: {} for s in names.values()}})
    clock = SimClock()
    bt = _CheckedBacktest(store=store, risk=risk, clock=clock, brokers={"acct": PaperBroker(
        account="acct", node="bt", clock=clock, cash=Decimal(10**6),
        commission_bps=Decimal(3))})
    bt.exact = []
    for name, sym in names.items():
        bt.add(BacktestBot(strategy=_Flipper, params=_Flipper.Params(),
                           spec=BotSpec(name=name, account="acct", venue="paper",
                                        symbols=(sym,))))
    try:
        res = await bt.run(HistoricalFeed(streams))
    finally:
        await store.close()
    assert all(b.fills > 20 for b in res.bots.values())
    # one point per distinct time (3 items each): the last item's exact equity
    assert len(res.curve.ts_ns) == 400 and len(bt.exact) == 1200
    # float between fills (exact Decimal re-derivation at each fill): within 1/1000 cent
    assert all(abs(a - b) < 1e-5 for a, b in zip(res.curve.equity, bt.exact[2::3], strict=True))
    assert abs(res.curve.equity[-1] - float(res.final_equity)) < 1e-5
    assert any(res.curve.exposed) and not all(res.curve.exposed)


class _HoldsFor20(Strategy):
    """Holds ``qty`` (signed) from the first bar through the 20th, flat after."""

    class Params(Strategy.Params):
        qty: float = 2.0

    def on_start(self) -> None:
        self.seen = 0

    def on_bar(self, bar: Bar) -> None:
        self.seen += 1
        self.target_position(self.params.qty if self.seen <= 20 else 0)


async def test_a_hedged_pair_of_bots_is_exposed_while_either_holds(tmp_path: Path) -> None:
    """Two bots long and short the same symbol on one account: the symbol's net quantity
    is zero, yet each position is open, so every point while they hold is exposed."""
    store = await EventStore.open(tmp_path / "hedge.db", node="bt")
    risk = parse_risk_config({"accounts": {"acct": {"equity": 1e9}},
                              "strategies": {"long": {}, "short": {}},
                              "symbols": {"GOOG": {}}})
    clock = SimClock()
    bt = _CheckedBacktest(store=store, risk=risk, clock=clock, brokers={"acct": PaperBroker(
        account="acct", node="bt", clock=clock, cash=Decimal(10**6),
        commission_bps=Decimal(3))})
    bt.exact = []
    for name, qty in (("long", 2.0), ("short", -2.0)):
        bt.add(BacktestBot(strategy=_HoldsFor20, params=_HoldsFor20.Params(qty=qty),
                           spec=BotSpec(name=name, account="acct", venue="paper",
                                        symbols=("GOOG",))))
    try:
        res = await bt.run(load_dataset("goog_1d")[:40])
    finally:
        await store.close()
    assert res.bots["long"].fills == 2 and res.bots["short"].fills == 2
    # orders of bar 1 fill at bar 2's open, those of bar 21 (flat) at bar 22's
    assert res.curve.exposed == [False] + [True] * 20 + [False] * 19
    assert all(abs(a - b) < 1e-5 for a, b in zip(res.curve.equity, bt.exact, strict=True))
