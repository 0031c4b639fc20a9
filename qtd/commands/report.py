"""``qtd report execution|daily|drift|shadow`` and ``qtd surveil``: read a store, print a report.

Every command opens its ``--db`` read-only (an agent's events.db or the leader's fleet.db),
so it is safe while the agent or leader runs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any, TextIO

import msgspec

from qtd.commands.fleet import add_store_args, db_from_args
from qtd.costs import DEMO_COMMISSION_BPS, DEMO_SLIPPAGE_BPS
from qtd.errors import ConfigError

EXIT_FINDINGS = 3  # --fail-on-breach / surveil findings: something for a human to look at

EXAMPLES = """\
examples:
  qtd report execution --db qtd-state/leader/fleet.db            the whole fleet
  qtd report execution --db node-1/events.db --since 2026-11-25 --json
  qtd report execution --db fleet.db --threshold latency_p99_ms=20 --fail-on-breach
  qtd report daily --db qtd-state/leader/fleet.db --date 2026-11-24
  qtd report drift --db node-1/events.db --bot momo-goog --config etc/bots/momo-goog.toml \\
      --data goog_1d
  qtd report shadow --shadow-db shadow-node/events.db --live-db node-1/events.db \\
      --bot momo-btc --since 2026-11-25
  qtd surveil --db qtd-state/leader/fleet.db --since 2026-11-25T00:00:00Z
