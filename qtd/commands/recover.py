"""``qtd recover --config AGENT.toml``: write back into a stopped agent's store the events
JetStream holds and the store lost (:mod:`qtd.recovery`)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import msgspec
import nats.errors
import nats.js.errors

from qtd.agent.config import load_agent_config
from qtd.bus import BusConfig, Subjects, connect
from qtd.errors import ConfigError, OperationalError
from qtd.recovery import Recovery, recover
from qtd.store import EventStore

DESCRIPTION = """\
An agent whose event store went backwards (its WAL deleted after a crash, an older copy of
events.db restored) refuses to trade: it halts GLOBAL, publishes nothing, logs "store behind
the stream" and the leader pages P1 (store:<node>). JetStream still holds the events the
store lost. With the agent STOPPED, this command:

  1. reads the node's last event in QTD_EVENTS and checks that the store is behind it;
  2. reads the node's events of this store's incarnation from the stream, from --lookback-s
     before the store's last event that predates the loss;
  3. finds the fork: the first seq where the store lacks the stream's event, and checks
     continuity (the store's event just before it is the stream's, and the stream has every
     seq from there to its last);
  4. in one transaction, writes the stream's events back at their own seqs and re-appends
     after them, with new seqs, the events the store stored after the loss (never published;
     also written to events.db.local-<first>-<last>.jsonl): nothing is dropped;
  5. sets the outbox watermark to the stream's last seq.

The refusal (GLOBAL HALTED) stays in the history: check the positions (qtd positions --db
<state_dir>/events.db), start the agent, then resume it. Nothing changes with --dry-run, or
when a check fails (the error names the seq).

Credentials: the agent's NATS login may read only its own node's LAST event
(qtd/bus/logins.py); reading the tail needs a login that may create a consumer on
QTD_EVENTS, e.g. the leader's: --creds with the leader's .creds file.
"""

EPILOG = """\
examples:
  systemctl stop qtd-agent
  qtd recover --config /etc/qtd/agent.toml --creds leader.creds --dry-run
  qtd recover --config /etc/qtd/agent.toml --creds leader.creds
  systemctl start qtd-agent          # starts HALTED; check, then: qtd resume ...

exit status: 0 recovered (or would be, with --dry-run); 2 nothing to recover or a check
failed (store unchanged); 75 NATS not reachable; 78 bad arguments or config.
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``recover`` to the ``qtd`` command."""
    p = sub.add_parser(
        "recover", help="write back into a stopped agent's store the events JetStream holds "
        "and the store lost", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the agent's TOML (store, node, [bus])")
    p.add_argument("--creds", metavar="FILE", help="a NATS login that may read QTD_EVENTS, "
                   "e.g. the leader's .creds (default: the agent's own, which may not: "
                   "qtd/bus/logins.py)")
    p.add_argument("--lookback-s", type=float, default=600.0, metavar="S",
                   help="read the stream from S seconds before the store's last event that "
                   "predates the loss (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="check and report, change nothing")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(handler=run_recover)


def run_recover(args: argparse.Namespace) -> int:
    """Run ``qtd recover``; returns the exit status."""
    cfg = load_agent_config(args.config)
    if cfg.bus is None:
        raise ConfigError(f"{args.config}: no [bus] section: recovery reads JetStream",
                          source=args.config, field="bus", value=None, rule="required")
    if args.lookback_s <= 0:
        raise ConfigError(f"--lookback-s {args.lookback_s}: must be > 0 seconds",
                          source="<arg>", field="lookback_s", value=args.lookback_s,
                          rule="> 0")
    bus = msgspec.structs.replace(cfg.bus, name="qtd-recover", initial_connect_timeout=5.0)
    if args.creds:
        bus = msgspec.structs.replace(bus, creds_file=args.creds, creds_credential=None,
                                      user=None, password=None, password_credential=None,
                                      token=None, token_credential=None,
                                      nkey_seed_file=None, nkey_seed_credential=None)
    store_path = Path(cfg.store_path)
    if not store_path.exists():
        raise OperationalError(f"{store_path}: no event store here", path=str(store_path))
    report = asyncio.run(_recover(bus, args, store_path, cfg.node))
    if args.json:
        print(json.dumps(msgspec.to_builtins(report)))
    else:
        print(describe(report, store_path, args.dry_run))
    return 0


async def _recover(bus: BusConfig, args: argparse.Namespace, path: Path, node: str
                   ) -> Recovery:
    nc = await connect(bus, source=args.config)
    try:
        async with await EventStore.open(path, node=node) as store:
            return await recover(store, nc.jetstream(), Subjects(bus.prefix),
                                 lookback_s=args.lookback_s, dry_run=args.dry_run)
    except (nats.errors.TimeoutError, nats.js.errors.Error) as exc:
        raise OperationalError(
            f"cannot read QTD_EVENTS as NATS login {bus.creds_file or '(config)'} ({exc!r}): "
            "a login that may create a consumer on it is needed, e.g. --creds leader.creds",
            creds=bus.creds_file) from None
    finally:
        await nc.drain()


def describe(r: Recovery, path: Path, dry_run: bool) -> str:
    """The report for an operator."""
    verb = "would restore" if dry_run else "restored"
    lines = [
        f"{path}: store last seq {r.store_last}, JetStream last seq {r.stream_last}",
        f"{verb} {r.restored} events from JetStream at seq {r.fork}..{r.stream_last}",
    ]
    if r.local:
        lines.append(f"{'would re-append' if dry_run else 're-appended'} {r.local} events the "
                     f"store held from seq {r.fork} on (stored after the loss, never "
                     f"published) after them" + (f"; copy: {r.local_file}" if r.local_file
                                                 else ""))
    lines.append(f"store last seq {'would be' if dry_run else 'now'} {r.last_seq}")
    if not dry_run:
        lines.append(f"next: qtd positions --db {path}; start the agent (it starts HALTED if "
                     "it refused before); resume it once the positions are right")
    return "\n".join(lines)
