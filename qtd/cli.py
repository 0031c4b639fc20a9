"""The ``qtd`` command. Subcommands are thin: parse, call the library, print.

Exit status (one place, :func:`qtd.errors.exit_code_for`): 0 ok, 1 unexpected error,
2 operational error (a human must act), 75 temporary error (retry), 78 bad config or input,
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from qtd import __version__
from qtd.costs import DEMO_COMMISSION_BPS, DEMO_SLIPPAGE_BPS
from qtd.errors import ConfigError, QtdError, exit_code_for, operator_error

Handler = Callable[[argparse.Namespace], int]

EPILOG = """\
examples:
  qtd events --db state/node-a/events.db --tail 20        last 20 events as a table
  qtd events --db events.db --bot momo --kind Fill --json  one JSON object per line
  qtd events --db events.db --cid node-a.momo.x1y2z3.17    one order's whole story
  qtd events --db events.db --follow                       keep printing new events
  qtd positions --db events.db --tz America/New_York --rollover 17:00
  qtd validate etc/                                        admit every bot and routes.toml
  qtd route explain SPX --at 2018-12-24T15:00:00-05:00     which strategy, and why
  qtd agent --config etc/agent.toml                        run the agent daemon
  qtd preflight --config etc/agent.toml                    pre-deploy checklist (exit 2)
  qtd kill --reason 'runaway bot' --operator alice         halt every agent (NATS)
  qtd kill --local --config etc/agent.toml --reason 'NATS down'   this host (kill file)
  qtd leader --config etc/leader.toml                     run the fleet leader
  qtd resume --operator alice --reason 'root cause fixed'  release the kill switch
  qtd alerts / qtd ack 3f2a9c1b                            open alerts; stop a P1 repeat
  qtd backtest strategies/ma_cross.py --data goog_1d --plot eq.html   report + chart
  qtd backtest etc/bots/momo-goog.toml --data goog_1d --gate          promotion gates
  qtd backtest strategies/ma_cross.py --data goog_1d --sweep fast=5:30:5 slow=20:100:10
  qtd up                                                   the fleet on this machine
  qtd up --agents 3 --speed 50 --duration 60               faster, stops after a minute
  qtd deploy etc/ --dry-run / qtd versions / qtd rollback BOT    fleet deploys
  qtd report execution --db qtd-state/leader/fleet.db      latency, slippage, fill rates
  qtd report shadow --shadow-db A/events.db --live-db B/events.db --bot X   shadow vs live
  qtd surveil --db qtd-state/leader/fleet.db               wash, spoofing, layering checks
  qtd recover --config etc/agent.toml --creds leader.creds  a store behind JetStream: refill it
  qtd node add node-c --accounts alpaca-live               a new server's bundle (ops node)
  qtd node install qtd-node-node-c.tar.gz                  ...installed on that server