"""


def add_parsers(sub: Any, parse_time: Any) -> None:
    """Register ``report`` (execution, daily, drift) and ``surveil`` on ``sub``."""
    p = sub.add_parser(
        "report", help="execution quality, daily report, live-vs-backtest drift",
        description="Reports computed from an event store (events.db) or the leader's "
        "fleet.db, opened read-only.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    rsub = p.add_subparsers(dest="report_command", metavar="REPORT", required=True)
    ex = rsub.add_parser(
        "execution", help="latency, slippage, fill/cancel/reject rates per bot/venue/symbol",
        description="Per bot, venue and symbol: decision -> ack latency p50/p99 (ms), "
        "slippage vs decision and vs arrival price (bps, adverse positive, notional-"
        "weighted: Perold's implementation shortfall), fill rate (filled / ordered qty of "
        "done orders), cancel and reject rates (of done orders). Rows crossing a threshold "
        "are listed below the table (defaults: latency p99 > 50 ms, slippage > 5 bps, fill "
        "rate < 0.95, cancel rate > 0.15, reject rate > 0.05; rates once 20 orders are done).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(ex, parse_time)
    ex.add_argument("--threshold", action="append", metavar="NAME=VALUE",
                    help="override a threshold: latency_p99_ms, slippage_bps, fill_rate_min, "
                    "cancel_rate_max, reject_rate_max, min_orders (repeatable)")
    ex.add_argument("--fail-on-breach", action="store_true",
                    help=f"exit {EXIT_FINDINGS} when a threshold is crossed")
    ex.set_defaults(handler=_run_execution)
    dl = rsub.add_parser(
        "daily", help="one trading day: fleet and bot PnL, execution, breaches, incidents",
        description="The report the leader sends at the end of each trading day: PnL of the "
        "fleet and of each bot (realized net of fees + change of unrealized at the last fill "
        "prices), execution quality, risk breaches, incidents (alerts, kill switches, "
        "strategy errors, halts, failed reconciliations) and surveillance findings. The "
        "trading day runs from --rollover (local time in --tz) to the next rollover; "
        "--leader-config takes both from the leader's [fleet] section (default: the "
        "leader.toml `qtd up` generated beside the store, so the day is the status page's).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_store_args(dl, db_help="the leader's fleet.db (or an events.db)", node=True)
    dl.add_argument("--date", help="trading day YYYY-MM-DD (default: the last one that ended)")
    dl.add_argument("--tz", help="time zone of the trading day (IANA name; default: the "
                    "fleet's, see --leader-config)")
    dl.add_argument("--rollover", help="local HH:MM when a trading day starts (default: the "
                    "fleet's)")
    dl.add_argument("--leader-config", help="take --tz/--rollover/currency from this "
                    "leader.toml (default: the one `qtd up` generated beside --db, else UTC "
                    "00:00)")
    dl.add_argument("--json", action="store_true", help="one JSON document on stdout")
    dl.set_defaults(handler=_run_daily)
    dr = rsub.add_parser(
        "drift", help="live vs backtest of one bot over the bars it saw (Sharpe, tracking)",
        description="Replays the bars the bot saw (--data, bars closing in [--since, "
        "--until); default: from the data's start to the bot's last live event) through "
        "the backtest harness with the bot's own config, and compares both equity curves "
        "bar by bar: live Sharpe as a fraction of the backtest's (gate: >= --gate), "
        "annualised tracking error, and the rolling --window-bar live Sharpe against "
        f"--floor (decay). Exit {EXIT_FINDINGS} when the gate fails or the bot decays. "
        "The live store and the bars must share one time base (live or shadow trading, or "
        "a paper run on a simulated clock).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(dr, parse_time)
    dr.add_argument("--config", required=True, help="the bot's config (.toml)")
    dr.add_argument("--data", required=True, help="the data it traded: a data set (qtd data "
                    "list: bundled, or catalog venue:SYMBOL:interval), a symbol, or a bar file")
    dr.add_argument("--bot", help="bot name in the store (default: the config's name)")
    dr.add_argument("--symbol", help="symbol (default: the bot's first)")
    dr.add_argument("--capital", type=float, default=100_000.0,
                    help="starting capital of both curves, quote currency")
    dr.add_argument("--risk", help="risk file for the replay (default: the bot's)")
    dr.add_argument("--commission-bps", type=float, default=DEMO_COMMISSION_BPS,
                    help="replay cost, bps (default: the demo's paper accounts')")
    dr.add_argument("--slippage-bps", type=float, default=DEMO_SLIPPAGE_BPS,
                    help="replay slippage, bps (default: the demo's paper accounts')")
    dr.add_argument("--fill", choices=["next_open", "close"], default="next_open",
                    help="replay fills at the next bar's open or this bar's close")
    dr.add_argument("--gate", type=float, default=0.8,
                    help="live Sharpe must be at least this fraction of the backtest's")
    dr.add_argument("--window", type=int, default=60, help="rolling Sharpe window, bars")
    dr.add_argument("--floor", type=float, default=0.5, help="rolling Sharpe floor")
    dr.set_defaults(handler=_run_drift)
    sh = rsub.add_parser(
        "shadow", help="tracking difference of a shadow bot against its live twin",
        description="Compares a shadow bot (an account with mode = \"shadow\": qtd's paper "
        "broker on the venue's live data) with its live twin (the same strategy and params "
        "on a live account) over [--since, --until), from their event stores opened "
        "read-only. Per symbol: intents and fills of each; execution difference in bps "
        "between the k-th shadow and k-th live order of each side (average fill prices; "
        "positive = the live twin filled worse); net position; PnL (realized net of fees + "
        "unrealized at the last live fill price, quote currency); tracking difference = "
        "live PnL - shadow PnL. (qtd.brokers.shadow)",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sh.add_argument("--shadow-db", required=True, help="events.db holding the shadow bot")
    sh.add_argument("--live-db", help="events.db holding the live twin (default: --shadow-db)")
    sh.add_argument("--bot", help="the bot's name in both stores (twins share a name)")
    sh.add_argument("--shadow-bot", help="the shadow bot's name (default: --bot)")
    sh.add_argument("--live-bot", help="the live twin's name (default: --bot)")
    sh.add_argument("--since", type=parse_time, help="ts_event >= this (ISO 8601 or UTC ns)")
    sh.add_argument("--until", type=parse_time, help="ts_event < this (ISO 8601 or UTC ns)")
    sh.add_argument("--json", action="store_true", help="one JSON document on stdout")
    sh.set_defaults(handler=_run_shadow)
    sv = sub.add_parser(
        "surveil", help="trade surveillance: wash trades, spoofing-like cancels, layering",
        description="Scans the fleet's own orders and fills and prints every finding with "
        "the events behind it (seq, kind, bot, client_order_id). wash: fills of one symbol "
        "on one account, opposite sides, different bots, within 5 s. spoof: an order of "
        ">= 5x the bot's median notional canceled within 100 ms, nothing filled. layer: 3+ "
        "limit orders on one side at distinct prices canceled one after the other (each "
        "within 1 s of the previous), nothing filled. Kill-switch, flatten and "
        f"reconciliation cancels are exempt. Exit {EXIT_FINDINGS} when anything is found.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(sv, parse_time)
    sv.add_argument("--set", action="append", metavar="NAME=VALUE", dest="settings",
                    help="override a threshold: wash_window_s, spoof_cancel_ms, "
                    "spoof_size_factor, spoof_min_notional, spoof_min_orders, median_window, "
                    "layer_levels, layer_gap_s (repeatable)")
    sv.set_defaults(handler=_run_surveil)


def _common(p: argparse.ArgumentParser, parse_time: Any) -> None:
    add_store_args(p, db_help="events.db of an agent or the leader's fleet.db", node=True)
    p.add_argument("--since", type=parse_time, help="ts_event >= this (ISO 8601 or UTC ns)")
    p.add_argument("--until", type=parse_time, help="ts_event < this (ISO 8601 or UTC ns)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")


def parse_overrides(items: list[str] | None, struct: type[Any], flag: str) -> Any:
    """Build ``struct`` (a msgspec Struct of numbers) from ``NAME=VALUE`` overrides.

    Raises:
        ConfigError: not NAME=VALUE, unknown name, not a number or out of range (names the
            flag, the field and the value).
    """
    values: dict[str, float] = {}
    for item in items or []:
        name, eq, raw = item.partition("=")
        if not eq:
            raise ConfigError(f"{flag} {item!r}: must be NAME=VALUE", source="<arg>",
                              field=flag, value=item, rule="NAME=VALUE")
        try:
            values[name.strip()] = float(raw)
        except ValueError:
            raise ConfigError(f"{flag} {name}={raw!r}: must be a number", source="<arg>",
                              field=name, value=raw, rule="number") from None
    try:
        return msgspec.convert(values, struct, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{flag}: {exc}", source="<arg>", field=flag, value=str(values),
                          rule=str(exc)) from None


def _run_execution(args: argparse.Namespace) -> int:
    args.db = db_from_args(args)
    return asyncio.run(run_execution(args))


async def run_execution(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run ``qtd report execution``; returns the exit status."""
    from qtd.quality.event_files import read_events
    from qtd.quality.execution_quality import ExecutionQuality, Thresholds, breaches

    th = parse_overrides(args.threshold, Thresholds, "--threshold")
    q = ExecutionQuality(args.since)
    n = 0
    async for batch in read_events(args.db, args.since, args.until):
        q.feed_many(batch)
        n += len(batch)
    rows = q.rows()
    found = breaches(rows, th)
    if args.json:
        doc = {"db": str(args.db), "events": n, "thresholds": th, "rows": rows,
               "breaches": found}
        out.write(msgspec.json.encode(doc).decode() + "\n")
    else:
        from qtd.quality.render import execution_table

        out.write(f"{args.db}: {n} events\n" + execution_table(rows, found) + "\n")
    return EXIT_FINDINGS if found and args.fail_on_breach else 0


