"""Reconciliation: before any bot trades, compare what the store says with what the broker says.

For one account (:func:`reconcile_account`):

* **Open orders in the store the venue does not list.** An intent that never got an ack (and
  no fill) cannot be working at the venue: it is settled as
  :class:`~qtd.events.OrderCanceled` with reason ``"reconcile: venue has no such order"``. An
  acknowledged order the venue no longer lists is settled the same way on a venue that
  forgets everything on restart (the in-process paper broker); on a real venue its fate is
  unknown (filled or canceled while we were away) and it stays open, listed as
  ``unresolved``.
* **Open orders at the venue the store does not know** (``unknown_at_venue``): orders qtd
  never sent on this account.
* **Positions**: the store's net quantity per symbol (all bots of the account) against the
  broker's.

Every run records one :class:`~qtd.events.Reconciliation` event. Anything unexplained
(unresolved or unknown orders, a position mismatch) moves the account to REDUCING and records
a P2 :class:`~qtd.events.RiskBreach`: an operator must look before it trades fully again.

The in-process paper broker keeps its state in memory; :func:`restore_paper_broker` rebuilds
its holdings and cash from the store's fills (a paper venue's truth *is* our fills) before
reconciliation, so a restarted paper account reconciles clean.
"""

from __future__ import annotations

from decimal import Decimal

from qtd.brokers.base import Broker
from qtd.brokers.paper import PaperBroker
from qtd.clock import Clock
from qtd.events import (
    Event,
    OrderCanceled,
    Reconciliation,
    RiskBreach,
    Scope,
    Severity,
    TradingState,
)
from qtd.execution import OrderRouter
from qtd.projections import Projections

REASON_NO_SUCH_ORDER = "reconcile: venue has no such order"
ZERO = Decimal(0)


def store_positions(proj: Projections, account: str) -> dict[str, Decimal]:
    """Net quantity per symbol of one account, summed over its bots (instrument units)."""
    out: dict[str, Decimal] = {}
    for p in proj.positions.values():
        if p.account == account:
            out[p.symbol] = out.get(p.symbol, ZERO) + p.qty
    return {s: q for s, q in out.items() if q}


def restore_paper_broker(broker: PaperBroker, proj: Projections, starting_cash: Decimal) -> None:
    """Rebuild a paper account's holdings and cash from the store's fills.

    Cash is ``starting_cash + Σ (realized − open cost − fees)`` over the account's positions
    (quote currency): the cash paid for what is still held plus what closed trades returned.
    """
    cash = starting_cash
    for p in proj.positions.values():
        if p.account == broker.account:
            cash += p.realized - p.cost - p.fees
    broker.cash = cash
    broker.holdings = dict(store_positions(proj, broker.account))


async def reconcile_account(router: OrderRouter, broker: Broker, clock: Clock) -> Reconciliation:
    """Reconcile one account (module docstring) and record the outcome.

    Returns:
        The stored :class:`~qtd.events.Reconciliation` event.

    Raises:
        StoreError: the store refused a write.
        Exception: whatever the broker's ``open_orders``/``positions`` raise (the caller
            isolates the account).
    """
    account, ephemeral = broker.account, isinstance(broker, PaperBroker)
    venue_open = {i.client_order_id for i in await broker.open_orders()}
    venue_pos = {p.symbol: p.qty for p in await broker.positions() if p.qty}
    store_open = list(router.proj.orders.open_orders(account=account))
    resolved, unresolved = [], []
    for rec in store_open:
        if rec.cid in venue_open:
            continue
        if ephemeral or (not rec.accepted and not rec.filled_qty):
            now = clock.now_ns()
            await router.on_venue_event(OrderCanceled(
                node=router.node, bot=rec.bot, ts_event=now, ts_init=now,
                client_order_id=rec.cid, reason=REASON_NO_SUCH_ORDER))
            resolved.append(rec.cid)
        else:
            unresolved.append(rec.cid)
    open_cids = {r.cid for r in store_open}
    unknown = sorted(venue_open - open_cids)
    mismatches = _position_mismatches(store_positions(router.proj, account), venue_pos)
    return await _record(router, clock, Reconciliation(
        node=router.node, ts_event=clock.now_ns(), ts_init=clock.now_ns(), account=account,
        open_in_store=len(store_open), open_at_venue=len(venue_open), resolved=resolved,
        unresolved=unresolved, unknown_at_venue=unknown, position_mismatches=mismatches,
        ok=not (unresolved or unknown or mismatches)))


def _position_mismatches(store: dict[str, Decimal], venue: dict[str, Decimal]) -> list[str]:
    out = []
    for sym in sorted(set(store) | set(venue)):
        s, v = store.get(sym, ZERO), venue.get(sym, ZERO)
        if s != v:
            out.append(f"{sym} store={s} broker={v}")
    return out


async def _record(router: OrderRouter, clock: Clock, rec: Reconciliation) -> Reconciliation:
    events: list[Event] = [rec]
    if not rec.ok:
        now = clock.now_ns()
        what = "; ".join(
            f"{name}: {', '.join(items)}" for name, items in (
                ("unresolved orders", rec.unresolved), ("orders unknown to qtd",
                rec.unknown_at_venue), ("position mismatches", rec.position_mismatches))
            if items)
        events.append(RiskBreach(
            node=router.node, ts_event=now, ts_init=now, check="reconcile",
            scope=Scope.ACCOUNT, scope_key=rec.account, limit=0.0,
            value=float(len(rec.unresolved) + len(rec.unknown_at_venue)
                        + len(rec.position_mismatches)),
            unit="discrepancies", severity=Severity.P2, action="reducing",
            message=f"reconcile {rec.account}: {what}; account REDUCING until an operator "
                    "resumes it"))
        change = router.risk.states.escalate(
            Scope.ACCOUNT, rec.account, TradingState.REDUCING,
            f"reconcile: {what}", now)
        if change is not None:
            events.append(change)
    stored = await router.store.append_many(events)
    first = stored[0]
    assert isinstance(first, Reconciliation)
    return first
