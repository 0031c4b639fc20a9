"""Plain-text tables of the quality reports (the CLI and the daily message share them)."""

from __future__ import annotations

from collections.abc import Sequence

from qtd.quality.execution_quality import ExecBreach, ExecRow
from qtd.quality.surveil import Finding


def _f(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned first column, right-aligned others, widths from the content."""
    cells = [list(head), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    lines = []
    for r in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(lines)


def execution_table(rows: Sequence[ExecRow], found: Sequence[ExecBreach] = ()) -> str:
    """Execution quality rows, then the thresholds crossed (if any)."""
    if not rows:
        return "no orders in range"
    head = ["bot venue:symbol", "orders", "done", "lat p50 ms", "lat p99 ms", "slip dec bps",
            "slip arr bps", "fill rate", "cancel", "reject"]
    body = [[f"{r.bot} {r.venue}:{r.symbol}", str(r.orders), str(r.done),
             _f(r.latency_p50_ms, ".2f"), _f(r.latency_p99_ms, ".2f"),
             _f(r.slippage_decision_bps, "+.2f"), _f(r.slippage_arrival_bps, "+.2f"),
             _f(r.fill_rate, ".1%"), _f(r.cancel_rate, ".1%"), _f(r.reject_rate, ".1%")]
            for r in rows]
    text = table(head, body)
    if found:
        text += "\nthresholds crossed:\n" + "\n".join(f"  {b.message}" for b in found)
    else:
        text += "\nno threshold crossed"
    return text


def findings_text(findings: Sequence[Finding]) -> str:
    """Each finding with the events behind it (seq, kind, bot, client_order_id)."""
    if not findings:
        return "no findings"
    out = [f"{len(findings)} finding(s):"]
    for f in findings:
        out.append(f"[{f.pattern}] {f.message}")
        for e in f.events:
            out.append(f"    seq {e.seq:>7}  {_utc(e.ts_ns)}  {e.kind:<20} {e.node}/{e.bot:<14} "
                       f"{e.client_order_id}  {e.detail}")
    return "\n".join(out)


def _utc(ns: int) -> str:
    from datetime import UTC, datetime

    dt = datetime.fromtimestamp(ns / 1e9, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
