"""Execution quality and surveillance on the status page and in ``/metrics``.

Both read the leader's :class:`~qtd.quality.monitor.QualityMonitor` (fed from the events the
leader stores in fleet.db) through the optional ``quality()`` method of the web's
:class:`~qtd.web.source.FleetSource` (a source without it shows nothing).

Prometheus gauges (labels ``bot``, ``venue``, ``symbol``; today's trading day):
``qtd_exec_orders``, ``qtd_exec_latency_p50_seconds``, ``qtd_exec_latency_p99_seconds``
(decision → ack), ``qtd_exec_slippage_bps`` (extra label ``benchmark`` = decision|arrival,
adverse positive), ``qtd_exec_fill_rate``, ``qtd_exec_cancel_rate``, ``qtd_exec_reject_rate``
(fractions); ``qtd_exec_threshold_breaches`` and ``qtd_surveil_findings`` (label
``pattern``: findings since the leader started).
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from qtd.quality.execution import ExecBreach, ExecRow
from qtd.quality.monitor import QualityMonitor

_LABELS = ["bot", "venue", "symbol"]


def monitor_of(source: Any) -> QualityMonitor | None:
    """The source's quality monitor, if it has one."""
    fn = getattr(source, "quality", None)
    return fn() if callable(fn) else None


def quality_metrics(source: Any) -> Iterable[Metric]:
    """The gauges of the module docstring (nothing without a monitor)."""
    mon = monitor_of(source)
    if mon is None:
        return
    rows = mon.rows()
    fams = {name: GaugeMetricFamily(f"qtd_exec_{name}", text, labels=_LABELS) for name, text in (
        ("orders", "orders (intents) today"),
        ("latency_p50_seconds", "decision to ack latency, median"),
        ("latency_p99_seconds", "decision to ack latency, 99th percentile"),
        ("fill_rate", "filled / ordered quantity of done orders"),
        ("cancel_rate", "canceled / done orders"),
        ("reject_rate", "rejected / done orders"))}
    slip = GaugeMetricFamily("qtd_exec_slippage_bps", "notional-weighted slippage, adverse "
                             "positive", labels=[*_LABELS, "benchmark"])
    for r in rows:
        lab = [r.bot, r.venue, r.symbol]
        fams["orders"].add_metric(lab, r.orders)
        for name, value in (("latency_p50_seconds", _s(r.latency_p50_ms)),
                            ("latency_p99_seconds", _s(r.latency_p99_ms)),
                            ("fill_rate", r.fill_rate), ("cancel_rate", r.cancel_rate),
                            ("reject_rate", r.reject_rate)):
            if value is not None:
                fams[name].add_metric(lab, value)
        for bench, value in (("decision", r.slippage_decision_bps),
                             ("arrival", r.slippage_arrival_bps)):
            if value is not None:
                slip.add_metric([*lab, bench], value)
    yield from fams.values()
    yield slip
    breaches = GaugeMetricFamily("qtd_exec_threshold_breaches", "thresholds crossed now",
                                 labels=["metric"])
    tally: dict[str, int] = {}
    for b in mon.breaches:
        tally[b.metric] = tally.get(b.metric, 0) + 1
    for metric, n in sorted(tally.items()):
        breaches.add_metric([metric], n)
    yield breaches
    found = GaugeMetricFamily("qtd_surveil_findings", "surveillance findings since start",
                              labels=["pattern"])
    for pattern, n in mon.finding_counts.items():
        found.add_metric([pattern], n)
    yield found


