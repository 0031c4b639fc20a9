"""``qtd kill``: what it does over NATS and with ``--local``, and what it prints.

Over NATS (:func:`kill_over_nats`): the kill goes into the kill set and out on
``<prefix>.ctl.kill`` first, then the command waits until every live agent acknowledged
(:mod:`qtd.agent.killround`) both in force and durable, or ``--wait`` seconds, and prints a
summary for a human (scope, kill id, ``N of M agents acknowledged in X ms``, one line per
agent: ``in force after X ms, durable after Y ms``, each missing agent with its last
heartbeat age, each agent whose durable ack did not come, the other active kills) or, with
``--json``, one JSON object. Exit status (as before the two acks): 0 every agent
acknowledged the kill in force (or ``--wait 0``: not waited for), even if a durable ack is
missing (named in the output and in ``not_durable``: the kill holds there, its store may be
failing); 3 some did not (or none is known); 75 NATS unreachable or it did not take the
kill.

``--local`` (:func:`kill_local`) writes the kill file an agent watches, found from the
agent's config (``--config``: its ``kill_file``) or from the ``qtd up`` fleet of this
directory (``$QTD_STATE`` or ``./qtd-state``: ``etc/node-N.toml``; ``--node`` picks one,
else every node of that fleet). It refuses a file that no agent config names.
"""

from __future__ import annotations

import argparse
import json
import os
import tomllib
from pathlib import Path

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client

from qtd.agent.killround import AckSeen, AgentSeen, KillReport, kill_round
from qtd.bus import BusConfig
from qtd.control import KillCommand, new_kill
from qtd.control.transport import release_kills
from qtd.errors import ConfigError, OperationalError, TemporaryError
from qtd.events import Scope
from qtd.files import read_capped_text
from qtd.risk.kill_file import DEFAULT_KILL_FILE, parse_kill_file, write_kill_file
from qtd.up.layout import Layout

EXIT_MISSING = 3
STATE_ENV = "QTD_STATE"
DEFAULT_STATE = "qtd-state"
_NATS_ERRORS = (nats.errors.Error, nats.js.errors.Error, TimeoutError)


# --- over NATS -------------------------------------------------------------------------------


async def kill_over_nats(args: argparse.Namespace, scope: Scope, bus: BusConfig,
                         nc: Client) -> int:
    """Kill (or ``--release``) over NATS on ``nc`` (connected by
    :func:`qtd.commands.fleet.on_fleet`); print; return the exit status.

    Raises:
        TemporaryError: NATS is unreachable or did not take the kill (exit 75).
        OperationalError: the kill set's bucket does not exist (no leader ever ran).
        ConfigError: ``--release`` without ``--kill-id`` or ``--all``.
    """
    try:
        if args.release:
            return await _release(nc, args)
        report = await _send(nc, args, scope, bus.prefix)
        print(json.dumps(report_json(report)) if args.json else  # before the drain
              format_report(report, waited=args.wait > 0), flush=True)
    finally:
        await nc.drain()
    return 0 if args.wait <= 0 or report.complete() else EXIT_MISSING


async def _send(nc: Client, args: argparse.Namespace, scope: Scope, prefix: str) -> KillReport:
    msg = new_kill(reason=args.reason, scope=scope, key=args.key or "", flatten=args.flatten,
                   operator=args.operator, source="cli")
    try:
        return await kill_round(nc, msg, prefix=prefix, timeout_s=args.wait,
                                expect=args.expect)
    except nats.js.errors.BucketNotFoundError:
        raise OperationalError(
            "the kill set (KV bucket qtd_control) does not exist on this NATS: the leader "
            "creates it when it starts; start it, or run `qtd kill --local` on each node; "
            "nothing was sent", kill_id=msg.id) from None
    except _NATS_ERRORS as exc:
        raise TemporaryError(f"NATS did not take kill {msg.id} ({_what(exc)}): it may not "
                             "be in force; with NATS down, run `qtd kill --local` on each "
                             "node", kill_id=msg.id) from None


async def _release(nc: Client, args: argparse.Namespace) -> int:
    if not args.kill_ids and not args.everything:
        raise ConfigError("--release needs --kill-id ID (repeatable) or --all",
                          source="<arg>", field="kill_id", value="",
                          rule="name the kills to remove")
    try:
        gone = await release_kills(nc, None if args.everything else args.kill_ids)
    except _NATS_ERRORS as exc:
        raise TemporaryError(f"NATS did not release the kills ({_what(exc)})") from None
    missing = sorted(set(args.kill_ids) - {k.id for k in gone})
    for k in gone:
        print(f"removed kill {k.id} {_scope(k)} ({k.reason}) from the set")
    if missing:
        print(f"not in the set: {', '.join(missing)}")
    if not gone and not missing:
        print("no kill was set: nothing removed")
    if gone:
        print("agents that applied them stay halted until `qtd resume`")
    return 0


