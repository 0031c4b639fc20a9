"""Reconciliation on a real SQLite store with the paper broker."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from qtd.brokers.paper import PaperBroker
from qtd.clock import SimClock
from qtd.events import (
    OrderCanceled,
    OrderIntent,
    PositionSnapshot,
    Reconciliation,
    RiskBreach,
    Scope,
    Severity,
    TradingState,
)
from qtd.execution import OrderRouter
from qtd.orders import ClientOrderIds
from qtd.projections import Projections
from qtd.reconcile import REASON_NO_SUCH_ORDER, reconcile_account, restore_paper_broker
from qtd.risk import RiskEngine, parse_risk_config
from qtd.store import EventStore
from tests.factories import accepted, fill, intent, submitted

CFG = {"accounts": {"acct1": {"equity": 1e6}}, "strategy_defaults": {},
       "symbols": {"AAPL": {}}}


class ForgetfulVenue:
    """A real venue's view (not the in-process paper broker): lists no open orders and
    the given positions."""

    venue = "venue"

    def __init__(self, positions: dict[str, Decimal], account: str) -> None:
        self.account, self._pos = account, positions

    async def open_orders(self) -> list[OrderIntent]:
        return []

    async def positions(self) -> list[PositionSnapshot]:
        return [PositionSnapshot(node="v", ts_event=0, ts_init=0, account=self.account,
                                 symbol=s, qty=q, avg_price=Decimal(0), source="broker")
                for s, q in self._pos.items()]


async def _rig(store: EventStore, broker: Any) -> OrderRouter:
    for ev in (intent("c1", counter=1), submitted("c1"),  # sent, never acked
               intent("c2", counter=2), submitted("c2"), accepted("c2"),
               intent("c3", counter=3), accepted("c3"),
               fill("c3", "t1", qty="10", price="50")):
        await store.append(ev)
    proj = Projections()
    await proj.rebuild(store.replay_batches())
    clock = SimClock(10**18)
    risk = RiskEngine(parse_risk_config(CFG), proj, clock, store.node)
    return OrderRouter(store=store, clock=clock, risk=risk, cids=ClientOrderIds(store),
                       brokers={"acct1": broker}, projections=proj)


async def test_paper_restart_settles_every_order_the_venue_forgot(store: EventStore) -> None:
    clock = SimClock(10**18)
    broker = PaperBroker(account="acct1", node=store.node, clock=clock)
    router = await _rig(store, broker)
    restore_paper_broker(broker, router.proj, Decimal(1000))
    assert broker.holdings == {"AAPL": Decimal(10)} and broker.cash == Decimal(500)
    rec = await reconcile_account(router, broker, clock)
    assert rec.ok and sorted(rec.resolved) == ["c1", "c2"] and rec.open_in_store == 2
    canceled = await store.query(kind="OrderCanceled")
    assert {c.client_order_id for c in canceled} == {"c1", "c2"}
    assert all(isinstance(c, OrderCanceled) and c.reason == REASON_NO_SUCH_ORDER
               for c in canceled)
    assert not any(router.proj.orders.open_orders())
    stored = await store.query(kind="Reconciliation")
    assert stored == [rec] and rec.seq > max(c.seq for c in canceled)


async def test_real_venue_unexplained_state_makes_the_account_reducing(
    store: EventStore
) -> None:
    clock = SimClock(10**18)
    venue = ForgetfulVenue({"AAPL": Decimal(7)}, account="acct1")
    router = await _rig(store, venue)
    rec = await reconcile_account(router, venue, clock)  # type: ignore[arg-type]
    assert isinstance(rec, Reconciliation) and not rec.ok
    assert rec.resolved == ["c1"]            # never acked: cannot be working
    assert rec.unresolved == ["c2"]          # acked, now unknown: fate unknown, stays open
    assert rec.position_mismatches == ["AAPL store=10 broker=7"]
    breach = (await store.query(kind="RiskBreach"))[0]
    assert isinstance(breach, RiskBreach) and breach.severity is Severity.P2
    assert breach.scope is Scope.ACCOUNT and breach.check == "reconcile"
    assert router.risk.states.get(Scope.ACCOUNT, "acct1") is TradingState.REDUCING
    changes = await store.query(kind="TradingStateChanged")
    assert len(changes) == 1 and changes[0].new is TradingState.REDUCING  # type: ignore[union-attr]
