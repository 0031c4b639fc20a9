"""The execution-quality panel and the daily report page of the status page (HTML of
:meth:`~qtd.web.protocol.FleetSource.quality` and
:meth:`~qtd.web.protocol.FleetSource.daily_report`)."""

from __future__ import annotations

from html import escape

from qtd.quality.daily import DailyReport
from qtd.quality.execution import ExecBreach, ExecRow
from qtd.web.protocol import QualityView


def _cell(x: float | None, fmt: str, bad: bool = False) -> str:
    text = "–" if x is None else format(x, fmt)
    return f'<td class="num{" neg" if bad else ""}">{text}</td>'


def execution_section(mon: QualityView | None) -> str:
    """The status page's "execution quality" section (empty string without a monitor)."""
    if mon is None:
        return ""
    return section_html(mon.rows, mon.breaches, sum(mon.finding_counts.values())).replace(
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


def daily_body(r: DailyReport, currency: str) -> str:
    """The daily report page's body."""
    cur = escape(currency)
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
