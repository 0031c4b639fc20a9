"""The daily report: the fleet's and each bot's PnL, execution quality, breaches, incidents
and surveillance findings of one trading day, from fleet.db (or one agent's events.db).

A trading day labelled D runs from the rollover (local time in the fleet's time zone) on D
to the rollover on D+1 (:class:`~qtd.projections.TradingDay`). PnL, in the quote currency:

* ``realized`` — PnL realized by the day's fills (average-cost netting, :mod:`qtd.projections`),
  net of the fees paid in the quote currency (``fees``);
* ``unrealized_change`` — open positions marked at the last fill price of their symbol, at the
  end of the day minus at its start (the stores keep fills, not quotes);
* ``pnl`` = ``realized`` + ``unrealized_change``.

Incidents are the day's alerts opened (leader), kill switches, strategy errors, scopes halted
and failed reconciliations; breaches are its :class:`~qtd.events.RiskBreach` events.
The leader sends it when a trading day ends (:mod:`qtd.quality.monitor`);
``qtd report daily --db ... --date D`` prints it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import msgspec

from qtd.events import (
    Alert,
    AnyEvent,
    Fill,
    KillSwitch,
    Reconciliation,
    RiskBreach,
    StrategyError,
    TradingState,
    TradingStateChanged,
)
from qtd.projections import ZERO, Projections, TradingDay
from qtd.quality.event_files import read_events
from qtd.quality.execution_quality import ExecBreach, ExecRow, ExecutionQuality, Thresholds
from qtd.quality.render import execution_table, findings_text, table
from qtd.quality.surveil import Finding, SurveilConfig, Surveillance

_NS = 1_000_000_000


class BotDay(msgspec.Struct, kw_only=True):
    """One bot's day (quote currency)."""

    bot: str
    fills: int = 0
    traded_notional: float = 0.0
    realized: float = 0.0
    fees: float = 0.0
    unrealized_change: float = 0.0
    pnl: float = 0.0


class DailyReport(msgspec.Struct, kw_only=True):
    """Everything the daily message and page show (module docstring for the figures)."""

    day: str
    tz: str
    start_ns: int
    end_ns: int
    events: int
    fleet: BotDay
    bots: list[BotDay]
    execution: list[ExecRow]
    execution_breaches: list[ExecBreach]
    breaches: list[str]
    incidents: list[str]
    findings: list[Finding]


def day_bounds(day: str, trading_day: TradingDay) -> tuple[int, int]:
    """``[start, end)`` of trading day ``day`` (``YYYY-MM-DD``), UTC ns.

    Raises:
        ValueError: ``day`` is not an ISO date.
    """
    d = date.fromisoformat(day)

    def bound(x: date) -> int:
        return int(datetime.combine(x, trading_day.rollover, trading_day.tz).timestamp()) * _NS

    return bound(d), bound(d + timedelta(days=1))


def previous_day(now_ns: int, trading_day: TradingDay) -> str:
    """The label of the trading day before the one containing ``now_ns``."""
    start, _ = day_bounds(trading_day.label(now_ns), trading_day)
    return trading_day.label(start - 1)


async def build_daily(db: str | Path, day: str, trading_day: TradingDay, *,
                      thresholds: Thresholds | None = None,
                      surveil: SurveilConfig | None = None) -> DailyReport:
    """The report of trading day ``day`` from ``db`` (events.db or fleet.db, read-only).

    History before the day is replayed too (positions' cost basis, each bot's usual order
    size for surveillance); only the day's fills, orders and incidents are reported.

    Raises:
        StoreError: ``db`` is not a readable qtd store.
        ValueError: ``day`` is not an ISO date.
    """
    start, end = day_bounds(day, trading_day)
    proj = Projections(TradingDay(str(trading_day.tz), trading_day.rollover.strftime("%H:%M")))
    q = ExecutionQuality(start)
    sv = Surveillance(surveil)
    marks: dict[str, Decimal] = {}
    unreal_start: dict[str, Decimal] | None = None
    breaches: list[str] = []
    incidents: list[str] = []
    n = 0
    async for batch in read_events(db, None, end):
        for ev in batch:
            if unreal_start is None and ev.ts_event >= start:
                unreal_start = _unrealized(proj, marks)
            proj.apply(ev)
            if isinstance(ev, Fill):
                marks[ev.symbol] = ev.price
            sv.feed(ev)
            if ev.ts_event >= start:
                n += 1
                q.feed(ev)
                _note(ev, breaches, incidents)
    if unreal_start is None:
        unreal_start = _unrealized(proj, marks)
    unreal_end = _unrealized(proj, marks)
    bots = _bot_days(proj, day, unreal_start, unreal_end)
    fleet = BotDay(bot="fleet")
    for b in bots:
        for f in ("fills", "traded_notional", "realized", "fees", "unrealized_change", "pnl"):
            setattr(fleet, f, getattr(fleet, f) + getattr(b, f))
    return DailyReport(
        day=day, tz=str(trading_day.tz), start_ns=start, end_ns=end, events=n, fleet=fleet,
        bots=bots, execution=q.rows(), execution_breaches=q.breaches(thresholds),
        breaches=breaches, incidents=incidents,
        findings=[f for f in sv.findings if f.ts_ns >= start])


