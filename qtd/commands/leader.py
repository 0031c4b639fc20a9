"""``qtd leader --config etc/leader.toml`` and the operator commands it answers:
``qtd resume``, ``qtd ack ALERT_ID``, ``qtd alerts``.

The operator commands are NATS requests to the running leader
(``<prefix>.ctl.leader.<verb>``): it does the work and audits it in fleet.db. Without a
leader they fail with exit status 75 (temporary) and say so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client

from qtd import sdnotify
from qtd.agent.logs import setup_json_logging
from qtd.commands.fleet import add_connection_args, bus_from_args, on_fleet
from qtd.commands.operator import add_operator
from qtd.errors import OperationalError, TemporaryError
from qtd.events import Scope
from qtd.leader.config import LeaderConfig, load_leader_config
from qtd.leader.daemon import CommandRequest, Leader

DEFAULT_CONFIG = "etc/leader.toml"


def add_parsers(sub: Any) -> None:
    """Add ``leader``, ``resume``, ``ack`` and ``alerts`` to the ``qtd`` parser."""
    p = sub.add_parser("leader", help="run the fleet leader (fleet view, caps, kill, paging)",
                       description="Consumes every agent's events from JetStream into "
                       "fleet.db, keeps the fleet view, enforces the fleet caps, owns the "
                       "global kill switch and pages on-call. Runs until SIGTERM/SIGINT.")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="leader config (TOML)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    p.set_defaults(handler=run_leader)
    r = sub.add_parser("resume", help="release kills (operator and reason required)",
                       description="Asks the leader to release kills. The kill state is a "
                       "set: each kill is released on its own, by id (--kill-id, as `qtd "
                       "kill` and the status page show it), by scope (--scope/--key: every "
                       "kill on exactly that scope), or --all. With none of these the only "
                       "active kill is released; with several active the leader refuses and "
                       "lists them. Released kills leave the KV set; every agent is told to "
                       "resume each released scope that no remaining kill holds; audited in "
                       "fleet.db. The reply lists the kills still active.")
    add_operator(r)
    r.add_argument("--reason", required=True, help="why")
    r.add_argument("--kill-id", action="append", default=[], dest="kill_ids",
                   help="release this kill (repeatable)")
    r.add_argument("--scope", choices=["global", "account", "strategy", "symbol"],
                   help="release every kill on this scope (with --key unless global)")
    r.add_argument("--key", default="", help="account, bot or symbol of --scope")
    r.add_argument("--all", action="store_true", dest="everything",
                   help="release every active kill")
    add_connection_args(r)
    r.set_defaults(handler=lambda a: run_command(a, "resume", CommandRequest(
        operator=a.operator, reason=a.reason, kill_ids=a.kill_ids, key=a.key,
        scope=Scope(a.scope.upper()) if a.scope else None, everything=a.everything)))
    k = sub.add_parser("ack", help="acknowledge an alert (stops P1 repeats)")
    k.add_argument("alert_id", metavar="ALERT_ID")
    k.add_argument("--operator", default="", help="who")
    add_connection_args(k)
    k.set_defaults(handler=lambda a: run_command(a, "ack", CommandRequest(
        alert_id=a.alert_id, operator=a.operator)))
    al = sub.add_parser("alerts", help="list the leader's open alerts")
    add_connection_args(al)
    al.add_argument("--json", action="store_true", help="JSON instead of a table")
    al.set_defaults(handler=lambda a: run_command(a, "alerts", CommandRequest()))


def run_leader(args: argparse.Namespace) -> int:
    """Load the config, log JSON to stdout, run the leader until SIGTERM/SIGINT."""
    cfg = load_leader_config(args.config)
    setup_json_logging("leader", level=getattr(logging, args.log_level))
    return asyncio.run(_leader_main(cfg))


async def _leader_main(cfg: LeaderConfig) -> int:
    leader = Leader(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await leader.start()
    sdnotify.ready("leading")
    watchdog = asyncio.create_task(_watchdog(stop), name="qtd-leader-watchdog")
    try:
        done = asyncio.ensure_future(leader.wait())
        await asyncio.wait([done, asyncio.ensure_future(stop.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        sdnotify.stopping("draining")
        watchdog.cancel()
        await leader.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    if done.done() and not done.cancelled() and done.exception() is not None:
        raise OperationalError(f"leader task failed: {done.exception()!r}")
    return 0


async def _watchdog(stop: asyncio.Event) -> None:
    interval = sdnotify.watchdog_interval_s()
    while interval and not stop.is_set():
        sdnotify.watchdog()
        await asyncio.sleep(interval)


def run_command(args: argparse.Namespace, verb: str, req: CommandRequest) -> int:
    """Send one command to the running leader and print its reply."""
    bus = bus_from_args(args, f"qtd-{verb}")
    reply = asyncio.run(on_fleet(bus, verb, lambda nc: _request(nc, bus.prefix, verb, req)))
    if not reply.get("ok"):
        raise OperationalError(f"leader refused {verb}: {reply.get('error', '?')}")
    if verb == "alerts" and not getattr(args, "json", False):
        for a in reply["alerts"]:
            print(f"{a['alert_id']}  {a['severity']}  {a['status']:<6}  {a['title']}")
        if not reply["alerts"]:
            print("no open alerts")
    else:
        print(json.dumps(reply, indent=2, sort_keys=True))
    return 0


async def _request(nc: Client, prefix: str, verb: str, req: CommandRequest
                   ) -> dict[str, Any]:
    try:
        msg = await nc.request(f"{prefix}.ctl.leader.{verb}", msgspec.json.encode(req),
                               timeout=10)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
        raise TemporaryError(f"no leader answered {verb} ({type(exc).__name__}): is "
                             "`qtd leader` running?") from None
    result: dict[str, Any] = msgspec.json.decode(msg.data)
    return result
