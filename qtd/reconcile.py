"""Reconciliation: before any bot trades, compare what the store says with what the broker says.

For one account (:func:`reconcile_account`):

* **Open orders in the store the venue does not list, or lists but never acknowledged to
  us.** On a real venue each is looked up by its client_order_id (``get_order``): this
  resolves intents whose submit outcome was unknown. Fills of those orders in the venue's
  trade history (``fills_since``) that the store lacks are imported (stamped with the
  order's bot; duplicates by trade id dropped), then the venue's status is applied (ack,
  cancel, expiry, reject). An order is ``resolved`` when the venue's status is known and, if
  final, its filled quantity matches the store's; otherwise (a status qtd does not know,
  fills still missing, no answer) it stays open, listed as ``unresolved``. An order the
  venue says it does not know, an intent that never got an ack (and no fill), and, on the
  in-process paper broker (which forgets everything on restart), every such order, are
  settled as :class:`~qtd.events.OrderCanceled` with reason ``"reconcile: venue has no such
  order"``.
* **Open orders at the venue the store does not know** (``unknown_at_venue``): orders qtd
  never sent on this account.
* **Positions**: the store's net quantity per symbol (all bots of the account) against the
  broker's.

Every run records one :class:`~qtd.events.Reconciliation` event. Anything unexplained
(unresolved or unknown orders, a position mismatch) moves the account to REDUCING and records
a P2 :class:`~qtd.events.RiskBreach`: an operator must look before it trades fully again.

After start-up, :class:`Reconciler` reconciles every ``interval_s`` and after every
reconnect of the broker's stream, and applies the **auto-flatten policy**: after a
connection outage longer than ``flatten_after_s`` it flattens the account through the venue
once it is reachable again (:meth:`Reconciler.flatten`, also the agent's hook).

The in-process paper broker keeps its state in memory; :func:`restore_paper_broker` rebuilds
its holdings and cash from the store's fills (a paper venue's truth *is* our fills) before
reconciliation, so a restarted paper account reconciles clean.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from decimal import Decimal
from typing import Annotated

import msgspec
from msgspec import Meta

from qtd.brokers.base import Broker, Link, OrderStatusReport
from qtd.brokers.paper import PaperBroker
from qtd.brokers.retry import report_events
from qtd.clock import Clock
from qtd.control import KillCommand
from qtd.events import (
    Event,
    OrderCanceled,
    Reconciliation,
    RiskBreach,
    Scope,
    Severity,
    TradingState,
)
from qtd.execution import KillReport, OrderRouter
from qtd.orders import OrderRecord
from qtd.projections import Projections

log = logging.getLogger("qtd.reconcile")
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


async def reconcile_account(router: OrderRouter, broker: Broker, clock: Clock, *,
                            trigger: str = "start") -> Reconciliation:
    """Reconcile one account (module docstring) and record the outcome.

    Args:
        trigger: why it runs (``"start"``, ``"reconnect"``, ``"periodic"``), stored.

    Returns:
        The stored :class:`~qtd.events.Reconciliation` event.

    Raises:
        StoreError: the store refused a write.
        Exception: whatever the broker's ``open_orders``/``positions`` raise (the caller
            isolates the account).
    """
    account, ephemeral = broker.account, isinstance(broker, PaperBroker)
    store_open = list(router.proj.orders.open_orders(account=account))
    track = getattr(broker, "track", None)
    if track is not None and not ephemeral:
        for rec in store_open:  # the adapter learns their bot and symbol (after a restart)
            track(rec.intent)
    venue_open = {i.client_order_id for i in await broker.open_orders()}
    missing = [r for r in store_open if r.cid not in venue_open]
    unacked = [r for r in store_open if r.cid in venue_open and not r.accepted]
    # Orders the venue still lists as open may have been partly filled while we were away:
    # their fills are imported from the venue's trade history too (no per-order lookup).
    resting = [r for r in store_open if r.cid in venue_open and r.accepted]
    asked: dict[str, OrderStatusReport | None] = {}
    imported = 0
    if (missing or unacked or resting) and not ephemeral and hasattr(broker, "get_order"):
        asked, imported = await _ask_venue(router, broker, clock, missing + unacked, resting)
    resolved: list[str] = [r.cid for r in unacked if asked.get(r.cid) is not None]
    unresolved: list[str] = []
    for rec in missing:
        if rec.cid in asked and asked[rec.cid] is not None:
            report = asked[rec.cid]
            assert report is not None
            settled = report.state is not None and (
                not report.state.is_terminal or report.filled_qty == rec.filled_qty)
            (resolved if settled else unresolved).append(rec.cid)
            continue
        venue_says_none = rec.cid in asked  # looked up: "no such order"
        if ephemeral or venue_says_none or (not rec.accepted and not rec.filled_qty):
            now = clock.now_ns()
            await router.on_venue_event(OrderCanceled(
                node=router.node, bot=rec.bot, ts_event=now, ts_init=now,
                client_order_id=rec.cid, reason=REASON_NO_SUCH_ORDER))
            resolved.append(rec.cid)
        else:
            unresolved.append(rec.cid)
    venue_pos = {p.symbol: p.qty for p in await broker.positions() if p.qty}
    open_cids = {r.cid for r in store_open}
    unknown = sorted(venue_open - open_cids)
    mismatches = _position_mismatches(store_positions(router.proj, account), venue_pos)
    return await _record(router, clock, Reconciliation(
        node=router.node, ts_event=clock.now_ns(), ts_init=clock.now_ns(), account=account,
        open_in_store=len(store_open), open_at_venue=len(venue_open), resolved=resolved,
        unresolved=unresolved, unknown_at_venue=unknown, position_mismatches=mismatches,
        ok=not (unresolved or unknown or mismatches), trigger=trigger,
        fills_imported=imported))


async def _ask_venue(router: OrderRouter, broker: Broker, clock: Clock,
                     missing: list[OrderRecord], resting: Sequence[OrderRecord] = ()
                     ) -> tuple[dict[str, OrderStatusReport | None], int]:
    """Look up every order in ``missing`` (not listed as open, or never acknowledged) by its
    client_order_id; import the fills the venue's trade history has and the store lacks for
    those and for the ``resting`` orders (still open at the venue, possibly partly filled
    while the agent was down), stamped with the order's bot; then apply the venue's status
    to the looked-up ones. Returns the answers and the number of fills imported."""
    asked: dict[str, OrderStatusReport | None] = {}
    for rec in missing:
        try:
            asked[rec.cid] = await broker.get_order(rec.cid)
        except Exception as exc:  # no answer is not "no such order": stays unresolved
            log.warning("reconcile %s: cannot look up %s: %s", broker.account, rec.cid, exc)
    by_cid = {r.cid: r for r in missing if asked.get(r.cid) is not None}
    owners = {**by_cid, **{r.cid: r for r in resting}}
    imported = 0
    if owners:
        since = min(r.intent.ts_event for r in owners.values())
        for f in await broker.fills_since(since):
            owner = owners.get(f.client_order_id)
            if owner is None or f.trade_id in owner.trade_ids:
                continue
            fixed = msgspec.structs.replace(f, bot=owner.bot)
            if await router.on_venue_event(fixed) is not None:
                imported += 1
    for cid, report in asked.items():
        owner = by_cid.get(cid)
        if report is None or owner is None:
            continue
        for ev in report_events(report, node=router.node, bot=owner.bot,
                                ts_init=clock.now_ns()):
            await router.on_venue_event(ev)
    return asked, imported


class ReconcilePolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """When an account is reconciled besides start-up, and the auto-flatten policy.

    Attributes:
        interval_s: reconcile every this many seconds (default 5 minutes).
        flatten_after_s: if the broker connection was lost for longer than this (seconds),
            flatten the account through the venue once it is reachable again (an ACCOUNT
            kill switch with ``flatten``: open orders canceled, positions closed with
            reduce-only market orders, the account left HALTED for an operator to resume).
            ``None`` (default): never flatten automatically.
    """

    interval_s: Annotated[float, Meta(gt=0)] = 300.0
    flatten_after_s: Annotated[float, Meta(ge=0)] | None = None


class Reconciler:
    """Keeps one account reconciled after start-up: every ``policy.interval_s`` and after
    every reconnect of the broker's stream (its :class:`~qtd.brokers.base.Link`), and
    applies the auto-flatten policy after a long outage. Run :meth:`run` as a task (the
    agent does the start-up reconciliation itself, before any bot trades).

    Args:
        router: the order router (the only way to the broker).
        broker: the account's adapter; its ``link`` attribute (if any) signals reconnects.
        clock: UTC ns time source.
        policy: interval and auto-flatten setting.

    Attributes:
        runs: the Reconciliation events recorded by this object, oldest first.
        flattened: kill reports of auto-flattens, oldest first.
    """

    def __init__(self, router: OrderRouter, broker: Broker, clock: Clock,
                 policy: ReconcilePolicy | None = None) -> None:
        self.router, self.broker, self.clock = router, broker, clock
        self.policy = policy or ReconcilePolicy()
        self.runs: list[Reconciliation] = []
        self.flattened: list[KillReport] = []
        self._wake = asyncio.Event()
        self._outage = 0.0
        link = getattr(broker, "link", None)
        if isinstance(link, Link):
            link.on_up(self._on_up)

    def _on_up(self, outage_s: float) -> None:
        link = getattr(self.broker, "link", None)
        if isinstance(link, Link) and link.ups <= 1:
            return  # the first connection: start-up reconciliation covers it
        self._outage = max(self._outage, outage_s)
        self._wake.set()

    async def run(self) -> None:
        """Reconcile on every reconnect and every ``interval_s`` until cancelled; a failed
        run is logged and retried at the next trigger (never raises)."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.policy.interval_s)
                trigger = "reconnect"
            except TimeoutError:
                trigger = "periodic"
            self._wake.clear()
            outage, self._outage = self._outage, 0.0
            await self.once(trigger, outage)

    async def once(self, trigger: str, outage_s: float = 0.0) -> Reconciliation | None:
        """One reconciliation, then the auto-flatten policy for an ``outage_s`` (seconds)
        outage. Returns the stored event, or None if the broker could not be asked."""
        try:
            rec = await reconcile_account(self.router, self.broker, self.clock,
                                          trigger=trigger)
        except Exception as exc:
            log.error("reconcile %s (%s) failed: %s: %s", self.broker.account, trigger,
                      type(exc).__name__, exc)
            return None
        self.runs.append(rec)
        after = self.policy.flatten_after_s
        if after is not None and outage_s > after:
            await self.flatten(f"auto-flatten: broker connection lost for {outage_s:.1f} s "
                               f"(policy: flatten after {after:g} s)")
        return rec

    async def flatten(self, reason: str) -> KillReport:
        """Cancel the account's open orders and close its positions through the venue
        (an ACCOUNT kill switch with flatten, source ``"auto_flatten"``); the account stays
        HALTED until an operator resumes it. The agent may call this too (its hook)."""
        log.warning("account %s: %s", self.broker.account, reason)
        report = await self.router.kill(KillCommand(
            scope=Scope.ACCOUNT, key=self.broker.account, reason=reason, flatten=True,
            operator="qtd", source="auto_flatten"))
        self.flattened.append(report)
        return report


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
