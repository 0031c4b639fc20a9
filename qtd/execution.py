"""The order path: the one place where order requests become venue orders.

:class:`OrderRouter.submit` runs the risk engine; a denial is stored as
:class:`~qtd.events.OrderDenied` + :class:`~qtd.events.RiskBreach` (risk says no with an
event, not an exception). An approval becomes an :class:`~qtd.events.OrderIntent` with a
deterministic client_order_id, appended durably to the event store *before* the broker
adapter sees it, then handed to the adapter with the engine-minted token and recorded as
:class:`~qtd.events.OrderSubmitted`. An adapter exception is recorded as
:class:`~qtd.events.BrokerError`; the intent stays stored (and the order open) until a venue
update or reconciliation settles it.

Market-open bursts: requests are checked one at a time in arrival order (each approval
reserves its exposure before the next check), but the intents approved in one event-loop
turn are stored in one transaction and one fsync (:class:`~qtd.store.group.GroupCommit`), so
N bots deciding on one bar wait for one fsync, not N. The broker calls then start in approval
order (so per account too) and run concurrently. The outcomes (OrderSubmitted, BrokerError,
OrderRejected) are group-committed the same way.

Venue updates come back through :meth:`OrderRouter.on_venue_event` (exact duplicates, as the
order book reports them, are dropped), are stored, and feed the projections and the engine.
An update for an order the book has retired from memory (a terminal order, see
:class:`~qtd.orders.OrderBook`) first brings the order back from the store, so a late fill is
applied exactly once and a re-sent one is still a duplicate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any

from qtd.brokers.base import Broker
from qtd.clock import Clock
from qtd.control import KillCommand
from qtd.errors import OperationalError, StoreError
from qtd.events import (
    AnyEvent,
    BrokerError,
    Event,
    OrderCancelRequested,
    OrderDenied,
    OrderIntent,
    OrderRejected,
    OrderSubmitted,
    RiskBreach,
    Scope,
    Severity,
    TradingState,
    TradingStateChanged,
)
from qtd.orders import ApplyResult, ClientOrderIds, OrderRequest
from qtd.projections import Projections
from qtd.risk.checks import Denial
from qtd.risk.engine import Denied, RiskEngine
from qtd.risk.kill_file import flatten_requests
from qtd.risk.tokens import SubmitToken
from qtd.store import EventStore
from qtd.store.group import AppendMany, Committer, GroupCommit


class KillReport:
    """What one kill-switch activation did (times are ``perf_counter_ns`` deltas, ns)."""

    __slots__ = ("canceled", "flatten", "halted_ns", "cancels_issued_ns")

    def __init__(self) -> None:
        self.canceled: list[str] = []
        self.flatten: list[OrderIntent | OrderDenied] = []
        self.halted_ns = 0
        self.cancels_issued_ns = 0


class OrderRouter:
    """The only order path (wired by constructor; see the module docstring).

    Args:
        store: the node's event store (durable appends).
        clock: UTC ns time source.
        risk: the risk engine.
        cids: client_order_id source (resumes counters from the store).
        brokers: broker adapter per account name.
        projections: shared projections (the engine reads the same instance).
        append_group: the durable batch append the order path commits intents and their
            outcomes with (default: the store's ``append_many``; an agent passes
            its store's ``append_group``, which keeps the test-only crash points).
        committer: builds, from ``append_group`` and the store's path, how those appends
            are grouped (default: :class:`GroupCommit`, one transaction per loop turn; the
            backtest passes its write-behind store, which assigns the seq at once and
            commits in batches of its own; ``benchmarks/burst.py`` passes one transaction
            per event to measure against).
    """

    def __init__(
        self, *, store: EventStore, clock: Clock, risk: RiskEngine, cids: ClientOrderIds,
        brokers: Mapping[str, Broker], projections: Projections,
        append_group: AppendMany | None = None,
        committer: Callable[[AppendMany, str], Committer[Any]] = GroupCommit,
    ) -> None:
        self.store, self.clock, self.risk, self.cids = store, clock, risk, cids
        self.brokers, self.proj = dict(brokers), projections
        self.node = store.node
        self._lock = asyncio.Lock()  # approvals one at a time, in arrival order
        group = append_group or store.append_many
        self._durable = committer(group, str(store.path))  # intents and outcomes

    # --- orders ---------------------------------------------------------------------------

    async def submit(self, request: OrderRequest) -> OrderIntent | OrderDenied:
        """Check ``request``; on approval store the intent, then send it to its broker.

        Requests are checked one at a time in arrival order; the intents approved in one
        event-loop turn are stored in one transaction (one fsync; see
        :class:`~qtd.store.group.GroupCommit`) before any of them is sent; then their broker
        calls start in approval order and run concurrently (an account's slow venue
        delays no other account's orders).

        Returns:
            The stored intent (sent, or recorded with a BrokerError) or the stored denial.

        Raises:
            StoreError: the intent could not be stored (its batch failed, and the request
                checked once more failed too); no broker saw it, nor any order of its batch.
        """
        broker = self.brokers.get(request.account)
        for last_try in (False, True):
            approved = await self._approve(request, broker)
            if isinstance(approved, list):
                return await self._record_denial(approved)
            queued, token, flatten = approved
            try:
                stored = await self._durable.durable(queued, gather=True)
                break
            except StoreError:  # nothing of the batch was stored or sent
                if last_try:
                    raise
                # Checked once more, as the one-by-one path checked the requests queued
                # behind a failed append: an agent's store fault has HALTED trading by now
                # (a recorded denial, not one halted bot per request of the burst).
        assert isinstance(stored, OrderIntent) and broker is not None
        self.proj.apply(stored)
        self.risk.on_event(stored)
        await self._send(broker, stored, token, flatten)
        return stored

    async def _approve(
        self, request: OrderRequest, broker: Broker | None
    ) -> list[Event] | tuple[Any, SubmitToken, bool]:
        """Check → reserve → queue the intent, under the approval lock (arrival order).
        Returns the denial's events, or the intent's commit ticket (the committer's), token
        and whether it is a kill-switch flatten."""
        async with self._lock:
            cid, counter = await self.cids.next(request.bot)
            now = self.clock.now_ns()
            result = (self.risk.check(request, now) if broker is not None
                      else Denied(request, _no_broker(request.account), now))
            if isinstance(result, Denied):
                return self._denial_events(result)
            intent = _intent(request, self.node, cid, counter, now)
            token = result.bind(intent)
            return self._durable.add(intent), token, result.flatten

    async def _send(self, broker: Broker, intent: OrderIntent, token: SubmitToken,
                    flatten: bool) -> None:
        """Hand a durable intent to its broker and record the outcome: OrderSubmitted,
        BrokerError, or OrderRejected when a kill switch landed while it was being stored.

        The intents of one commit resume here in approval order, and nothing is awaited
        before the broker call: the calls to one account start in approval order."""
        failed: Exception | None = None
        late = self.risk.last_look(intent, flatten)
        if late is None:
            try:
                await broker.submit(intent, token)
            except Exception as exc:
                failed = exc
        t = self.clock.now_ns()
        record: Event
        if late is not None:
            record = OrderRejected(
                node=self.node, bot=intent.bot, ts_event=t, ts_init=t,
                client_order_id=intent.client_order_id, reason=late.message,
                code="RISK_HALTED")
        elif failed is not None:
            self.risk.on_broker_result(intent.account, False)
            record = self._broker_error(intent, "submit", failed)
            self._halt_on_operational(intent, failed)
        else:
            self.risk.on_broker_result(intent.account, True)
            record = OrderSubmitted(
                node=self.node, bot=intent.bot, ts_event=t, ts_init=t,
                client_order_id=intent.client_order_id, account=intent.account,
                venue=intent.venue, arrival_price=_arrival(self.risk, intent.symbol))
        try:
            stored = await self._durable.durable(self._durable.add(record), gather=False)
        except StoreError:  # its batch failed (with intents in it): alone once more, as it
            stored = await self.store.append(record)  # was before (a faulted store keeps it)
        self.proj.apply(stored)
        self.risk.on_event(stored)
        if self.risk.has_events():  # most outcomes queue none: no _flush coroutine then
            await self._flush()

    async def cancel(self, cid: str, reason: str) -> bool:
        """Ask the order's broker to cancel it and record OrderCancelRequested.

        Returns:
            False when the order is unknown or already done (nothing sent).
        """
        return bool(await self.cancel_many([cid], reason))

    async def cancel_open(
        self, *, bot: str, account: str | None = None, symbol: str | None = None,
        reason: str,
    ) -> list[str]:
        """Cancel a bot's open orders (optionally one account / symbol): a strategy's
        ``cancel_all``. Returns the client_order_ids sent (see :meth:`cancel_many`)."""
        cids = [r.cid for r in self.proj.orders.open_orders(bot=bot, account=account,
                                                            symbol=symbol)]
        return await self.cancel_many(cids, reason) if cids else []

    async def cancel_many(self, cids: list[str], reason: str) -> list[str]:
        """Issue cancels for open orders, then record them in one durable batch.

        Cancels go to the venue first (a cancel is idempotent and only reduces risk; after a
        crash reconciliation finds the venue state), so a kill switch is not slowed by the
        store. Returns the client_order_ids sent.
        """
        sent = await self._issue_cancels(cids)
        await self._record_cancels(sent, reason)
        return [i.client_order_id for i, exc in sent if exc is None]

    async def _issue_cancels(
        self, cids: list[str]
    ) -> list[tuple[OrderIntent, BaseException | None]]:
        sent: list[tuple[OrderIntent, BaseException | None]] = []
        orders, brokers, mint = self.proj.orders.orders, self.brokers, self.risk.cancel_token
        for cid in cids:
            rec = orders.get(cid)
            broker = brokers.get(rec.account) if rec is not None else None
            if rec is None or rec.state.is_terminal or broker is None:
                continue
            try:
                await broker.cancel(cid, mint(cid))
                sent.append((rec.intent, None))
            except Exception as exc:
                sent.append((rec.intent, exc))
                self._halt_on_operational(rec.intent, exc)
        return sent

    async def _record_cancels(
        self, sent: list[tuple[OrderIntent, BaseException | None]], reason: str
    ) -> None:
        t = self.clock.now_ns()
        events: list[Event] = []
        for intent, exc in sent:
            if exc is None:
                events.append(OrderCancelRequested(
                    node=self.node, bot=intent.bot, ts_event=t, ts_init=t,
                    client_order_id=intent.client_order_id, reason=reason,
                ))
            else:
                events.append(self._broker_error(intent, "cancel", exc))
            self.risk.on_broker_result(intent.account, exc is None)
        for ev in await self.store.append_many(events):
            self.proj.apply(ev)
            self.risk.on_event(ev)
        await self._flush()

    # --- venue updates and market data ----------------------------------------------------

    async def on_venue_event(self, event: Event) -> AnyEvent | None:
        """Store a venue update (ack, reject, fill, cancel, expiry) and feed projections and
        the engine. Exact duplicates are dropped (returns None).

        An update for a retired order (module docstring) costs one store lookup by its
        client_order_id; so does one for an order never written here (an orphan)."""
        cid = self.proj.orders.retired_cid(event)
        if cid is not None:
            await self._recall(cid)
        if self.proj.apply(event) is ApplyResult.DUPLICATE:
            return None
        self.risk.on_event(event)  # with the positions, before the append's fsync
        stored = await self.store.append(event)
        if self.risk.has_events():  # a breaker tripped on it: store that now
            await self._flush()
        return stored

    async def _recall(self, cid: str) -> None:
        """Bring a retired order back into the book from its stored events (if another
        update brought it back during the lookup, it stays as it is)."""
        events = await self.store.query(client_order_id=cid)
        self.proj.orders.recall(events)

    async def consume(self, broker: Broker) -> None:
        """Feed one broker's report stream into :meth:`on_venue_event` (run as a task)."""
        async for event in broker.reports():
            await self.on_venue_event(event)

    async def on_market_data(self, symbol: str, price: Any, ts_ns: int) -> None:
        """Feed a last trade / mid to the engine (marks, staleness, PnL breakers)."""
        risk = self.risk
        risk.on_market_data(symbol, price, ts_ns)
        if risk.has_events():  # once per tick: no _flush coroutine when there is nothing
            await self._flush()

    # --- operator actions -----------------------------------------------------------------

    async def kill(self, cmd: KillCommand,
                   in_force: Callable[[], Awaitable[object]] | None = None,
                   before_store: Callable[[], Awaitable[object]] | None = None,
                   ) -> KillReport:
        """Kill switch: HALT the scope, cancel its open orders, optionally flatten.

        Flatten orders are reduce-only MARKET orders that go through :meth:`submit` (and so
        through the engine, which admits them in the HALTED scope once each).

        Args:
            cmd: the kill.
            in_force: awaited once the scope is HALTED in the engine, before any cancel
                (the agent's first acknowledgement): from then on no order of the scope
                passes :meth:`RiskEngine.check`, and one approved earlier whose intent is
                still being stored is stopped by :meth:`RiskEngine.last_look`.
            before_store: awaited once the cancels were sent, before the kill's events are
                stored here (the agent's pause that lets other agents on its host get their
                in-force acks out first; events queued meanwhile are stored by whichever
                flush comes first, in order).
        """
        report = KillReport()
        t0 = time.perf_counter_ns()
        cids = self.risk.halt(cmd.scope, cmd.key, cmd.reason, operator=cmd.operator,
                              source=cmd.source, flatten=cmd.flatten)
        report.halted_ns = time.perf_counter_ns() - t0
        if in_force is not None:
            await in_force()
        sent = await self._issue_cancels(cids)
        report.cancels_issued_ns = time.perf_counter_ns() - t0
        if before_store is not None:
            await before_store()
        await self._flush()  # KillSwitch + TradingStateChanged first, then the cancels
        await self._record_cancels(sent, f"kill switch: {cmd.reason}")
        report.canceled = [i.client_order_id for i, exc in sent if exc is None]
        if cmd.flatten:
            venues = {a: b.venue for a, b in self.brokers.items()}
            for req in flatten_requests(cmd, list(self.proj.positions.values()), venues):
                self.risk.allow_flatten(req)
                report.flatten.append(await self.submit(req))
        return report

    async def resume(
        self, scope: Scope, key: str, *, operator: str, reason: str,
        state: TradingState = TradingState.ACTIVE,
    ) -> TradingStateChanged | None:
        """Operator action: lift a scope (e.g. after a HALT). Raises ConfigError without an
        operator name and reason."""
        change = self.risk.resume(scope, key, operator, reason, state)
        await self._flush()
        return change

    # --- helpers --------------------------------------------------------------------------

    def _denial_events(self, denied: Denied) -> list[Event]:
        """OrderDenied, its RiskBreach and what the engine queued with them (built under
        the approval lock, so they follow the approvals before them)."""
        r, d, t = denied.request, denied.denial, denied.now_ns
        od = OrderDenied(
            node=self.node, bot=r.bot, ts_event=t, ts_init=t, account=r.account,
            symbol=r.symbol, side=r.side, qty=r.qty, check=d.check, message=d.message,
            limit_price=r.limit_price,
        )
        breach = RiskBreach(
            node=self.node, bot=r.bot, ts_event=t, ts_init=t, check=d.check, scope=d.scope,
            scope_key=d.scope_key, limit=d.limit, value=d.value, unit=d.unit,
            severity=d.severity, action="deny" if d.trip is None else d.trip.value.lower(),
            symbol=r.symbol, message=d.message,
        )
        return [od, breach, *self.risk.drain_events()]

    async def _record_denial(self, events: list[Event]) -> OrderDenied:
        stored = await self.store.append_many(events)
        result = stored[0]
        assert isinstance(result, OrderDenied)
        return result

    def _halt_on_operational(self, intent: OrderIntent, exc: BaseException) -> None:
        """A broker error a human must act on (e.g. Binance HTTP 418 IP ban, bad keys):
        HALT the account (P2: account halted, venue down) so nothing else is sent to it."""
        if isinstance(exc, OperationalError):
            self.risk.trip(
                Scope.ACCOUNT, intent.account, TradingState.HALTED,
                f"broker {intent.venue} for account {intent.account}: {exc}",
                check="broker_operational_error", severity=Severity.P2,
            )

    def _broker_error(self, intent: OrderIntent, op: str, exc: BaseException) -> BrokerError:
        t = self.clock.now_ns()
        return BrokerError(
            node=self.node, bot=intent.bot, ts_event=t, ts_init=t,
            client_order_id=intent.client_order_id, account=intent.account, operation=op,
            error_type=type(exc).__name__, message=str(exc), venue=intent.venue,
        )

    async def flush_risk_events(self) -> None:
        """Store the events the risk engine queued (breaches, state changes) now."""
        await self._flush()

    async def _flush(self) -> None:
        events = self.risk.drain_events()
        if events:
            await self.store.append_many(events)


def _intent(req: OrderRequest, node: str, cid: str, counter: int, now: int) -> OrderIntent:
    return OrderIntent(
        node=node, bot=req.bot, ts_event=now, ts_init=now, client_order_id=cid,
        cid_counter=counter, account=req.account, venue=req.venue, symbol=req.symbol,
        side=req.side, qty=req.qty, order_type=req.order_type, limit_price=req.limit_price,
        tif=req.tif, reduce_only=req.reduce_only, decision_price=req.decision_price,
        reason=req.reason, stop_price=req.stop_price,
    )


def _arrival(risk: RiskEngine, symbol: str) -> Decimal | None:
    """The symbol's last mark as the engine saw it (None before the first price)."""
    cell = risk.marks.get(symbol)
    return None if cell is None else cell.price


def _no_broker(account: str) -> Denial:
    return Denial(
        check="unknown_account", scope=Scope.ACCOUNT, scope_key=account, limit=0.0, value=0.0,
        unit="", field="account", message=f"account = {account!r}: no broker adapter wired",
    )
