"""``qtd backtest``: one backtest (report, event log, chart, promotion gates) or a parameter
sweep, all on the live order path (:mod:`qtd.backtest`, :mod:`qtd.sweep`).

Exit status: 0 ok; :data:`GATE_FAILED` when ``--gate`` found failing gates;
:data:`BOT_HALTED` when the bot was halted during the run (a strategy error, a circuit
breaker: the figures then cover a bot that stopped trading, said at the top of the report);
the CLI's usual codes for bad input (78) and other errors.
"""

from __future__ import annotations

import argparse
import bisect
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO

import msgspec

from qtd.errors import ConfigError
from qtd.gates import GateResult, evaluate, parse_thresholds, write_gate
from qtd.metrics import Report
from qtd.plot import write_chart
from qtd.sweep import Job, JobResult, load_data, rank, run_job_sync, run_sweep

GATE_FAILED: Final = 3
BOT_HALTED: Final = 4
NS_PER_MS: Final = 1_000_000
_ENCODER: Final = msgspec.json.Encoder(decimal_format="number")


class Progress:
    """A carriage-return progress line on ``out`` (stderr): items done of ``total``, rate."""

    def __init__(self, total: int, out: TextIO | None = None, label: str = "bars") -> None:
        self.total, self.out, self.label = total, out or sys.stderr, label
        self.t0 = time.perf_counter()

    def __call__(self, done: int, total: int | None = None) -> None:
        total = total or self.total
        dt = max(time.perf_counter() - self.t0, 1e-9)
        pct = 100 * done / total if total else 100.0
        self.out.write(f"\r{done:,}/{total:,} {self.label} ({pct:5.1f} %) "
                       f"{done / dt:,.0f}/s")
        self.out.flush()

    def close(self) -> None:
        self.out.write("\n")
        self.out.flush()


def parse_params(pairs: Sequence[str] | None) -> dict[str, str]:
    """``["fast=5", "qty=2.5"]`` → ``{"fast": "5", "qty": "2.5"}`` (the strategy's schema
    converts the strings).

    Raises:
        ConfigError: an item without ``=``.
    """
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--params {pair!r}: expected NAME=VALUE", source="<arg>",
                              field="params", value=pair, rule="NAME=VALUE")
        out[key] = value
    return out


def job_from_args(args: argparse.Namespace) -> Job:
    """The :class:`~qtd.sweep.Job` the command line describes."""
    return Job(
        target=args.target, data=args.data, params=parse_params(args.params),
        symbol=args.symbol or "", cash=args.cash, commission_bps=args.commission_bps,
        commission_per_unit=args.commission_per_unit, slippage_bps=args.slippage_bps,
        fill_at=args.fill, latency_ns=int(args.latency_ms * NS_PER_MS),
        risk=args.risk or "", db=args.db or "", isolate=args.isolate)


def default_db(job: Job) -> str:
    """``backtest-<target stem>-<UTC yyyymmddThhmmss>.db`` in the current directory."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"backtest-{Path(job.target).stem}-{stamp}.db"


def _day(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).strftime("%Y-%m-%d")


def _pct(x: float) -> str:
    return f"{100 * x:,.2f} %"


def halt_line(res: JobResult) -> str:
    """``""``, or the first line of a report whose bot was halted: when (bar n of N), which
    scope and why."""
    h = res.halt
    if h is None:
        return ""
    bar = bisect.bisect_left(res.curve_ts, h.ts_ns) + 1
    scope = f"{h.scope} {h.key}".strip()
    return (f"HALTED at {_day(h.ts_ns)} (bar {bar:,} of {len(res.curve_ts):,}): {scope}: "
            f"{h.reason}. The bot traded no more; the figures below are not a full run.")


def costs_line(job: Job) -> str:
    """The paper broker's costs of the run (the demo's paper accounts' by default)."""
    unit = f" + {job.commission_per_unit:g} per unit" if job.commission_per_unit else ""
    return (f"costs: commission {job.commission_bps:g} bps of notional{unit}, slippage "
            f"{job.slippage_bps:g} bps on market/stop fills, latency "
            f"{job.latency_ns / NS_PER_MS:g} ms")