def _what(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _scope(k: KillCommand) -> str:
    return k.scope.value if k.scope is Scope.GLOBAL else f"{k.scope.value}:{k.key}"


def format_age(seconds: float) -> str:
    """``2.4 s``, ``3 min 12 s``, ``2 h 05 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _missing_line(a: AgentSeen) -> str:
    down = "" if a.alive else " (heartbeat stale: agent down?)"
    return f"  {a.node:<20} last heartbeat {format_age(a.heartbeat_age_s)} ago{down}"


def _roster_note(r: KillReport) -> str:
    if r.roster_source == "leader":
        return "agents known to the leader"
    return "no leader answered: agents whose heartbeats were heard"


def _headline(r: KillReport, waited: bool) -> str:
    if not waited:
        return "acknowledgements not awaited (--wait 0)"
    n, m = len(r.acks), r.agents()
    if m == 0:
        return ("0 of 0 agents acknowledged: no agent known (no leader answered and no "
                "heartbeat heard); agents apply the kill from the set when they start")
    line = f"{n} of {m} agents acknowledged in {r.acked_in_ms():.0f} ms ({_roster_note(r)})"
    if not r.complete():
        line += f"; NOT CONFIRMED after {r.ended_ms:.0f} ms"
    if n:
        durable = n - len(r.not_durable())
        line += f"; durable on {durable} of {n}" + (
            f" in {r.durable_in_ms():.0f} ms" if durable == n else "")
    return line


def _ack_line(a: AckSeen) -> str:
    durable = ("NOT durable" if a.durable_ms is None
               else f"durable after {a.durable_ms:.1f} ms")
    return (f"  {a.ack.node:<20} {a.ack.state.value:<9} in force after {a.after_ms:.1f} ms, "
            f"{durable}{'  (already applied)' if a.ack.duplicate else ''}")


def format_report(r: KillReport, *, waited: bool = True) -> str:
    """The human summary of a kill round (see the module docstring)."""
    k = r.kill
    who = f", operator {k.operator}" if k.operator else ""
    flat = ", flatten" if k.flatten else ""
    lines = [f"kill {k.id}: {_scope(k)}{flat}, reason {k.reason!r}{who}", _headline(r, waited)]
    lines += [_ack_line(a) for a in r.acks]
    missing = r.missing() if waited else []
    if missing:
        lines.append(f"missing ({len(missing)}):")
        lines += [_missing_line(a) for a in missing]
    not_durable = r.not_durable() if waited else []
    if not_durable:
        lines.append(f"in force but not durable after {r.ended_ms:.0f} ms "
                     f"({len(not_durable)}): {', '.join(not_durable)}")
    others = [o for o in r.active if o.id != k.id]
    lines.append(f"other active kills: {len(others) or 'none'}")
    lines += [f"  {o.id}  {_scope(o):<24} {o.reason!r}"
              f"{f' by {o.operator}' if o.operator else ''} ({o.source})" for o in others]
    return "\n".join(lines)


def report_json(r: KillReport) -> dict[str, object]:
    """The ``--json`` object: the kill, counts, acks (with ``after_ms``: in force, and
    ``durable_ms``: durable, null when it did not come), missing agents (with
    ``heartbeat_age_s``), ``not_durable`` (nodes in force without a durable ack) and every
    active kill; times in ms from the kill's write."""
    k = r.kill
    return {
        "kill_id": k.id, "scope": k.scope.value, "key": k.key, "reason": k.reason,
        "operator": k.operator, "flatten": k.flatten, "complete": r.complete(),
        "acknowledged": len(r.acks), "agents": r.agents(), "acked_in_ms": r.acked_in_ms(),
        "waited_ms": r.ended_ms, "roster": r.roster_source,
        "durable_in_ms": r.durable_in_ms(), "not_durable": r.not_durable(),
        "acks": [{**msgspec.to_builtins(a.ack), "after_ms": a.after_ms,
                  "durable_ms": a.durable_ms} for a in r.acks],
        "missing": msgspec.to_builtins(r.missing()),
        "active": [{"kill_id": o.id, "scope": o.scope.value, "key": o.key,
                    "reason": o.reason, "operator": o.operator, "source": o.source,
                    "ts_ns": o.ts_ns} for o in r.active],
    }


# --- the kill file ---------------------------------------------------------------------------


class _KillFileOf(msgspec.Struct):
    """The two fields of an agent config ``--local`` reads (the rest is not validated: an
    agent config whose NATS credentials live in systemd must still give its kill file)."""

    node: str = ""
    kill_file: str = str(DEFAULT_KILL_FILE)


def agent_kill_file(config: Path) -> tuple[str, Path]:
    """(node, kill file) of an agent config; a relative ``kill_file`` is resolved against
    the config's directory, as the agent does.

    Raises:
        ConfigError: unreadable, not TOML, or ``node``/``kill_file`` not strings.
    """
    try:
        doc = tomllib.loads(read_capped_text(config))
        got = msgspec.convert(doc, _KillFileOf)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{config}: cannot read the agent config: {exc}",
                          source=str(config), field="", rule="a readable agent TOML") from None
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{config}: {exc}", source=str(config), field="kill_file",
                          rule="node and kill_file are strings") from None
    path = Path(got.kill_file)
    return got.node or config.stem, path if path.is_absolute() else config.parent / path


