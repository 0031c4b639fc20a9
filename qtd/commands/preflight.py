"""``qtd preflight --config etc/agent.toml``: the pre-deploy checklist as a table."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, TextIO

from qtd.agent.config import load_agent_config
from qtd.errors import OperationalError
from qtd.preflight import (
    DEFAULT_MAX_CLOCK_OFFSET_MS,
    DEFAULT_MAX_KILL_RTT_MS,
    DEFAULT_MIN_FREE_BYTES,
    DEFAULT_NATS_TIMEOUT_S,
    PreflightOptions,
    failed,
    format_table,
    run_preflight,
)


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "preflight", help="pre-deploy checklist for an agent config (CI / ExecStartPre)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Checks an agent config before a deploy and prints one row per check:\n"
        "  bot configs admitted (no smoke backtest), risk file valid, no live-stage bot\n"
        "  without an order-size, position and daily-loss limit, broker credentials present\n"
        "  for every non-paper account (and accepted by the venue where reachable),\n"
        "  events.db integrity (read-only quick_check), disk free at state_dir, clock vs\n"
        "  NTP (chronyc or timedatectl; skipped when neither answers), NATS reachable,\n"
        "  NATS auth on (a client without credentials is refused), QTD_EVENTS stream and\n"
        "  qtd_control KV present, kill switch round trip (a test-only key\n"
        "  preflight.<node> set and read back: nothing is halted) and the clock vs the\n"
        "  NATS server's.\n"
        f"Exit 0 when nothing failed (skipped rows do not fail), "
        f"{OperationalError.exit_code} when a check failed, 78 when a config does not load.",
        epilog="examples:\n"
        "  qtd preflight --config /etc/qtd/agent.toml\n"
        "      (everything with the agent's own NATS login: it may write only its own test\n"
        "      key preflight.<node>, read back by key as a kill is read)")
    p.add_argument("--config", required=True, help="agent config (etc/agent.toml)")
    p.add_argument("--min-free-mb", type=int, default=DEFAULT_MIN_FREE_BYTES // 2**20,
                   help="disk free below this at state_dir fails (MiB)")
    p.add_argument("--nats-timeout", type=float, default=DEFAULT_NATS_TIMEOUT_S,
                   help="seconds to wait for NATS")
    p.add_argument("--max-clock-offset-ms", type=float, default=DEFAULT_MAX_CLOCK_OFFSET_MS,
                   help="clock offset vs NTP or the NATS server above this fails (ms)")
    p.add_argument("--max-kill-rtt-ms", type=float, default=DEFAULT_MAX_KILL_RTT_MS,
                   help="kill switch round trip above this fails (ms)")
    p.add_argument("--no-broker-connect", action="store_true",
                   help="check broker credentials are present, do not log in to the venue")
    p.set_defaults(handler=run_preflight_command)


def run_preflight_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run the checklist, print the table; 0 if no check failed, else 2."""
    out = out or sys.stdout
    cfg = load_agent_config(args.config)  # ConfigError -> exit 78 in qtd.cli.main
    opts = PreflightOptions(
        min_free_bytes=args.min_free_mb * 2**20, nats_timeout_s=args.nats_timeout,
        max_clock_offset_ms=getattr(args, "max_clock_offset_ms", DEFAULT_MAX_CLOCK_OFFSET_MS),
        max_kill_rtt_ms=getattr(args, "max_kill_rtt_ms", DEFAULT_MAX_KILL_RTT_MS),
        broker_connect=not getattr(args, "no_broker_connect", False))
    checks = asyncio.run(run_preflight(cfg, options=opts))
    out.write(format_table(checks) + "\n")
    bad = sum(c.status == "FAIL" for c in checks)
    out.write(f"{len(checks)} check(s), {bad} failed\n")
    out.flush()
    return OperationalError.exit_code if failed(checks) else 0
