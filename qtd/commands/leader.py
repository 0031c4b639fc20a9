"""``qtd leader --config etc/leader.toml`` and the operator commands it answers:
``qtd resume``, ``qtd ack ALERT_ID``, ``qtd alerts``, ``qtd caps`` and ``qtd caps raise``.

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
from qtd.control import LeaderRequest
from qtd.errors import OperationalError, TemporaryError
from qtd.events import Scope
from qtd.leader.config import LeaderConfig, load_leader_config
from qtd.leader.daemon import start_leader
from qtd.proc import freeze_heap

DEFAULT_CONFIG = "etc/leader.toml"


def add_parsers(sub: Any) -> None:
    """Add ``leader``, ``resume``, ``ack``, ``alerts`` and ``caps`` to the ``qtd`` parser."""
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
                       "fleet.db. The reply lists the kills still active. A kill a fleet cap "
                       "tripped is not released while that cap is still over its limit: the "
                       "leader refuses the whole resume and says the cap, its value, its limit "
                       "and what to do (`qtd caps raise` lifts a limit for the trading day).")
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
    r.add_argument("--json", action="store_true", help="the leader's reply as JSON instead "
                   "of the summary")
    r.set_defaults(handler=lambda a: run_command(a, "resume", LeaderRequest(
        operator=a.operator, reason=a.reason, kill_ids=a.kill_ids, key=a.key,
        scope=Scope(a.scope.upper()) if a.scope else None, everything=a.everything)))
    k = sub.add_parser("ack", help="acknowledge an alert (stops P1 repeats)")
    k.add_argument("alert_id", metavar="ALERT_ID")
    k.add_argument("--operator", default="", help="who")
    add_connection_args(k)
    k.set_defaults(handler=lambda a: run_command(a, "ack", LeaderRequest(
        alert_id=a.alert_id, operator=a.operator)))
    al = sub.add_parser("alerts", help="list the leader's open alerts")
    add_connection_args(al)
    al.add_argument("--json", action="store_true", help="JSON instead of a table")
    al.set_defaults(handler=lambda a: run_command(a, "alerts", LeaderRequest()))
    _add_caps(sub)


def _add_caps(sub: Any) -> None:
    c = sub.add_parser("caps", help="the fleet caps: value, limit, today's overrides",
                       description="Lists the leader's fleet caps (value against the limit "
                       "in force, utilisation, tripped) and the overrides raised for today. "
                       "`qtd caps raise` lifts one cap's limit for the rest of the trading "
                       "day (until the [fleet] rollover), audited in fleet.db with who, why, "
                       "the old and the new limit; the configured limit is back at the "
                       "rollover.")
    add_connection_args(c)
    c.add_argument("--json", action="store_true", help="JSON instead of a table")
    c.set_defaults(handler=lambda a: run_command(a, "caps", LeaderRequest()))
    actions = c.add_subparsers(dest="action", metavar="ACTION")
    r = actions.add_parser("raise", help="raise a cap's limit for the rest of the trading day",
                           description="Raises CAP's limit (one of daily_loss, drawdown, "
                           "gross_exposure, symbol_exposure with --key SYMBOL, error_rate, "
                           "order_spike) above the limit in force until the trading-day "
                           "rollover. Needs an operator and a reason; audited in fleet.db "
                           "and shown on the status page.")
    r.add_argument("cap", metavar="CAP")
    r.add_argument("--key", default="", help="the symbol (symbol_exposure only)")
    r.add_argument("--limit", required=True, type=float,
                   help="the new limit, in the cap's unit (currency, %%, or x normal)")
    add_operator(r)
    r.add_argument("--reason", required=True, help="why")
    add_connection_args(r)
    r.add_argument("--json", action="store_true", help="JSON instead of a table")
    r.set_defaults(handler=lambda a: run_command(a, "caps_raise", LeaderRequest(
        cap=a.cap, key=a.key, limit=a.limit, operator=a.operator, reason=a.reason)))


def run_leader(args: argparse.Namespace) -> int:
    """Load the config, log JSON to stdout, run the leader until SIGTERM/SIGINT."""
    cfg = load_leader_config(args.config)
    setup_json_logging("leader", level=getattr(logging, args.log_level))
    return asyncio.run(_leader_main(cfg))


async def _leader_main(cfg: LeaderConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    leader = await start_leader(cfg)
    logging.getLogger("qtd.leader").info("start-up heap frozen: %d objects", freeze_heap())
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


def run_command(args: argparse.Namespace, verb: str, req: LeaderRequest) -> int:
    """Send one command to the running leader and print its reply."""
    bus = bus_from_args(args, f"qtd-{verb}")
    reply = asyncio.run(on_fleet(bus, verb, lambda nc: _request(nc, bus.prefix, verb, req)))
    if not reply.get("ok"):
        raise OperationalError(f"leader refused {verb}: {reply.get('error', '?')}")
    if verb == "alerts" and not args.json:
        for a in reply["alerts"]:
            print(f"{a['alert_id']}  {a['severity']}  {a['status']:<6}  {a['title']}")
        if not reply["alerts"]:
            print("no open alerts")
    elif verb == "resume" and not args.json:
        print(resume_summary(reply))
    elif verb in ("caps", "caps_raise") and not args.json:
        print(caps_table(reply, raised=req.cap if verb == "caps_raise" else ""))
    else:
        print(json.dumps(reply, indent=2, sort_keys=True))
    return 0


async def _request(nc: Client, prefix: str, verb: str, req: LeaderRequest
                   ) -> dict[str, Any]:
    try:
        msg = await nc.request(f"{prefix}.ctl.leader.{verb}", msgspec.json.encode(req),
                               timeout=10)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
        raise TemporaryError(f"no leader answered {verb} ({type(exc).__name__}): is "
                             "`qtd leader` running?") from None
    result: dict[str, Any] = msgspec.json.decode(msg.data)
    return result


def caps_table(reply: dict[str, Any], raised: str = "") -> str:
    """The ``caps`` reply as text: one line per cap (value, limit in force, utilisation,
    tripped, override), then today's overrides with who, why and the old limit."""
    lines = [f"raised {raised} for trading day {reply['trading_day']}"] if raised else []
    lines.append(f"{'cap':<16} {'key':<8} {'value':>14} {'limit':>14} {'unit':<9} "
                 f"{'used':>6}  state")
    for c in reply["caps"]:
        state = "TRIPPED" if c["tripped"] else "ok"
        if c.get("override"):
            state += f" (raised from {c['override']['configured_limit']:,.2f})"
        lines.append(f"{c['name']:<16} {c['key']:<8} {c['value']:>14,.2f} "
                     f"{c['limit']:>14,.2f} {c['unit']:<9} {c['utilisation']:>6.0%}  {state}")
    overrides = reply["overrides"]
    lines.append(f"overrides for trading day {reply['trading_day']}: "
                 f"{len(overrides) or 'none'} (the configured limits are back at the "
                 "trading-day rollover)")
    for o in overrides:
        what = f"{o['cap']} {o['cap_key']}".strip()
        lines.append(f"  {what}: {o['old_limit']:,.2f} -> {o['new_limit']:,.2f} {o['unit']} "
                     f"by {o['operator']}: {o['reason']}")
    return "\n".join(lines)


def resume_summary(reply: dict[str, Any]) -> str:
    """The ``resume`` reply as an operator reads it: what was released, what each agent
    answered per scope, and every kill still in force (trading stays halted there)."""
    released = reply.get("released", [])
    lines = [f"released {len(released)} kill(s): {', '.join(released)}" if released
             else "released no kill (none was active): agents asked to resume GLOBAL"]
    if reply.get("scopes"):
        scopes = ", ".join(sc.rstrip(":") for sc in reply["scopes"])  # "GLOBAL:" -> GLOBAL
        lines.append(f"agents asked to resume {scopes}:")
    for node, answer in sorted(reply.get("agents", {}).items()):
        lines.append(f"  {node:<20} {answer}")
    still = reply.get("still_active", [])
    if still:
        lines.append(f"still active ({len(still)}): trading stays halted there")
        for k in still:
            where = f"{k['scope']}:{k['key']}" if k.get("key") else k["scope"]
            lines.append(f"  {k['kill_id']}  {where:<24} {k['reason']!r} "
                         f"({k.get('operator') or k.get('source', '')})")
    else:
        lines.append("no kill is active")
    return "\n".join(lines)
