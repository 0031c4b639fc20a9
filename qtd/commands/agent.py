"""``qtd agent --config etc/agent.toml`` and ``qtd kill ...``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from qtd.agent.config import AgentConfig, load_agent_config
from qtd.agent.logs import setup_json_logging
from qtd.commands.fleet import add_connection_args, bus_from_args, on_fleet
from qtd.commands.kill import kill_local, kill_over_nats
from qtd.commands.operator import add_operator
from qtd.errors import ConfigError
from qtd.events import Scope
from qtd.proc import freeze_heap

log = logging.getLogger("qtd.agent")


def run_agent(args: argparse.Namespace) -> int:
    """Load the config, log JSON to stdout, run the agent until SIGTERM/SIGINT."""
    cfg = load_agent_config(args.config)
    setup_json_logging(cfg.node, level=getattr(logging, args.log_level))
    return asyncio.run(_agent_main(cfg))


async def _agent_main(cfg: AgentConfig) -> int:
    from qtd.agent.daemon import build_agent

    stop = asyncio.Event()  # set by SIGTERM/SIGINT, also while the agent is being built

    def request_shutdown() -> None:
        if not stop.is_set():
            logging.getLogger("qtd.agent").info("shutdown requested")
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_shutdown)
    try:
        agent = await build_agent(cfg, stop=stop)
        running = asyncio.ensure_future(agent.run())
        ready = asyncio.ensure_future(agent.ready.wait())
        await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done():  # started: its start-up heap is never scanned again
            log.info("start-up heap frozen: %d objects", freeze_heap())
        else:
            ready.cancel()
        return await running
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run_kill(args: argparse.Namespace) -> int:
    """``qtd kill``: set the kill switch over NATS (KV + broadcast) or in the local file
    (see :mod:`qtd.commands.kill`)."""
    scope = Scope(args.scope.upper())
    if scope is not Scope.GLOBAL and not args.key and not args.release:
        raise ConfigError(f"--scope {args.scope} needs --key", source="<arg>", field="key",
                          value="", rule="required unless scope is global")
    if args.local:
        return kill_local(args, scope)
    bus = bus_from_args(args, "qtd-kill")
    return asyncio.run(on_fleet(bus, "kill", lambda nc: kill_over_nats(args, scope, bus, nc)))


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``agent`` and ``kill`` to the ``qtd`` command."""
    p = sub.add_parser(
        "agent", help="run the per-server agent daemon (bots, telemetry, control)",
        description="Runs the agent: reconciles every account, admits and runs the bots, "
        "publishes the event store to JetStream, answers commands on "
        "<prefix>.ctl.<node>.<verb>, applies kills. JSON logs on stdout. SIGTERM stops "
        "it cleanly (exit 0).")
    p.add_argument("--config", required=True, help="agent TOML (see etc/agent.toml)")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(handler=run_agent)
    k = sub.add_parser(
        "kill", help="kill switch: halt a scope on every agent (NATS) or this host (--local)",
        description="Adds a kill to the set of active kills (KV bucket qtd_control, key "
        "kill) and broadcasts it on <prefix>.ctl.kill (agents that start later apply every "
        "kill in the set before trading), then waits until every live agent (known to the "
        "leader, else heard on <prefix>.hb.*) acknowledged, at most --wait seconds, and "
        "prints N of M agents acknowledged, each missing agent with its last heartbeat age "
        "and the other active kills. --local writes the kill file of the agent of --config, "
        "or of the `qtd up` fleet in ./qtd-state or $QTD_STATE (every node, or --node), and "
        "works with NATS down. Exit 0 every live agent acknowledged, 3 some did not, 75 "
        "NATS unreachable.")
    k.add_argument("--scope", default="global", choices=["global", "account", "strategy",
                                                         "symbol"])
    k.add_argument("--key", help="account, bot or symbol (required unless --scope global)")
    k.add_argument("--flatten", action="store_true", help="also close the scope's positions")
    k.add_argument("--reason", default="", help="why (required unless --release)")
    add_operator(k)
    k.add_argument("--local", action="store_true", help="write the agent's kill file instead "
                   "(from --config, or the qtd up fleet of this directory)")
    k.add_argument("--node", help="with --local and a qtd up fleet: only this node (default "
                   "every node)")
    k.add_argument("--kill-file", help="with --local: only the agent watching this file "
                   "(refused when no agent config names it)")
    k.add_argument("--release", action="store_true",
                   help="remove kills from the KV set (--kill-id, or --all) or delete the "
                   "kill file (--local); does not resume trading: see `qtd resume`")
    k.add_argument("--kill-id", action="append", default=[], dest="kill_ids",
                   help="with --release: the kill to remove (repeatable)")
    k.add_argument("--all", action="store_true", dest="everything",
                   help="with --release: remove every kill from the set")
    add_connection_args(k)
    k.add_argument("--wait", type=float, default=2.0, help="seconds to wait at most for "
                   "every live agent's acks, in force then durable (0: do not wait)")
    k.add_argument("--expect", type=int, default=0, help="stop waiting once N agents acked "
                   "durable instead of every live agent")
    k.add_argument("--json", action="store_true", help="one JSON object instead of the summary")
    k.set_defaults(handler=_kill_handler)


def _kill_handler(args: argparse.Namespace) -> int:
    if not args.release and not args.reason.strip():
        print("qtd kill: --reason is required", file=sys.stderr)
        return ConfigError.exit_code
    return run_kill(args)