def _unrealized(proj: Projections, marks: dict[str, Decimal]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for p in proj.positions.values():
        out[p.bot] = out.get(p.bot, ZERO) + p.unrealized(marks.get(p.symbol))
    return out


def _bot_days(proj: Projections, day: str, u0: dict[str, Decimal], u1: dict[str, Decimal]
              ) -> list[BotDay]:
    names = {b for b, d in proj.daily if d == day} | set(u0) | set(u1)
    out = []
    for bot in sorted(names):
        d = proj.daily.get((bot, day))
        realized = (d.realized - d.fees) if d else ZERO
        du = u1.get(bot, ZERO) - u0.get(bot, ZERO)
        if d is None and not du:
            continue
        out.append(BotDay(bot=bot, fills=d.fills if d else 0,
                          traded_notional=float(d.traded_notional) if d else 0.0,
                          realized=float(realized), fees=float(d.fees) if d else 0.0,
                          unrealized_change=float(du), pnl=float(realized + du)))
    return out


def _utc_hms(ns: int) -> str:
    return datetime.fromtimestamp(ns / _NS, UTC).strftime("%H:%M:%SZ")


def _note(ev: AnyEvent, breaches: list[str], incidents: list[str]) -> None:
    t = _utc_hms(ev.ts_event)
    where = "/".join(x for x in (ev.node, ev.bot) if x)
    if isinstance(ev, RiskBreach):
        breaches.append(f"{t} {ev.severity} {where} {ev.check} {ev.scope}:{ev.scope_key} "
                        f"value {ev.value:g} limit {ev.limit:g} {ev.unit} -> {ev.action}")
    elif isinstance(ev, Alert) and ev.status == "open":
        incidents.append(f"{t} alert {ev.severity} {ev.title} [{ev.alert_id}]")
    elif isinstance(ev, KillSwitch):
        state = "activated" if ev.active else "released"
        incidents.append(f"{t} kill switch {state} {ev.scope}:{ev.scope_key} ({ev.reason})"
                         + (f" by {ev.operator}" if ev.operator else ""))
    elif isinstance(ev, StrategyError):
        incidents.append(f"{t} strategy error {where} in {ev.hook}: {ev.error_type}: "
                         f"{ev.message[:120]}")
    elif isinstance(ev, TradingStateChanged) and ev.new is TradingState.HALTED:
        incidents.append(f"{t} {where} {ev.scope}:{ev.scope_key} HALTED ({ev.reason})")
    elif isinstance(ev, Reconciliation) and not ev.ok:
        incidents.append(f"{t} {where} reconciliation of {ev.account} left "
                         f"{len(ev.unresolved)} unresolved orders, "
                         f"{len(ev.position_mismatches)} position mismatches")


def format_daily(r: DailyReport, currency: str = "USD", max_lines: int = 30
                 ) -> tuple[str, str]:
    """The report as (title, plain-text body); long lists are cut at ``max_lines``."""
    f = r.fleet
    title = (f"qtd daily report {r.day}: fleet PnL {f.pnl:,.2f} {currency}, "
             f"{len(r.incidents)} incidents, {len(r.breaches)} breaches, "
             f"{len(r.findings)} surveillance findings")
    head = ["bot", "fills", "traded", "realized", "fees", "unrealized chg", "PnL"]
    rows = [[b.bot, str(b.fills), f"{b.traded_notional:,.2f}", f"{b.realized:,.2f}",
             f"{b.fees:,.2f}", f"{b.unrealized_change:,.2f}", f"{b.pnl:,.2f}"]
            for b in [*r.bots, f]]
    parts = [f"trading day {r.day} ({r.tz}), {r.events} events, money in {currency}",
             "", "PnL (realized net of fees + change of unrealized at last fill prices):",
             table(head, rows) if r.bots else "no trading", "", "execution quality:",
             execution_table(r.execution, r.execution_breaches), "",
             f"incidents ({len(r.incidents)}):", *_cut(r.incidents, max_lines), "",
             f"risk breaches ({len(r.breaches)}):", *_cut(r.breaches, max_lines), "",
             "surveillance:", findings_text(r.findings[:max_lines])]
    return title, "\n".join(parts)


def _cut(lines: list[str], n: int) -> list[str]:
    if not lines:
        return ["  none"]
    more = [f"  ... and {len(lines) - n} more"] if len(lines) > n else []
    return [f"  {x}" for x in lines[:n]] + more