def format_report(res: JobResult) -> str:
    """The human-readable report of one run (a halt first, then the header and figures)."""
    rep = res.report
    assert rep is not None
    q = rep.periods_per_year
    rows = [
        ("total return", _pct(rep.total_return)), ("CAGR", _pct(rep.cagr)),
        ("volatility (ann.)", _pct(rep.volatility)),
        ("Sharpe", f"{rep.sharpe:.3f}   mean/std(ddof=1) of per-bar returns x sqrt({q:g}), rf=0"),
        ("Sortino", f"{rep.sortino:.3f}   mean / downside deviation x sqrt({q:g})"),
        ("max drawdown", f"{_pct(rep.max_drawdown)}   longest {rep.max_drawdown_days:,.1f} "
                         f"days ({rep.max_drawdown_bars} bars) under water"),
        ("win rate", _pct(rep.win_rate)), ("profit factor", f"{rep.profit_factor:.3f}"),
        ("exposure time", _pct(rep.exposure)), ("trades", f"{rep.trades}"),
        ("average trade", f"{rep.avg_trade:,.2f}"), ("commissions", f"{rep.commissions:,.2f}"),
        ("start equity", f"{rep.start_equity:,.2f}"), ("final equity", f"{rep.final_equity:,.2f}"),
    ]
    params = " ".join(f"{k}={v}" for k, v in res.params.items())
    head = (f"{res.strategy} as bot {res.bot!r} ({params}) on {res.job.data}: "
            f"{_day(rep.start_ts_ns)} .. {_day(rep.end_ts_ns)}, {rep.bars:,} bars, "
            f"fills at {res.job.fill_at}"
            f"{', hooks in a worker process (--isolate)' if res.job.isolate else ''}")
    halted = halt_line(res)
    lines = ([halted] if halted else []) + [head, f"  {costs_line(res.job)}"]
    lines += [f"  {k:<18} {v}" for k, v in rows]
    if res.denials or res.bot_error:
        lines.append(f"  risk denials: {res.denials}; bot state {res.state} {res.bot_error}")
    return "\n".join(lines)


def _json(res: JobResult, gate: GateResult | None) -> bytes:
    trades = [{"symbol": t.symbol, "side": t.side, "qty": t.qty, "entry_ts_ns": t.entry_ts_ns,
               "exit_ts_ns": t.exit_ts_ns, "entry_price": t.entry_price,
               "exit_price": t.exit_price, "pnl": t.pnl, "commission": t.commission,
               "open": t.is_open} for t in res.trades]
    doc: dict[str, Any] = {
        "strategy": res.strategy, "bot": res.bot, "params": res.params, "db": res.job.db,
        "data": res.job.data, "report": res.report, "denials": res.denials,
        "state": res.state, "bot_error": res.bot_error, "trades": trades,
        "gate": gate, "source_hash": res.source_hash, "params_hash": res.params_hash,
        "halt": res.halt, "halt_message": halt_line(res), "isolate": res.job.isolate,
        "costs": {"commission_bps": res.job.commission_bps, "slippage_bps":
                  res.job.slippage_bps, "commission_per_unit": res.job.commission_per_unit}}
    return _ENCODER.encode(doc)


def _gate(args: argparse.Namespace, res: JobResult) -> GateResult:
    assert res.report is not None
    gate = evaluate(res.report, parse_thresholds(args.gate_threshold), strategy=res.strategy,
                    source_hash=res.source_hash, params_hash=res.params_hash,
                    data=res.job.data, ts_ns=time.time_ns())
    if Path(args.target).suffix == ".toml":
        path = write_gate(Path(args.target), gate)
        print(f"gate result recorded in {path}", file=sys.stderr)
    return gate


