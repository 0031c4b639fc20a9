"""Alerts: open, escalate, acknowledge and close conditions; page them with PnL context.

One open alert per condition ``key`` (e.g. ``"hb:node-a"``). Raising an open key again does
nothing unless the severity is higher (an escalation: paged again). Every change is stored in
fleet.db as an :class:`~qtd.events.Alert` event (the audit trail) and paged through the
:class:`~qtd.notify.Notifier` with the bot's and the fleet's PnL today, the affected
positions and the bot's last events.

A standby leader (:mod:`qtd.leader.lease`) opens no alert and pages nothing
(:attr:`AlertBook.is_active`); when a leader stops being active it hands its open alerts
over (:meth:`AlertBook.hand_over`): their P1 repeats stop here, and the active leader raises
again whatever still holds.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from qtd.aio import TaskSet
from qtd.clock import Clock
from qtd.events import Alert, AnyEvent, RiskBreach, Severity, TradingState, TradingStateChanged
from qtd.fleetsnapshot import AlertView
from qtd.leader.fleetdb import LEADER_NODE, FleetDB
from qtd.leader.ingest import Suspect
from qtd.leader.view import FleetView
from qtd.notify import Notifier, Page

log = logging.getLogger("qtd.leader.alerts")
_NS = 1_000_000_000
_SHOWN_FIELDS = ("symbol", "side", "qty", "price", "client_order_id", "check", "reason",
                 "message", "realized", "unrealized")


class AlertRecord(msgspec.Struct, kw_only=True):
    """An alert as the leader tracks it (mutable: status, severity, operator change)."""

    alert_id: str
    key: str
    severity: Severity
    title: str
    status: str = "open"
    trigger: str = ""
    limit: float | None = None
    value: float | None = None
    unit: str = ""
    node: str = ""
    bot: str = ""
    symbol: str = ""
    message: str = ""
    opened_ns: int = 0
    operator: str = ""


class AlertBook:
    """Open alerts, their lifecycle and their pages.

    Args:
        view: the fleet view (PnL context).
        db: fleet.db (audit events; the bot's last events).
        notifier: the pager (None: alerts are recorded only).
        clock: leader clock.
        tasks: where context gathering and audit writes run.
        recent_events: how many of the bot's events a page lists.
        is_active: whether this leader acts now (a standby opens and pages nothing).
    """

    def __init__(self, *, view: FleetView, db: FleetDB, notifier: Notifier | None,
                 clock: Clock, tasks: TaskSet, recent_events: int = 5,
                 is_active: Callable[[], bool] = lambda: True) -> None:
        self.view = view
        self.db = db
        self.notifier = notifier
        self.clock = clock
        self.tasks = tasks
        self.recent_events = recent_events
        self.open: dict[str, AlertRecord] = {}
        self.closed: list[AlertRecord] = []
        self.is_active = is_active

    def hand_over(self) -> None:
        """This leader is no longer active: stop its P1 repeats and forget its open alerts."""
        for rec in self.open.values():
            if self.notifier is not None:
                self.notifier.resolve(rec.alert_id)
        if self.open:
            log.warning("alerts.handed_over open=%s", sorted(self.open))
        self.open.clear()

    def raise_alert(self, key: str, severity: Severity, title: str, **fields: Any
                    ) -> AlertRecord:
        """Open (or escalate) the alert for ``key`` and page it.

        Args:
            key: the condition, e.g. ``"hb:node-a"``.
            severity: P1..P4.
            title: one line for the operator.
            **fields: ``trigger``, ``limit``, ``value``, ``unit``, ``node``, ``bot``,
                ``symbol``, ``message``.

        Returns:
            The open alert (existing, escalated or new); on a standby leader a record that
            is neither kept nor paged.
        """
        if not self.is_active():
            log.info("alerts.standby_skip key=%s severity=%s", key, severity)
            return AlertRecord(alert_id="", key=key, severity=severity, title=title,
                               status="standby", opened_ns=self.clock.now_ns(), **fields)
        rec = self.open.get(key)
        if rec is not None:
            if severity.value >= rec.severity.value:
                return rec  # same or lower severity: already paged
            rec.severity, rec.title = severity, title  # escalation: page again
            for name, value in fields.items():
                setattr(rec, name, value)
        else:
            rec = AlertRecord(alert_id=uuid.uuid4().hex[:8], key=key, severity=severity,
                              title=title, opened_ns=self.clock.now_ns(), **fields)
            self.open[key] = rec
        self._emit(rec)
        return rec

    def on_agent_breach(self, b: RiskBreach) -> AlertRecord | None:
        """An agent's breach sent over NATS core because its outbox cannot carry it: its
        store cannot write (``check="store_fault"``, :mod:`qtd.agent.storefault`) or is
        behind its own events in JetStream (``"store_behind"``,
        :mod:`qtd.agent.storebehind`); republished while it lasts. Paged at its severity
        under ``store:<node>``. Other checks arrive through JetStream and are ignored here
        (returns None)."""
        what = _STORE_CHECKS.get(b.check)
        if what is None:
            return None
        return self.raise_alert(
            f"store:{b.node}", b.severity, f"agent {b.node}: {what}; trading HALTED",
            trigger=b.check, limit=b.limit, value=b.value, unit=b.unit, node=b.node,
            message=b.message)

    def on_suspect(self, s: Suspect) -> AlertRecord:
        """Page P1 an event the ingest kept out (:class:`~qtd.leader.ingest.Suspect`): a
        forgery by ``s.subject_node`` (key ``forged:<node>``: its NATS credentials write
        another node's history) or a different event under a stored origin (key
        ``conflict:<node>``: its store went backwards, or a forgery)."""
        if s.why == "forged":
            title = (f"forged event: {s.subject_node}'s credentials sent a {s.kind} claiming "
                     f"node {s.claimed_node!r} (refused)")
        else:
            title = f"{s.subject_node}: a different {s.kind} under a stored Msg-Id (refused)"
        return self.raise_alert(f"{s.why}:{s.subject_node}", Severity.P1, title,
                                trigger=f"{s.why}_event", node=s.subject_node,
                                message=f"Msg-Id {s.msg_id!r}: {s.detail}")

    def on_agent_event(self, ev: AnyEvent) -> AlertRecord | None:
        """Page an agent's own P1/P2 trip that arrived through JetStream (a breaker that
        halted an account, a reconciliation that left it REDUCING, an auto-flatten...), under
        ``breach:<node>:<check>:<scope>:<key>``; close those alerts when the agent reports the
        scope ACTIVE again. Order denials (``action="deny"``) and the agents' own echo of a
        kill switch (paged by the leader that sent it) are not paged here."""
        if isinstance(ev, TradingStateChanged) and ev.new is TradingState.ACTIVE:
            tail = f":{ev.scope.value}:{ev.scope_key}"
            for key in [k for k in self.open if k.startswith(f"breach:{ev.node}:")
                        and k.endswith(tail)]:
                self.close(key, f"{ev.scope.value} {ev.scope_key} ACTIVE again on {ev.node}")
            return None
        if not isinstance(ev, RiskBreach) or ev.severity not in (Severity.P1, Severity.P2) \
                or ev.action == "deny" or ev.check in ("kill_switch", *_STORE_CHECKS):
            return None
        return self.raise_alert(
            f"breach:{ev.node}:{ev.check}:{ev.scope.value}:{ev.scope_key}", ev.severity,
            f"agent {ev.node}: {ev.check} → {ev.scope.value} {ev.scope_key} {ev.action}",
            trigger=ev.check, limit=ev.limit, value=ev.value, unit=ev.unit, node=ev.node,
            bot=ev.bot, symbol=ev.symbol, message=ev.message)

    def close(self, key: str, message: str = "recovered") -> AlertRecord | None:
        """Close the alert for ``key`` (its condition recovered) and page the recovery."""
        rec = self.open.pop(key, None)
        if rec is None:
            return None
        rec.status, rec.message = "closed", message
        self.closed = [*self.closed[-199:], rec]
        if self.notifier is not None:
            self.notifier.resolve(rec.alert_id)
        self._emit(rec)
        return rec

    def ack(self, alert_id: str, operator: str) -> AlertRecord | None:
        """Acknowledge an open alert (stops P1 repeats). None if no such open alert."""
        for rec in self.open.values():
            if rec.alert_id == alert_id:
                rec.status, rec.operator = "acked", operator
                if self.notifier is not None:
                    self.notifier.ack(alert_id)
                self.tasks.spawn(self._audit(rec), f"qtd-alert-audit-{alert_id}")
                return rec
        return None

    def views(self) -> list[AlertView]:
        """Open and acknowledged alerts, most severe first (for the status page)."""
        recs = sorted(self.open.values(), key=lambda r: (r.severity.value, r.opened_ns))
        return [AlertView(alert_id=r.alert_id, key=r.key, severity=r.severity.value,
                          status=r.status, title=r.title, node=r.node, bot=r.bot,
                          opened_ns=r.opened_ns, limit=r.limit, value=r.value, unit=r.unit,
                          operator=r.operator) for r in recs]

    def _emit(self, rec: AlertRecord) -> None:
        snap = msgspec.structs.replace(rec)  # the state at this moment, not a later one
        self.tasks.spawn(self._page(snap), f"qtd-alert-{rec.alert_id}")

    async def _page(self, rec: AlertRecord) -> None:
        await self._audit(rec)
        if self.notifier is not None:
            self.notifier.notify(await self.page_for(rec))

    async def _audit(self, rec: AlertRecord) -> None:
        now = self.clock.now_ns()
        await self.db.append_local([Alert(
            node=LEADER_NODE, bot=rec.bot, ts_event=now, ts_init=now, alert_id=rec.alert_id,
            key=rec.key, severity=rec.severity, status=rec.status, title=rec.title,
            trigger=rec.trigger, limit=rec.limit, value=rec.value, unit=rec.unit,
            symbol=rec.symbol, message=rec.message, operator=rec.operator)])

    async def page_for(self, rec: AlertRecord) -> Page:
        """The page for an alert, with the PnL context gathered now."""
        r = self.view.rollup()
        bot_acc = r.bots.get((rec.node, rec.bot))
        events: list[AnyEvent] = []
        if rec.bot and self.recent_events:
            events = await self.db.recent(rec.node, rec.bot, self.recent_events)
        rows = [p for p in r.positions
                if (not rec.node or p.node == rec.node) and (not rec.bot or p.bot == rec.bot)
                and (not rec.symbol or p.symbol == rec.symbol)]
        rows.sort(key=lambda p: -abs(p.notional))
        return Page(
            alert_id=rec.alert_id, key=rec.key, severity=rec.severity, title=rec.title,
            status="closed" if rec.status == "closed" else "open", trigger=rec.trigger,
            limit=rec.limit, value=rec.value, unit=rec.unit, node=rec.node, bot=rec.bot,
            symbol=rec.symbol, currency=self.view.currency,
            bot_pnl_today=float(bot_acc.today) if bot_acc is not None else None,
            fleet_pnl_today=float(r.totals.today),
            positions=[f"{p.node}/{p.bot} {p.account} {p.symbol} qty {p.qty:g} avg "
                       f"{p.avg_price:,.2f} mark {p.mark if p.mark is not None else 'n/a'} "
                       f"unrealized {p.unrealized:,.2f}" for p in rows[:10]],
            recent_events=[describe(e) for e in events], message=rec.message,
            ts_ns=self.clock.now_ns())


_STORE_CHECKS = {"store_fault": "event store cannot write",
                 "store_behind": "event store is behind its events in JetStream (data lost)"}


def describe(ev: AnyEvent) -> str:
    """One line for an event in a page: time, kind and its main fields."""
    ts = datetime.fromtimestamp(ev.ts_event / _NS, UTC).strftime("%H:%M:%S.%f")[:-3]
    parts = [f"{f}={getattr(ev, f)}" for f in _SHOWN_FIELDS if getattr(ev, f, None)]
    return f"{ts} {type(ev).__name__} " + " ".join(parts)