def _run_shadow(args: argparse.Namespace) -> int:
    return asyncio.run(run_shadow(args))


async def run_shadow(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run ``qtd report shadow``; returns the exit status.

    Raises:
        ConfigError: no bot name, or a store file that does not exist (names the flag).
        StoreError: a store cannot be opened.
    """
    from qtd.brokers.shadow import format_report, tracking_report

    shadow_bot, live_bot = args.shadow_bot or args.bot, args.live_bot or args.bot
    for flag, value in (("--shadow-bot", shadow_bot), ("--live-bot", live_bot)):
        if not value:
            raise ConfigError(f"{flag}: required (or --bot for twins sharing a name)",
                              source="<arg>", field=flag, value=value, rule="required")
    live_db = args.live_db or args.shadow_db
    for flag, db in (("--shadow-db", args.shadow_db), ("--live-db", live_db)):
        if not Path(db).is_file():
            raise ConfigError(f"{flag} {db}: no such file", source="<arg>", field=flag,
                              value=str(db), rule="an existing events.db")
    report = await tracking_report(Path(args.shadow_db), shadow_bot, Path(live_db), live_bot,
                                   since_ns=args.since, until_ns=args.until)
    out.write((msgspec.json.encode(report).decode() if args.json else format_report(report))
              + "\n")
    return 0


def _run_surveil(args: argparse.Namespace) -> int:
    args.db = db_from_args(args)
    return asyncio.run(run_surveil(args))


async def run_surveil(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run ``qtd surveil``; returns :data:`EXIT_FINDINGS` when something was found."""
    from qtd.quality.event_files import read_events
    from qtd.quality.render import findings_text
    from qtd.quality.surveil import SurveilConfig, Surveillance

    cfg = parse_overrides(args.settings, SurveilConfig, "--set")
    sv = Surveillance(cfg)
    n = 0
    async for batch in read_events(args.db, args.since, args.until):
        sv.feed_many(batch)
        n += len(batch)
    if args.json:
        doc = {"db": str(args.db), "events": n, "config": cfg, "findings": sv.findings}
        out.write(msgspec.json.encode(doc).decode() + "\n")
    else:
        out.write(f"{args.db}: {n} events scanned\n" + findings_text(sv.findings) + "\n")
    return EXIT_FINDINGS if sv.findings else 0


def _run_daily(args: argparse.Namespace) -> int:
    args.db = db_from_args(args)
    return asyncio.run(run_daily(args))


async def run_daily(args: argparse.Namespace, out: TextIO = sys.stdout,
                    now_ns: int | None = None) -> int:
    """Run ``qtd report daily``; returns the exit status. The trading day is the fleet's
    (:func:`qtd.commands.dayrule.resolve_trading_day`: --tz/--rollover, --leader-config, the
    leader.toml ``qtd up`` generated beside the store, else UTC 00:00)."""
    import time

    from qtd.commands.dayrule import beside, resolve_trading_day
    from qtd.quality.daily import build_daily, format_daily, previous_day

    td, rule = resolve_trading_day(args.tz, args.rollover, args.leader_config, args.db)
    currency = "USD"
    cfg = args.leader_config or beside(args.db)
    if cfg is not None and rule.source.endswith("[fleet]"):
        from qtd.leader.config import load_leader_config

        currency = load_leader_config(cfg).fleet.currency
    now = now_ns or time.time_ns()
    day = args.date or previous_day(now, td)
    try:
        report = await build_daily(args.db, day, td)
    except ValueError:
        raise ConfigError(f"--date {day!r}: must be YYYY-MM-DD", source="<arg>", field="date",
                          value=day, rule="ISO date") from None
    if args.json:
        out.write(msgspec.json.encode(report).decode() + "\n")
    else:
        title, body = format_daily(report, currency)
        which = "" if args.date else " (the last that ended)"
        out.write(f"{title}\ntrading day {day}{which}: {rule.describe()}; today is "
                  f"{td.label(now)}\n\n{body}\n")
    return 0


def _run_drift(args: argparse.Namespace) -> int:
    args.db = db_from_args(args)
    return asyncio.run(run_drift(args))


async def run_drift(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run ``qtd report drift``; returns :data:`EXIT_FINDINGS` on a failed gate or decay."""
    from qtd.events import Fill, OrderIntent
    from qtd.feeds import Bar
    from qtd.quality.drift import (
        DriftConfig,
        align_fills,
        bars_seen,
        compare,
        replay_backtest,
        same_time_base,
    )
    from qtd.quality.event_files import read_events
    from qtd.sweep import Job, load_data

    cfg = msgspec.convert({"gate": args.gate, "window": args.window, "floor": args.floor},
                          DriftConfig) if args.window >= 3 else None
    if cfg is None:
        raise ConfigError(f"--window {args.window}: must be >= 3 bars", source="<arg>",
                          field="window", value=args.window, rule=">= 3")
    job = Job(target=args.config, data=args.data, symbol=args.symbol or "", cash=args.capital,
              commission_bps=args.commission_bps, slippage_bps=args.slippage_bps,
              fill_at=args.fill, risk=args.risk or "")
    items = [i for i in load_data(args.data, args.symbol or "") if isinstance(i, Bar)]
    events = [e async for batch in read_events(args.db) for e in batch]
    bot = args.bot
    if bot is None:
        from qtd.admit.config import load_bot_config

        loaded, problems = load_bot_config(Path(args.config))
        if loaded is None:
            raise ConfigError(f"{args.config}: " + "; ".join(str(p) for p in problems),
                              source=args.config)
        bot = loaded.config.name
    mine = [e for e in events if e.bot == bot]
    if not mine:
        raise ConfigError(f"--bot {bot!r}: no events of this bot in {args.db}",
                          source="<arg>", field="bot", value=bot, rule="a bot in the store")
    fills = [e for e in mine if isinstance(e, Fill)]
    until = args.until if args.until is not None else mine[-1].ts_event + 1
    bars = bars_seen(items, args.since, until)
    note = ""
    if not same_time_base(fills, items):
        aligned = align_fills(fills, [e for e in mine if isinstance(e, OrderIntent)], items)
        fills, bars = aligned.fills, aligned.bars
        note = (f"time base: {args.db}'s clock is not the bars' (an accelerated replay such "
                f"as `qtd up`): {len(fills)} live fill(s) placed on the bars their orders "
                f"were decided on (decision price = bar close)"
                + (f", {aligned.unmatched} without a matching bar left out"
                   if aligned.unmatched else "")
                + (f", the last of {aligned.passes} passes over the data"
                   if aligned.passes > 1 else ""))
    if bars and args.symbol is None:
        sym = _bot_symbol(mine)
        if sym and bars[0].symbol != sym:
            bars = [msgspec.structs.replace(b, symbol=sym) for b in bars]
    _, replay = await replay_backtest(job, bars)
    try:
        rep = compare(bot, bars, fills, replay, args.capital, cfg)
    except ValueError as exc:
        raise ConfigError(f"--data {args.data} / --since / --until: {exc}", source="<arg>",
                          field="data", value=args.data, rule=">= 3 bars") from None
    rep = msgspec.structs.replace(rep, note=note)
    if args.json:
        out.write(msgspec.json.encode(rep).decode() + "\n")
    else:
        out.write(_drift_text(rep) + "\n")
    return EXIT_FINDINGS if not rep.gate_ok or rep.decay else 0


def _bot_symbol(events: list[Any]) -> str:
    for e in events:
        sym = getattr(e, "symbol", "")
        if type(e).__name__ == "OrderIntent" and sym:
            return str(sym)
    return ""


def _drift_text(r: Any) -> str:
    def f(x: float | None, fmt: str) -> str:
        return "n/a" if x is None else format(x, fmt)

    return "\n".join([
        f"drift of {r.bot} on {r.symbol}: {r.bars} bars",
        f"  live      fills {r.live_fills:>5}  PnL {r.live_pnl:>14,.2f}  Sharpe "
        f"{r.live_sharpe:.3f}",
        f"  backtest  fills {r.backtest_fills:>5}  PnL {r.backtest_pnl:>14,.2f}  Sharpe "
        f"{r.backtest_sharpe:.3f}",
        f"  Sharpe fraction {f(r.sharpe_fraction, '.1%')} (gate >= {r.gate:.0%}: "
        f"{'ok' if r.gate_ok else 'FAILED'})",
        f"  tracking error  {r.tracking_error:.2%} per year",
        f"  rolling Sharpe  last {f(r.rolling_sharpe, '.3f')}  min {f(r.rolling_min, '.3f')}"
        f"  floor {r.floor:g}: {'DECAY' if r.decay else 'ok'}",
    ] + ([f"  {r.note}"] if r.note else []))