def fleet_kill_files(state: Path) -> dict[str, Path]:
    """node -> kill file of every agent of the ``qtd up`` fleet in ``state`` (empty when
    there is none)."""
    etc = Layout.at(state).etc_dir
    return dict(agent_kill_file(c) for c in sorted(etc.glob("node-*.toml")))


def local_targets(args: argparse.Namespace) -> dict[str, Path]:
    """node -> kill file that ``--local`` writes (see the module docstring).

    Raises:
        ConfigError: no agent config found, ``--node`` unknown, or ``--kill-file`` is not
            the kill file of any agent found.
    """
    if args.config:
        node, path = agent_kill_file(Path(args.config))
        found, where = {node: path}, args.config
    else:
        state = Path(os.environ.get(STATE_ENV) or DEFAULT_STATE)
        found, where = fleet_kill_files(state), f"the qtd up fleet in {state}"
        if not found:
            raise ConfigError(
                "qtd kill --local: no agent config to take the kill file from: give "
                "--config AGENT_TOML (the agent watches its kill_file), or run it where "
                f"`qtd up` runs (./{DEFAULT_STATE}, or set {STATE_ENV})",
                source="<arg>", field="config", value=None, rule="an agent config")
    if args.node:
        if args.node not in found:
            raise ConfigError(f"--node {args.node}: not in {where} (nodes: "
                              f"{', '.join(found)})", source="<arg>", field="node",
                              value=args.node, rule="a node of the fleet")
        found = {args.node: found[args.node]}
    if args.kill_file:
        wanted = Path(args.kill_file).resolve()
        found = {n: p for n, p in found.items() if p.resolve() == wanted}
        if not found:
            raise ConfigError(f"--kill-file {args.kill_file}: no agent watches it (from "
                              f"{where}); refused", source="<arg>", field="kill_file",
                              value=args.kill_file, rule="an agent's kill_file")
    return found


def kill_local(args: argparse.Namespace, scope: Scope) -> int:
    """Write (or with ``--release`` remove) the kill file of each target agent; print one
    line per node. Returns 0.

    Raises:
        ConfigError: see :func:`local_targets`; a kill file that cannot be written.
    """
    targets = local_targets(args)
    if args.release:
        return _release_files(targets)
    for node, path in targets.items():
        try:
            write_kill_file(path, scope=scope, key=args.key or "", reason=args.reason,
                            flatten=args.flatten, operator=args.operator)
        except OSError as exc:
            raise ConfigError(f"{node}: cannot write its kill file {path}: {exc.strerror}",
                              source=str(path), field="kill_file", value=str(path),
                              rule="writable") from None
        print(f"{node}: wrote kill file {path}: {scope.value}"
              f"{':' + args.key if args.key else ''} ({args.reason}); the agent halts within "
              "its kill_poll_s")
    return 0


def _release_files(targets: dict[str, Path]) -> int:
    removed = []
    for node, path in targets.items():
        try:
            data = path.read_bytes()
            path.unlink()
        except FileNotFoundError:
            print(f"{node}: no kill file at {path}: nothing to remove")
            continue
        try:
            what = parse_kill_file(data, source=str(path))
            said = f"{what.scope.value}{':' + what.key if what.key else ''} ({what.reason})"
        except ConfigError:
            said = "unreadable content (read as GLOBAL)"
        print(f"{node}: removed kill file {path}: {said}")
        removed.append(node)
    if removed:
        print(f"trading stays halted on {', '.join(removed)} until `qtd resume` (removing "
              "the file does not resume)")
    return 0