def run_backtest_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``qtd backtest``; returns the exit status."""
    out = out or sys.stdout
    job = job_from_args(args)
    if args.sweep:
        return _sweep(args, job, out)
    if not job.db:
        job = msgspec.structs.replace(job, db=default_db(job))
    items = load_data(job.data)
    bar = Progress(len(items))
    try:
        res = run_job_sync(job, items, progress=bar)
    finally:
        bar.close()
    if res.report is None:
        raise ConfigError(f"--data {job.data}: no bars replayed", source=job.data)
    gate = _gate(args, res) if args.gate else None
    if args.json:
        out.write(_json(res, gate).decode() + "\n")
    else:
        out.write(format_report(res) + "\n")
        out.write(f"  events: {job.db}   (qtd events --db {job.db})\n")
        if gate is not None:
            out.write(f"gates: {'PASSED' if gate.passed else 'FAILED'}\n")
            out.write("".join(f"  {c}\n" for c in gate.checks))
    if args.plot:
        write_chart(Path(args.plot), res.curve_ts, res.curve_equity,
                    title=f"{res.strategy} {res.bot} on {job.data}", summary=format_report(res),
                    markers=trade_markers(res))
        print(f"chart: {Path(args.plot).resolve()}", file=sys.stderr)
    if res.halt is not None:
        print(f"qtd backtest: {halt_line(res)}", file=sys.stderr)
        return BOT_HALTED
    if gate is not None and not gate.passed:
        print("qtd backtest: failing gates: " + ", ".join(c.name for c in gate.failed),
              file=sys.stderr)
        return GATE_FAILED
    return 0


def trade_markers(res: JobResult) -> list[tuple[int, str]]:
    """``(UTC ns, "buy"|"sell")`` of every trade's entry and exit, for the chart."""
    out: list[tuple[int, str]] = []
    for t in res.trades:
        long = t.side == "LONG"
        out.append((t.entry_ts_ns, "buy" if long else "sell"))
        if t.exit_ts_ns:
            out.append((t.exit_ts_ns, "sell" if long else "buy"))
    return out


def format_ranking(results: Sequence[JobResult], by: str, top: int) -> str:
    """The sweep's ranked table: params and the main figures, best first."""
    ranked = rank(results, by)[:top]
    keys = list(ranked[0].params) if ranked else []
    swept = [k for k in keys if len({str(r.params.get(k)) for r in ranked}) > 1] or keys
    head = ["#", *swept, "sharpe", "return", "max_dd", "win_rate", "pf", "trades"]
    rows = [head]
    for i, r in enumerate(ranked, 1):
        rep: Report = r.report  # type: ignore[assignment]
        rows.append([str(i), *(str(r.params.get(k)) for k in swept), f"{rep.sharpe:.3f}",
                     _pct(rep.total_return), _pct(rep.max_drawdown), _pct(rep.win_rate),
                     f"{rep.profit_factor:.2f}", str(rep.trades)])
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True))
                     for row in rows)


def _sweep(args: argparse.Namespace, job: Job, out: TextIO) -> int:
    bar = Progress(0, label="runs")
    try:
        results = run_sweep(job, args.sweep, workers=args.workers, on_done=bar)
    finally:
        bar.close()
    skipped = [r for r in results if r.error]
    if args.json:
        for r in rank(results, args.rank_by):
            out.write(msgspec.json.encode({"params": r.params, "report": r.report}).decode()
                      + "\n")
    else:
        out.write(f"{len(results)} runs, ranked by {args.rank_by} "
                  f"({len(skipped)} skipped: invalid params)\n")
        out.write(format_ranking(results, args.rank_by, args.top) + "\n")
    for r in skipped[:5]:
        print(f"skipped {r.params}: {r.error.splitlines()[0]}", file=sys.stderr)
    return 0