"""


def parse_time(text: str) -> int:
    """Parse ``--since``/``--until``: integer UTC ns, or ISO 8601 (naive means UTC).

    Raises:
        ConfigError: neither form.
    """
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"time {text!r}: must be integer UTC nanoseconds or ISO 8601 "
            "(e.g. 2026-11-25T14:30:00Z)",
            source="<arg>", field="time", value=text, rule="ns or ISO 8601",
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1_000_000) * 1000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qtd",
        description="qtd — trading-operations daemon: strategies, risk in the order path, "
        "an SQLite event store per process, fleet telemetry over NATS.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"qtd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_events(sub)
    _add_positions(sub)
    _add_data(sub)
    _add_up(sub)
    _add_validate(sub)
    _add_route(sub)
    _add_agent(sub)
    _add_leader(sub)
    _add_backtest(sub)
    _add_preflight(sub)
    _add_deploy(sub)
    _add_report(sub)
    _add_recover(sub)
    _add_node(sub)
    return parser


def _add_node(sub: Any) -> None:
    from qtd.commands.node import add_parsers

    add_parsers(sub)


def _add_recover(sub: Any) -> None:
    from qtd.commands.recover import add_parser

    add_parser(sub)


def _add_report(sub: Any) -> None:
    from qtd.commands.report import add_parsers

    add_parsers(sub, parse_time)


def _add_deploy(sub: Any) -> None:
    from qtd.commands.deploy import add_parsers

    add_parsers(sub)


def _add_agent(sub: Any) -> None:
    from qtd.commands.agent import add_parsers

    add_parsers(sub)


def _add_leader(sub: Any) -> None:
    from qtd.commands.leader import add_parsers

    add_parsers(sub)


def _add_preflight(sub: Any) -> None:
    from qtd.commands.preflight import add_parsers

    add_parsers(sub)


def _add_backtest(sub: Any) -> None:
    p = sub.add_parser(
        "backtest", help="backtest a strategy or bot config on the live order path",
        description="Replays bars through the bot runner, risk engine, order router and a "
        "paper broker (market orders at the next bar's open by default), writes every event "
        "to a new SQLite store (open it with `qtd events --db`), prints the report. "
        "Exit 3 when --gate finds failing gates, 4 when the bot was halted during the run "
        "(a strategy error or a circuit breaker: said at the top of the report).",
    )
    p.add_argument("target", metavar="STRATEGY_OR_BOT_CONFIG", help="strategy .py or bot .toml")
    p.add_argument("--data", required=True, help="a data set (qtd data list): bundled name, "
                   "catalog venue:SYMBOL:interval, or a symbol one set has; or a bar file")
    p.add_argument("--symbol", help="symbol to trade (default: the bot's, else the data's)")
    p.add_argument("--cash", type=float, default=100_000.0, help="starting cash")
    p.add_argument("--params", nargs="+", metavar="K=V", help="param overrides")
    p.add_argument("--db", help="event store to create (default: backtest-<name>-<time>.db)")
    p.add_argument("--risk", help="risk file (default: the bot's, else permissive limits)")
    p.add_argument("--json", action="store_true", help="JSON report on stdout")
    p.add_argument("--plot", metavar="FILE", help="equity/drawdown chart (.html or .png)")
    p.add_argument("--gate", action="store_true", help="check promotion gates; exit 3 if any "
                   "fails (recorded as <bot config>.gate.json for a bot config)")
    p.add_argument("--gate-threshold", action="append", metavar="NAME=VALUE",
                   help="override a gate: sharpe, max_drawdown, win_rate, profit_factor")
    p.add_argument("--sweep", nargs="+", metavar="K=A:B:STEP", help="parameter grid")
    p.add_argument("--rank-by", default="sharpe", help="sweep ranking (a report field)")
    p.add_argument("--top", type=int, default=20, help="sweep rows shown")
    p.add_argument("--workers", type=int, help="sweep processes (default: all cores)")
    p.add_argument("--commission-bps", type=float, default=DEMO_COMMISSION_BPS,
                   help="bps of notional (default: the demo's paper accounts, "
                   f"{DEMO_COMMISSION_BPS:g})")
    p.add_argument("--commission-per-unit", type=float, default=0.0, help="per unit filled")
    p.add_argument("--slippage-bps", type=float, default=DEMO_SLIPPAGE_BPS,
                   help="market/stop fills, bps (default: the demo's paper accounts, "
                   f"{DEMO_SLIPPAGE_BPS:g})")
    p.add_argument("--fill", choices=["next_open", "close"], default="next_open",
                   help="market orders fill at the next bar's open or this bar's close")
    p.add_argument("--latency-ms", type=float, default=0.0, help="order latency, ms")
    p.add_argument("--isolate", action="store_true", help="run the strategy's hooks in a "
                   "worker process, through the same transport the live agent uses, instead "
                   "of inline in this process: the same run and event log, but several "
                   "times slower (a process round trip per hook, plus starting the worker). "
                   "Use it to check that a strategy behaves identically in its worker as the "
                   "live agent runs it; leave it off for research and sweeps. With --sweep, "
                   "each run gets its own worker.")
    p.set_defaults(handler=_run_backtest)


def _run_backtest(args: argparse.Namespace) -> int:
    from qtd.commands.backtest import run_backtest_command

    return run_backtest_command(args)


def _add_validate(sub: Any) -> None:
    p = sub.add_parser(
        "validate", help="admit bot configs, strategies, params and routes (CI gate)",
        description="Checks every bot config (etc/bots/*.toml) and routes.toml under the "
        "given files or directories: strategy imports, params schema, cross-field rules, "
        "order notional vs risk limits, instrument per venue, a smoke backtest on bundled "
        "real data. Lists every error (file, field, value, rule); exit 78 on any error.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="bot config, routes.toml or dir")
    p.add_argument("--db", help="record StrategyAdmitted events in this events.db")
    p.add_argument("--node", default="local", help="node name stamped on events")
    p.add_argument("--no-smoke", action="store_true", help="skip the smoke backtests")
    p.add_argument("--strict", action="store_true", help="exit 78 on warnings too (a bot "
                   "the risk engine halted during its smoke backtest is a WARN)")
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.set_defaults(handler=_run_validate)


def _add_route(sub: Any) -> None:
    p = sub.add_parser("route", help="pattern-to-strategy routes")
    rsub = p.add_subparsers(dest="route_command", metavar="ACTION", required=True)
    ex = rsub.add_parser(
        "explain", help="show every route rule tried for a symbol and why",
        description="Evaluates etc/routes.toml in order for SYMBOL (first match wins) and "
        "prints each rule's conditions. The regime is classified on the bundled bars of "
        "the symbol (or --dataset) up to --at; exit 1 if no rule matches.",
    )
    ex.add_argument("symbol", metavar="SYMBOL")
    ex.add_argument("--venue", help="venue (default: the first venue listing SYMBOL)")
    ex.add_argument("--routes", default="etc/routes.toml", help="routes file")
    ex.add_argument("--at", type=parse_time, help="time to route at (ISO 8601 or UTC ns)")
    ex.add_argument("--dataset", help="bundled data set for the regime (qtd data list)")
    ex.add_argument("--regime", choices=["trend", "range", "high_vol"],
                    help="use this regime instead of classifying")
    ex.set_defaults(handler=_run_route_explain)


def _run_validate(args: argparse.Namespace) -> int:
    from qtd.commands.validate import run_validate

    return asyncio.run(run_validate(args))


def _run_route_explain(args: argparse.Namespace) -> int:
    import time

    from qtd.commands.route import run_route_explain

    args.now_ns = time.time_ns()
    return run_route_explain(args)


def _add_events(sub: Any) -> None:
    p = sub.add_parser(
        "events", help="query or tail an event store",
        description="Print events from a store, oldest first (or the last N with --tail). "
        "Filters combine with AND. Opens the store read-only: safe while an agent runs. "
        "On the leader's fleet.db (every node's events) each line starts with its node and "
        "--after-seq is the ingest id.",
    )
    _store_args(p)
    p.add_argument("--bot", help="only this bot")
    p.add_argument("--kind", action="append", help="event kind, e.g. Fill (repeatable)")
    p.add_argument("--symbol", help="only this symbol")
    p.add_argument("--cid", help="only this client_order_id")
    p.add_argument("--since", type=parse_time, help="ts_event >= this (ISO 8601 or UTC ns)")
    p.add_argument("--until", type=parse_time, help="ts_event < this (ISO 8601 or UTC ns)")
    p.add_argument("--after-seq", type=int, default=0, help="only seq > N")
    p.add_argument("--limit", type=int, help="at most N events (oldest first)")
    p.add_argument("--tail", type=int, help="the last N matching events")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.set_defaults(handler=_run_events)


def _add_positions(sub: Any) -> None:
    p = sub.add_parser(
        "positions", help="positions and PnL rebuilt from an event store",
        description="Replays an agent's events.db or the leader's fleet.db (per node) into "
        "projections and prints positions (average-cost netting) marked to the last price "
        "the store saw for each symbol, and PnL by bot and trading day. Realized PnL is net "
        "of fees, as on the status page; quantities in instrument units, money in the "
        "account currency. The trading day is the fleet's: --tz/--rollover, else "
        "--leader-config, else the leader.toml `qtd up` generated beside the store, else "
        "UTC 00:00 (the output says which).",
    )
    _store_args(p)
    p.add_argument("--tz", help="time zone of the trading day (IANA name)")
    p.add_argument("--rollover", help="local HH:MM when a trading day starts")
    p.add_argument("--leader-config", help="take the trading day from this leader.toml "
                   "([fleet]) or agent TOML ([trading_day])")
    p.add_argument("--json", action="store_true", help="JSON instead of tables")
    p.set_defaults(handler=_run_positions)


def _store_args(p: argparse.ArgumentParser) -> None:
    from qtd.commands.fleet import add_store_args

    add_store_args(p, db_help="an events.db (or the leader's fleet.db)", node=True)


def _add_data(sub: Any) -> None:
    from qtd.commands.data import add_actions

    p = sub.add_parser("data", help="market data: bundled sets and the local Parquet catalog")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    add_actions(dsub)  # list, import, verify
    from qtd.commands.fetch import add_parser as add_fetch  # qtd data fetch

    add_fetch(dsub)


def _add_up(sub: Any) -> None:
    from qtd.commands.up import add_parser

    add_parser(sub)


def _run_events(args: argparse.Namespace) -> int:
    from qtd.commands.events import run_events
    from qtd.commands.fleet import db_from_args

    args.db = db_from_args(args)
    return asyncio.run(run_events(args))


def _run_positions(args: argparse.Namespace) -> int:
    from qtd.commands.events import run_positions
    from qtd.commands.fleet import db_from_args

    args.db = db_from_args(args)
    return asyncio.run(run_positions(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qtd`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        handler: Handler = args.handler
        return handler(args)
    except QtdError as exc:
        print(f"qtd: error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except BaseExceptionGroup as group:  # a daemon's task group stopped on a QtdError
        err = operator_error(group)
        if err is None:
            raise
        print(f"qtd: error: {err}", file=sys.stderr)
        return exit_code_for(err)
    except KeyboardInterrupt as exc:
        return exit_code_for(exc)
    except BrokenPipeError:  # `qtd events | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