def _s(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


def _cell(x: float | None, fmt: str, bad: bool = False) -> str:
    text = "–" if x is None else format(x, fmt)
    return f'<td class="num{" neg" if bad else ""}">{text}</td>'


def execution_section(source: Any) -> str:
    """The status page's "execution quality" section (empty string without a monitor)."""
    mon = monitor_of(source)
    if mon is None:
        return ""
    return section_html(mon.rows(), mon.breaches, sum(mon.finding_counts.values())).replace(
        "</section>", '<p><a href="/reports/daily">daily report</a> (the last trading day; '
        "<code>?date=YYYY-MM-DD</code> for another)</p></section>")


def section_html(rows: list[ExecRow], breaches: list[ExecBreach], findings: int) -> str:
    """HTML of the section: one row per (bot, venue, symbol); crossed figures in red."""
    bad = {(b.bot, b.venue, b.symbol, b.metric) for b in breaches}

    def crossed(r: ExecRow, *metrics: str) -> bool:
        return any((r.bot, r.venue, r.symbol, m) in bad for m in metrics)

    head = ["bot", "venue:symbol", "orders", "latency p50 ms", "latency p99 ms",
            "slippage vs decision bps", "vs arrival bps", "fill rate", "cancel rate",
            "reject rate"]
    body = "".join(
        f"<tr><td>{escape(r.bot)}</td><td>{escape(r.venue)}:{escape(r.symbol)}</td>"
        f'<td class="num">{r.orders}</td>{_cell(r.latency_p50_ms, ".1f")}'
        f'{_cell(r.latency_p99_ms, ".1f", crossed(r, "latency_p99"))}'
        f'{_cell(r.slippage_decision_bps, "+.2f", crossed(r, "slippage_decision"))}'
        f'{_cell(r.slippage_arrival_bps, "+.2f", crossed(r, "slippage_arrival"))}'
        f'{_cell(r.fill_rate, ".1%", crossed(r, "fill_rate"))}'
        f'{_cell(r.cancel_rate, ".1%", crossed(r, "cancel_rate"))}'
        f'{_cell(r.reject_rate, ".1%", crossed(r, "reject_rate"))}</tr>' for r in rows)
    heads = "".join(f"<th>{escape(h)}</th>" for h in head)
    note = (f'<p class="muted">today; {len(breaches)} threshold(s) crossed; '
            f"{findings} surveillance finding(s) since the leader started "
            "(<code>qtd surveil --db fleet.db</code> lists them)</p>")
    table = (f'<table class="execution"><thead><tr>{heads}</tr></thead><tbody>{body}</tbody>'
             "</table>") if rows else '<p class="muted">no orders today</p>'
    return f'<section id="execution"><h2>execution quality</h2>{table}{note}</section>'


async def daily_body(source: Any, day: str | None) -> str:
    """The daily report page's body for ``day`` (default: the last day that ended).

    Raises:
        HTTPException: 404 without a quality monitor, 400 for a bad date.
    """
    from starlette.exceptions import HTTPException

    from qtd.quality.daily import build_daily, previous_day

    mon = monitor_of(source)
    if mon is None or mon.db_path is None:
        raise HTTPException(404, "no daily report here (not served by a leader)")
    day = day or previous_day(mon.clock.now_ns(), mon.trading_day)
    try:
        r = await build_daily(mon.db_path, day, mon.trading_day, thresholds=mon.cfg.execution,
                              surveil=mon.cfg.surveil)
    except ValueError:
        raise HTTPException(400, f"date={day!r}: must be YYYY-MM-DD") from None
    cur = escape(mon.currency)
    rows = "".join(
        f"<tr><td>{escape(b.bot)}</td><td class=\"num\">{b.fills}</td>"
        + "".join(_cell(x, ",.2f", x < 0) for x in (b.traded_notional, b.realized, b.fees,
                                                    b.unrealized_change, b.pnl)) + "</tr>"
        for b in [*r.bots, r.fleet])
    head = "".join(f"<th>{h}</th>" for h in ("bot", "fills", f"traded {cur}", "realized",
                                             "fees", "unrealized change", "PnL"))

    def items(lines: list[str]) -> str:
        return ("<ul>" + "".join(f"<li>{escape(x)}</li>" for x in lines) + "</ul>"
                if lines else '<p class="muted">none</p>')

    found = [f"[{f.pattern}] {f.message} (events: " + ", ".join(
        f"seq {e.seq} {e.client_order_id}" for e in f.events) + ")" for f in r.findings]
    return (f'<section id="daily"><h2>daily report {escape(r.day)} ({escape(r.tz)})</h2>'
            f'<p class="muted">{r.events} events; PnL = realized net of fees + change of '
            f"unrealized at the last fill prices, {cur}</p>"
            f'<table class="daily"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
            + section_html(r.execution, r.execution_breaches, len(r.findings))
            + f"<h2>incidents ({len(r.incidents)})</h2>" + items(r.incidents)
            + f"<h2>risk breaches ({len(r.breaches)})</h2>" + items(r.breaches)
            + f"<h2>surveillance ({len(r.findings)})</h2>" + items(found) + "</section>")
