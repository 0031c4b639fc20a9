"""``qtd up``: the whole fleet on one machine (see :mod:`qtd.up`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from qtd.fleetctx import DEFAULT_STATE_DIR, STATE_ENV
from qtd.up import DEFAULT_BARS_PER_S, UpOptions, run_up
from qtd.up.configs import TICKS_PER_BAR


def add_parser(sub: Any) -> None:
    """Add ``up`` to the ``qtd`` parser."""
    p = sub.add_parser(
        "up", help="the whole fleet on one machine: nats-server, a leader, agents, real data",
        description="Starts a private nats-server (JetStream in STATE/nats), a leader and "
        "--agents agent processes, each running several of the etc/bots/ bots on bundled "
        "real market data through paper brokers, and shows a live summary (a table redrawn "
        "in place every second on a terminal; otherwise the table once, then one line per "
        "change of a bot's or node's state, the kill switch or the open alerts, and a fleet "
        "total a minute). Every bot is admitted first: if any is refused, each is listed "
        "with its reason and nothing starts (exit 78). "
        "Ctrl-C (or SIGTERM, or --duration) stops the agents, then the leader, then "
        "nats-server; the stores stay, and the next `qtd up` on the same state directory "
        "resumes from them. Logs in STATE/logs, generated configs in STATE/etc.",
    )
    p.add_argument("--state-dir", default=os.environ.get(STATE_ENV) or DEFAULT_STATE_DIR,
                   type=Path, metavar="STATE", help=f"state directory (default ${STATE_ENV}, "
                   f"else ./{DEFAULT_STATE_DIR}); operator commands run from this directory "
                   "(or with --context STATE) find the fleet through STATE/context.json")
    p.add_argument("--agents", type=_positive_int, metavar="N",
                   help="agent processes (default: as last time on this state dir, else 2)")
    p.add_argument("--speed", type=_positive_float, default=DEFAULT_BARS_PER_S,
                   metavar="BARS_PER_S", help="replay pace: bars per second per series; a "
                   f"tick series plays {TICKS_PER_BAR} trades per bar; a series too short "
                   "to last 15 minutes at the default pace plays slower, so a default run "
                   f"of 15 minutes loops none (default {DEFAULT_BARS_PER_S:g})")
    p.add_argument("--duration", type=_positive_float, metavar="S",
                   help="stop after S seconds (default: run until Ctrl-C)")
    p.add_argument("--config", type=Path, metavar="DIR",
                   help="generate the fleet from this etc/-like directory (default: the "
                   "etc/ shipped with qtd)")
    p.add_argument("--open", action="store_true",
                   help="open the status page in a browser once the leader answers (says "
                   "so and prints the URL when no browser can be started)")
    p.add_argument("--stop-timeout", type=_positive_float, default=20.0, metavar="S",
                   help="seconds each process gets after SIGTERM before SIGKILL")
    p.set_defaults(handler=run_up_command)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def run_up_command(args: argparse.Namespace) -> int:
    """Run ``qtd up`` with the parsed arguments."""
    opts = UpOptions(state_dir=args.state_dir, agents=args.agents, bars_per_s=args.speed,
                     duration_s=args.duration, config_dir=args.config,
                     stop_timeout_s=args.stop_timeout, clear=sys.stdout.isatty(),
                     open_browser=args.open)
    return asyncio.run(run_up(opts))
