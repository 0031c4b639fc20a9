"""The order path end to end on a real SQLite store and the paper broker: risk check →
durable intent → broker; denials and broker errors as events; venue updates; kill switch
levels with cancels and reduce-only flatten; the kill file; operator resume."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from qtd.brokers.base import SubmitToken
from qtd.brokers.paper import PaperBroker
from qtd.clock import SimClock
from qtd.control import KillCommand
from qtd.errors import ConfigError, TemporaryError
from qtd.events import (
    BrokerError,
    Fill,
    KillSwitch,
    OrderCancelRequested,
    OrderDenied,
    OrderIntent,
    OrderType,
    RiskBreach,
    Scope,
    Severity,
    Side,
    TradingState,
    TradingStateChanged,
)
from qtd.execution import OrderRouter
from qtd.orders import ClientOrderIds, OrderRequest
from qtd.projections import Projections
from qtd.risk import RiskEngine, parse_risk_config
from qtd.risk.kill_file import KillFileWatcher, write_kill_file
from qtd.store import EventStore

T0 = 1_700_000_000_000_000_000
CFG: dict[str, Any] = {
    "global": {"duplicate_window_s": 0.0, "order_spike_factor": 0.0, "max_data_age_s": 60.0},
    "accounts": {"acct1": {"equity": 100_000.0, "max_daily_loss": 2_000.0},
                 "acct2": {"equity": 100_000.0}},
    "strategies": {"bot1": {"max_order_qty": 100.0}, "bot2": {}},
    "symbols": {"AAPL": {}, "MSFT": {}},
}


class RecordingPaperBroker(PaperBroker):
    """The paper broker, also recording what the store held when each order arrived."""

    def __init__(self, store: EventStore, **kw: Any) -> None:
        super().__init__(**kw)
        self.store = store
        self.seen: dict[str, tuple[int, list[Any]]] = {}

    async def submit(self, intent: OrderIntent, token: SubmitToken) -> None:
        stored = await self.store.query(client_order_id=intent.client_order_id,
                                        kind="OrderIntent")
        self.seen[intent.client_order_id] = (self.store.last_seq, stored)
        await super().submit(intent, token)


class FailingBroker(PaperBroker):
    async def submit(self, intent: OrderIntent, token: SubmitToken) -> None:
        raise TemporaryError("venue timeout")


class Rig:
    def __init__(self, store: EventStore, failing: bool = False, cfg: dict | None = None) -> None:
        self.store, self.clock, self.proj = store, SimClock(T0), Projections()
        self.engine = RiskEngine(parse_risk_config(cfg or CFG), self.proj, self.clock, store.node)
        self.brokers: dict[str, PaperBroker] = {
            a: (FailingBroker(account=a, node=store.node, clock=self.clock) if failing else
                RecordingPaperBroker(store, account=a, node=store.node, clock=self.clock))
            for a in ("acct1", "acct2")
        }
        self.router = OrderRouter(store=store, clock=self.clock, risk=self.engine,
                                  cids=ClientOrderIds(store), brokers=self.brokers,
                                  projections=self.proj)

    async def price(self, symbol: str, price: str) -> None:
        for b in self.brokers.values():
            b.on_price(symbol, Decimal(price), self.clock.now_ns())
        await self.router.on_market_data(symbol, Decimal(price), self.clock.now_ns())
        await self.pump()

    async def pump(self) -> None:
        for b in self.brokers.values():
            for ev in b.pending_reports():
                await self.router.on_venue_event(ev)

    async def submit(self, side: Side = Side.BUY, qty: str = "10", **kw: Any) -> Any:
        self.clock.advance(1_000_000)
        limit = kw.pop("limit", None)
        out = await self.router.submit(OrderRequest(
            bot=kw.pop("bot", "bot1"), account=kw.pop("account", "acct1"), venue="paper",
            symbol=kw.pop("symbol", "AAPL"), side=side, qty=Decimal(qty),
            order_type=OrderType.LIMIT if limit else OrderType.MARKET,
            limit_price=Decimal(limit) if limit else None, **kw,
        ))
        await self.pump()
        return out

    async def kinds(self) -> list[str]:
        return [type(e).__name__ for e in await self.store.query()]


@pytest.fixture
async def rig(store: EventStore) -> Rig:
    r = Rig(store)
    await r.price("AAPL", "100")
    await r.price("MSFT", "200")
    return r


async def test_intent_is_stored_before_the_broker_sees_the_order(rig: Rig) -> None:
    intent = await rig.submit(qty="10")
    assert isinstance(intent, OrderIntent)
    broker = rig.brokers["acct1"]
    assert isinstance(broker, RecordingPaperBroker)
    last_seq, stored = broker.seen[intent.client_order_id]
    assert [e.seq for e in stored] == [intent.seq] and intent.seq <= last_seq
    assert await rig.kinds() == ["OrderIntent", "OrderSubmitted", "OrderAccepted", "Fill"]
    pos = rig.proj.position("bot1", "acct1", "AAPL")
    assert pos is not None and pos.qty == 10
    assert intent.client_order_id.startswith("node-a.bot1.")
    again = await rig.submit(qty="10")
    assert again.cid_counter == intent.cid_counter + 1  # deterministic per-bot counter


async def test_denial_is_stored_as_events_and_no_broker_sees_it(rig: Rig) -> None:
    out = await rig.submit(qty="101")
    assert isinstance(out, OrderDenied) and out.check == "max_order_qty"
    events = await rig.store.query()
    assert [type(e).__name__ for e in events] == ["OrderDenied", "RiskBreach"]
    breach = events[1]
    assert isinstance(breach, RiskBreach)
    assert (breach.scope, breach.scope_key, breach.limit, breach.value, breach.unit) == (
        Scope.STRATEGY, "bot1", 100.0, 101.0, "units")
    assert breach.severity is Severity.P4 and breach.action == "deny"
    assert rig.brokers["acct1"].submitted == []


async def test_order_for_an_account_without_broker_is_denied(store: EventStore) -> None:
    r = Rig(store, cfg={**CFG, "accounts": {**CFG["accounts"], "acct3": {"equity": 1.0e5}}})
    await r.price("AAPL", "100")
    out = await r.submit(account="acct3")
    assert isinstance(out, OrderDenied) and out.check == "unknown_account"


async def test_broker_exception_is_recorded_and_the_intent_kept(store: EventStore) -> None:
    r = Rig(store, failing=True)
    await r.router.on_market_data("AAPL", Decimal(100), r.clock.now_ns())
    out = await r.submit(qty="5")
    assert isinstance(out, OrderIntent)
    events = await store.query()
    assert [type(e).__name__ for e in events] == ["OrderIntent", "BrokerError"]
    err = events[1]
    assert isinstance(err, BrokerError)
    assert (err.operation, err.error_type, err.client_order_id) == (
        "submit", "TemporaryError", out.client_order_id)
    assert out.client_order_id in r.engine.open  # exposure stays reserved until reconciled
    for _ in range(10):
        await r.submit(qty="5")
    kinds = [type(e).__name__ for e in await store.query()]
    assert "RiskBreach" in kinds  # the broker error-rate breaker tripped
    assert r.engine.states.get(Scope.ACCOUNT, "acct1") is TradingState.REDUCING


async def test_duplicate_venue_events_are_dropped(rig: Rig) -> None:
    intent = await rig.submit(qty="10", limit="99")
    fill = Fill(node="node-a", bot="bot1", ts_event=T0 + 5, ts_init=T0 + 5,
                client_order_id=intent.client_order_id, trade_id="X1", account="acct1",
                venue="paper", symbol="AAPL", side=Side.BUY, qty=Decimal(4),
                price=Decimal(99))
    assert await rig.router.on_venue_event(fill) is not None
    n = await rig.store.count()
    assert await rig.router.on_venue_event(fill) is None
    assert await rig.store.count() == n
    pos = rig.proj.position("bot1", "acct1", "AAPL")
    assert pos is not None and pos.qty == 4


async def test_risk_sees_a_fill_as_soon_as_the_positions_do(rig: Rig) -> None:
    """No loop turn shows a fill in the positions but not in the risk engine's exposure: a
    check for another order in that turn (the fill's store append is in flight) would
    otherwise size against a stale exposure."""
    intent = await rig.submit(qty="10", limit="99")
    fill = Fill(node="node-a", bot="bot1", ts_event=T0 + 5, ts_init=T0 + 5,
                client_order_id=intent.client_order_id, trade_id="X1", account="acct1",
                venue="paper", symbol="AAPL", side=Side.BUY, qty=Decimal(4),
                price=Decimal(99))
    task = asyncio.create_task(rig.router.on_venue_event(fill))
    seen = []
    while not task.done():
        pos = rig.proj.position("bot1", "acct1", "AAPL")
        seen.append((pos.qty if pos is not None else Decimal(0),
                     rig.engine.exposures_of("bot1", "acct1", "AAPL").qty))
        await asyncio.sleep(0)
    await task
    assert [s for s in seen if s[0] != s[1]] == []
    assert seen[-1] == (Decimal(4), Decimal(4))


async def test_consume_feeds_the_report_stream(rig: Rig) -> None:
    task = asyncio.create_task(rig.router.consume(rig.brokers["acct2"]))
    await rig.router.submit(OrderRequest(bot="bot2", account="acct2", venue="paper",
                                         symbol="MSFT", side=Side.SELL, qty=Decimal(3)))
    for _ in range(200):
        await asyncio.sleep(0.01)
        pos = rig.proj.position("bot2", "acct2", "MSFT")
        if pos is not None:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pos is not None and pos.qty == -3


# --- kill switch ---------------------------------------------------------------------------

BOOK = [("bot1", "acct1", "AAPL"), ("bot1", "acct1", "MSFT"), ("bot2", "acct2", "AAPL"),
        ("bot2", "acct1", "MSFT")]


async def _rest_orders(rig: Rig) -> dict[tuple[str, str, str], str]:
    out = {}
    for bot, acct, sym in BOOK:
        intent = await rig.submit(qty="1", bot=bot, account=acct, symbol=sym,
                                  limit="99" if sym == "AAPL" else "199")
        assert isinstance(intent, OrderIntent), intent
        out[(bot, acct, sym)] = intent.client_order_id
    return out


@pytest.mark.parametrize(("level", "scope", "key", "hit"), [
    ("L1", Scope.GLOBAL, "", {0, 1, 2, 3}),
    ("L2", Scope.ACCOUNT, "acct1", {0, 1, 3}),
    ("L3", Scope.STRATEGY, "bot2", {2, 3}),
    ("L4", Scope.SYMBOL, "MSFT", {1, 3}),
])
async def test_kill_levels_cancel_only_their_scopes_open_orders(
    rig: Rig, level: str, scope: Scope, key: str, hit: set[int]
) -> None:
    cids = await _rest_orders(rig)
    expected = {cids[BOOK[i]] for i in hit}
    report = await rig.router.kill(KillCommand(scope=scope, key=key, reason=f"{level} test",
                                               operator="alice"))
    await rig.pump()
    assert set(report.canceled) == expected
    sent = {c for b in rig.brokers.values() for c in b.cancels}
    assert sent == expected
    events = await rig.store.query()
    assert {e.client_order_id for e in events if isinstance(e, OrderCancelRequested)} == expected
    kill = [e for e in events if isinstance(e, KillSwitch)]
    assert [(k.scope, k.scope_key, k.operator) for k in kill] == [(scope, key, "alice")]
    change = [e for e in events if isinstance(e, TradingStateChanged)]
    assert [(c.scope, c.new) for c in change] == [(scope, TradingState.HALTED)]
    page = [e for e in events if isinstance(e, RiskBreach)]
    assert [(b.check, b.severity) for b in page] == [("kill_switch", Severity.P1)]
    assert level in page[0].message
    for i, (bot, acct, sym) in enumerate(BOOK):
        rec = rig.proj.orders.get(cids[(bot, acct, sym)])
        assert rec is not None and rec.state.is_terminal == (i in hit)
        out = await rig.submit(qty="1", bot=bot, account=acct, symbol=sym)
        assert isinstance(out, OrderDenied) == (i in hit), (i, out)


async def test_kill_flatten_uses_reduce_only_orders_through_the_engine(rig: Rig) -> None:
    await rig.submit(Side.BUY, "10", bot="bot1", symbol="AAPL")
    await rig.submit(Side.SELL, "5", bot="bot1", symbol="MSFT")
    await rig.submit(Side.BUY, "7", bot="bot2", account="acct2", symbol="AAPL")
    resting = await rig.submit(Side.SELL, "3", bot="bot1", symbol="AAPL", limit="101")
    report = await rig.router.kill(KillCommand(scope=Scope.STRATEGY, key="bot1",
                                               reason="runaway", flatten=True))
    await rig.pump()
    assert report.canceled == [resting.client_order_id]
    flat = [o for o in report.flatten if isinstance(o, OrderIntent)]
    assert len(flat) == len(report.flatten) == 2
    assert all(o.reduce_only and o.order_type is OrderType.MARKET for o in flat)
    assert {(o.symbol, o.side, o.qty) for o in flat} == {
        ("AAPL", Side.SELL, Decimal(10)), ("MSFT", Side.BUY, Decimal(5))}
    for sym in ("AAPL", "MSFT"):
        p = rig.proj.position("bot1", "acct1", sym)
        assert p is not None and p.qty == 0
    other = rig.proj.position("bot2", "acct2", "AAPL")
    assert other is not None and other.qty == 7  # other scope untouched
    out = await rig.submit(Side.BUY, "1", bot="bot1")
    assert isinstance(out, OrderDenied) and out.check == "trading_state"


async def test_kill_file_halts_within_one_poll(rig: Rig, tmp_path: Path) -> None:
    cids = await _rest_orders(rig)
    path = tmp_path / "qtd.kill"
    polls: list[float] = []

    async def sleeper(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) >= 2:
            raise asyncio.CancelledError

    watcher = KillFileWatcher(rig.router.kill, path, sleep=sleeper)
    write_kill_file(path, scope=Scope.ACCOUNT, key="acct2", reason="broker login lost")
    with pytest.raises(asyncio.CancelledError):
        await watcher.run()
    assert polls == [0.25, 0.25] and len(watcher.fired) == 1
    assert rig.engine.states.get(Scope.ACCOUNT, "acct2") is TradingState.HALTED
    await rig.pump()
    rec = rig.proj.orders.get(cids[BOOK[2]])
    assert rec is not None and rec.state.is_terminal
    kill = [e for e in await rig.store.query(kind="KillSwitch")]
    assert isinstance(kill[0], KillSwitch) and kill[0].source == "kill_file"


async def test_no_order_passes_risk_once_the_kill_is_in_force(rig: Rig) -> None:
    """The in-force hook (the agent's first kill ack) runs with the scope HALTED and before
    any cancel; from then on a new order is denied, and one approved earlier whose intent is
    still being stored never reaches the broker (last look)."""
    resting = await rig.submit(qty="1", limit="99")
    early = asyncio.create_task(rig.submit(qty="5"))
    while len(rig.engine.open) < 2:  # approved and reserved; the intent append is in flight
        await asyncio.sleep(0)
    seen: list[tuple[TradingState, int]] = []
    late: list[asyncio.Task[Any]] = []

    async def in_force() -> None:
        seen.append((rig.engine.states.get(Scope.ACCOUNT, "acct1"),
                     len(rig.brokers["acct1"].cancels)))
        late.append(asyncio.create_task(rig.submit(qty="1", symbol="MSFT")))

    report = await rig.router.kill(KillCommand(scope=Scope.ACCOUNT, key="acct1",
                                               reason="drill"), in_force)
    assert seen == [(TradingState.HALTED, 0)] and report.canceled == [resting.client_order_id]
    denied, stopped = await late[0], await early
    assert isinstance(denied, OrderDenied) and denied.check == "trading_state"
    assert isinstance(stopped, OrderIntent)
    assert [i.client_order_id for i in rig.brokers["acct1"].submitted] == [
        resting.client_order_id]
    assert "OrderSubmitted" not in [type(e).__name__ for e in await rig.store.query(
        client_order_id=stopped.client_order_id)]


async def test_the_kill_is_stored_after_its_cancels_and_the_before_store_hook(
        rig: Rig) -> None:
    """The agent's pause between a kill's cancels and its store (``before_store``) runs
    with every cancel already sent and nothing of the kill stored yet; the kill is stored
    once it returns."""
    resting = await rig.submit(qty="1", limit="99")
    seen: list[tuple[int, list[str]]] = []

    async def kill_stored() -> list[str]:
        return [type(e).__name__ for e in await rig.store.query(
            kind=["KillSwitch", "TradingStateChanged"])]

    async def before_store() -> None:
        seen.append((len(rig.brokers["acct1"].cancels), await kill_stored()))

    report = await rig.router.kill(KillCommand(scope=Scope.ACCOUNT, key="acct1",
                                               reason="drill"), before_store=before_store)
    assert seen == [(1, [])] and report.canceled == [resting.client_order_id]
    assert await kill_stored() == ["KillSwitch", "TradingStateChanged"]


async def test_resume_after_kill_needs_an_operator(rig: Rig) -> None:
    await rig.router.kill(KillCommand(scope=Scope.GLOBAL, reason="drill"))
    assert isinstance(await rig.submit(), OrderDenied)
    with pytest.raises(ConfigError):
        await rig.router.resume(Scope.GLOBAL, "", operator="", reason="done")
    change = await rig.router.resume(Scope.GLOBAL, "", operator="carol", reason="drill over")
    assert change is not None and change.operator == "carol"
    stored = await rig.store.query(kind="TradingStateChanged")
    assert [(c.new, c.operator) for c in stored] == [  # type: ignore[union-attr]
        (TradingState.HALTED, ""), (TradingState.ACTIVE, "carol")]
    assert isinstance(await rig.submit(), OrderIntent)


async def test_breaker_trips_are_stored(rig: Rig) -> None:
    await rig.submit(Side.BUY, "100", bot="bot1", symbol="AAPL")
    rig.clock.advance(1_000_000)
    await rig.price("AAPL", "79")
    events = await rig.store.query(kind=["RiskBreach", "TradingStateChanged"])
    assert [(type(e).__name__, e.scope) for e in events] == [  # type: ignore[union-attr]
        ("RiskBreach", Scope.ACCOUNT), ("TradingStateChanged", Scope.ACCOUNT)]
    assert events[0].check == "daily_loss"  # type: ignore[union-attr]


async def test_kill_during_intent_write_stops_the_order_before_the_broker(rig: Rig) -> None:
    task = asyncio.create_task(rig.submit(qty="5"))
    while not rig.engine.open:  # approved and reserved; the intent append is in flight
        await asyncio.sleep(0)
    cids = rig.engine.halt(Scope.GLOBAL, "", "kill while storing")
    out = await task
    assert isinstance(out, OrderIntent) and cids == [out.client_order_id]
    assert rig.brokers["acct1"].submitted == []
    kinds = await rig.kinds()
    assert kinds[:2] == ["OrderIntent", "OrderRejected"] and "OrderSubmitted" not in kinds
    rec = rig.proj.orders.get(out.client_order_id)
    assert rec is not None and rec.state.is_terminal and not rig.engine.open
