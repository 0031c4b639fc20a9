"""``qtd preflight --config etc/agent.toml``: the pre-deploy checklist as a table."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, TextIO

from qtd.agent.config import load_agent_config
from qtd.errors import OperationalError
from qtd.preflight import (
    DEFAULT_MIN_FREE_BYTES,
    DEFAULT_NATS_TIMEOUT_S,
    failed,
    format_table,
    run_preflight,
)


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "preflight", help="pre-deploy checklist for an agent config (CI / ExecStartPre)",
        description="Checks an agent config before a deploy: bot configs admitted (no smoke "
        "backtest), risk file valid, events.db integrity (read-only quick_check), disk free "
        "at state_dir, NATS reachable, QTD_EVENTS stream and qtd_control KV bucket present. "
        f"Prints a table; exit 0 when nothing failed, {OperationalError.exit_code} when a "
        "check failed, 78 when the agent config itself does not load.",
    )
    p.add_argument("--config", required=True, help="agent config (etc/agent.toml)")
    p.add_argument("--min-free-mb", type=int, default=DEFAULT_MIN_FREE_BYTES // 2**20,
                   help="disk free below this at state_dir fails (MiB)")
    p.add_argument("--nats-timeout", type=float, default=DEFAULT_NATS_TIMEOUT_S,
                   help="seconds to wait for NATS")
    p.set_defaults(handler=run_preflight_command)


def run_preflight_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run the checklist, print the table; 0 if no check failed, else 2."""
    out = out or sys.stdout
    cfg = load_agent_config(args.config)  # ConfigError -> exit 78 in qtd.cli.main
    checks = asyncio.run(run_preflight(cfg, min_free_bytes=args.min_free_mb * 2**20,
                                       nats_timeout_s=args.nats_timeout))
    out.write(format_table(checks) + "\n")
    bad = sum(c.status == "FAIL" for c in checks)
    out.write(f"{len(checks)} check(s), {bad} failed\n")
    out.flush()
    return OperationalError.exit_code if failed(checks) else 0
