"""``qtd deploy``, ``qtd versions``, ``qtd history`` and ``qtd rollback``: ship strategy and
params changes to the fleet through NATS (:mod:`qtd.deploy`).

Exit status: 0 ok (for ``--dry-run``: everything admitted, the diff printed); 78 a file
failed admission or a deploy rule (nothing published); 75 NATS or the leader not reachable
(retry); 2 a human must act (e.g. NATS refused the credentials).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import msgspec
import nats.errors
from nats.aio.client import Client

from qtd.admit import Admission, Problem
from qtd.commands.fleet import add_connection_args, bus_from_args, on_fleet
from qtd.deploy.diff import params_diff, source_diff
from qtd.deploy.fleet import Fleet
from qtd.deploy.model import DEPLOYABLE_STAGES, DeployVersion, VersionRow
from qtd.deploy.plan import Planned, admit_for_deploy, new_version, plan, promotion_problem, readmit
from qtd.errors import ConfigError, TemporaryError
from qtd.fleetsnapshot import VersionSkew

EPILOG = """\
examples:
  qtd deploy etc/ --dry-run --server nats://127.0.0.1:4222     CI: admission + fleet diff
  qtd deploy etc/bots/momo-goog.toml -m 'slower fast MA' --operator alice
  qtd deploy etc/bots/momo-spy.toml --stage live --canary -m 'new exit rule'
  qtd versions                                                 desired vs running, per node
  qtd history momo-goog --source                               every version, with diffs
  qtd rollback momo-goog -m 'fills look wrong'                 back to the previous version
  qtd rollback momo-goog --to 3                                back to version 3
"""


# --- parsers -------------------------------------------------------------------------------


def add_parsers(sub: Any) -> None:
    """Add ``deploy``, ``versions``, ``history`` and ``rollback`` to the ``qtd`` command."""
    fmt = argparse.RawDescriptionHelpFormatter
    d = sub.add_parser(
        "deploy", help="admit, then ship bot configs/strategies to the fleet (NATS KV)",
        formatter_class=fmt, epilog=EPILOG,
        description="Runs admission on every bot config under PATH (exactly `qtd validate`), "
        "plus the deploy rules (stage deployable and as named by --stage, promotion one "
        "stage at a time, --canary only for live bots). If anything fails, nothing is "
        "published (exit 78). Otherwise each changed bot gets a new version (strategy source "
        "by content hash in the qtd_sources bucket; the version record with hash, operator, "
        "time and message in qtd_deploy), and every agent running the bot re-admits it and "
        "swaps it in at a bar boundary. --dry-run prints, per bot and per node, what would "
        "change (params and source diffs) and publishes nothing: use it in CI.")
    d.add_argument("paths", nargs="+", metavar="PATH", help="bot config, strategy dir or etc/")
    d.add_argument("--stage", choices=DEPLOYABLE_STAGES,
                   help="assert every bot's config says this stage (else refused)")
    d.add_argument("--canary", action="store_true",
                   help="live bots only: record the change as a canary (ramp: issue #11)")
    d.add_argument("--message", "-m", default="", help="why (kept in the history)")
    d.add_argument("--operator", default="", help="who (default: $USER)")
    d.add_argument("--dry-run", action="store_true", help="show the diff, publish nothing")
    d.add_argument("--no-smoke", action="store_true", help="skip the smoke backtests")
    d.add_argument("--source-context", type=int, default=3, help="lines around source diffs")
    add_connection_args(d)
    d.set_defaults(handler=lambda a: asyncio.run(run_deploy(a)))
    v = sub.add_parser("versions", help="per bot and node: desired vs running version",
                       description="Asks the leader for its version table: the desired "
                       "version of every bot and what each node reports running (ok, "
                       "pending, behind = P2 after the deadline, refused = P2), then the "
                       "qtd release each live agent runs ('qtd version skew: ...' when they "
                       "differ). Exit 75 when no leader answers; exit 3 when any node is "
                       "behind or refused.")
    v.add_argument("--json", action="store_true", help="one JSON object per row")
    add_connection_args(v)
    v.set_defaults(handler=lambda a: asyncio.run(run_versions(a)))
    h = sub.add_parser("history", help="every deployed version of a bot, with params diffs")
    h.add_argument("bot", metavar="BOT")
    h.add_argument("--source", action="store_true", help="also show strategy source diffs")
    h.add_argument("--json", action="store_true", help="one JSON object per version")
    add_connection_args(h)
    h.set_defaults(handler=lambda a: asyncio.run(run_history(a)))
    r = sub.add_parser(
        "rollback", help="re-deploy an earlier version of a bot (same path as deploy)",
        description="Takes an earlier version from the history (default: the newest one "
        "with other content than the desired version), admits it again here, and publishes "
        "it as a new version (rollback_of = that version). Agents re-admit and swap it in "
        "like any deploy.")
    r.add_argument("bot", metavar="BOT")
    r.add_argument("--to", metavar="VERSION", help="version number (3, v3) or hash prefix")
    r.add_argument("--message", "-m", default="", help="why")
    r.add_argument("--operator", default="", help="who (default: $USER)")
    r.add_argument("--risk", default="etc/risk.toml",
                   help="risk file for the local re-admission (default etc/risk.toml, if any)")
    r.add_argument("--no-smoke", action="store_true", help="skip the smoke backtest")
    add_connection_args(r)
    r.set_defaults(handler=lambda a: asyncio.run(run_rollback(a)))


# --- helpers -------------------------------------------------------------------------------


def _operator(args: argparse.Namespace) -> str:
    if args.operator:
        return str(args.operator)
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "unknown")


def _ts(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if ns else "-"


class VersionsReply(msgspec.Struct, kw_only=True):
    """The leader's ``versions`` reply: the bots' version table and which qtd release each
    live agent runs (None from a leader older than that field)."""

    ok: bool
    versions: list[VersionRow] = []
    qtd_versions: VersionSkew | None = None


async def leader_versions(nc: Client, prefix: str, timeout_s: float) -> VersionsReply | None:
    """The leader's ``versions`` reply, or None when no leader answered (or it refused)."""
    try:
        msg = await nc.request(f"{prefix}.ctl.leader.versions", b"{}", timeout=timeout_s)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return None
    reply = msgspec.json.decode(msg.data, type=VersionsReply)
    return reply if reply.ok else None


async def leader_rows(nc: Client, prefix: str, timeout_s: float) -> list[VersionRow] | None:
    """The leader's version table, or None when no leader answered."""
    reply = await leader_versions(nc, prefix, timeout_s)
    return None if reply is None else reply.versions


def release_line(skew: VersionSkew) -> str:
    """``qtd 0.1.0 on node-a, node-b``, or the skew warning naming who runs what."""
    if skew.skew:
        return skew.warning
    if not skew.nodes:
        return "qtd: no live agent"
    return "qtd " + "; ".join(f"{v} on {', '.join(ns)}" for v, ns in skew.nodes.items())


def _print_admission(results: list[Admission], out: TextIO) -> int:
    errors = 0
    for r in results:
        if r.ok:
            what = "routes (checked, not deployed)" if r.kind == "routes" else \
                f"bot={r.bot} strategy={r.strategy} hash={r.content_hash[:12]}"
            if r.smoke is not None:
                what += (f"  smoke: {r.smoke.items} bars, {r.smoke.orders} orders, "
                         f"{r.smoke.fills} fills")
            out.write(f"OK    {r.path}  {what}\n")
            continue
        errors += len(r.problems)
        out.write(f"FAIL  {r.path}" + (f"  bot={r.bot}" if r.bot else "") + "\n")
        for p in r.problems:
            out.write(f"      {p}\n")
    return errors


def _node_line(row: VersionRow, new: DeployVersion, cur: DeployVersion | None) -> str:
    how = "restart between bars (new strategy source)" if cur is None or \
        cur.source_hash != new.source_hash or row.running_hash != cur.content_hash \
        else "params swap at the next bar"
    if row.running_hash == new.content_hash:
        how = "already runs it"
    return (f"    {row.node}: v{row.running_version} {row.running_hash[:12]} -> "
            f"{new.short}  ({how})")


async def _print_plan(p: Planned, fleet: Fleet, rows: list[VersionRow] | None, context: int,
                      out: TextIO) -> None:
    v, cur = p.version, p.current
    flags = f"  stage {v.stage}" + ("  CANARY" if v.canary else "")
    if p.unchanged:
        out.write(f"=     {v.bot}  {v.short} unchanged{flags}\n")
        return
    was = cur.short if cur is not None else "(never deployed)"
    out.write(f"~     {v.bot}  {was} -> {v.short}{flags}\n")
    if cur is not None and cur.stage != v.stage:
        out.write(f"    stage: {cur.stage} -> {v.stage}\n")
    lines = params_diff(cur.params if cur else None, v.params)
    out.write("    params:" + (" unchanged\n" if not lines else "\n"))
    for line in lines:
        out.write(f"      {line}\n")
    if cur is None or cur.source_hash != v.source_hash:
        old = await fleet.source(cur.source_hash) if cur is not None else None
        out.write(f"    strategy {v.strategy_file}: "
                  + ("new\n" if cur is None else
                     f"changed ({cur.source_hash[:12]} -> {v.source_hash[:12]})\n"))
        if cur is not None:
            for line in source_diff(old, p.source, f"a/{cur.strategy_file} ({cur.short})",
                                    f"b/{v.strategy_file} (new)", context):
                out.write(f"      {line}\n")
    else:
        out.write(f"    strategy {v.strategy_file}: unchanged\n")
    if rows is None:
        out.write("    nodes: unknown (no leader answered)\n")
        return
    mine = [r for r in rows if r.bot == v.bot and r.node]
    if not mine:
        out.write("    nodes: none runs this bot yet (it applies where it is configured)\n")
    for r in mine:
        out.write(_node_line(r, v, cur) + "\n")


# --- commands ------------------------------------------------------------------------------


async def run_deploy(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``qtd deploy`` (module docstring for exit codes)."""
    out = out or sys.stdout
    results = await admit_for_deploy([Path(p) for p in args.paths], stage=args.stage,
                                     canary=args.canary, smoke=not args.no_smoke)
    errors = _print_admission(results, out)
    if errors:
        out.write(f"{len(results)} file(s), {errors} error(s): nothing published\n")
        return ConfigError.exit_code
    bus = bus_from_args(args, "qtd-deploy")
    return await on_fleet(bus, "deploy", lambda nc: _deploy(nc, bus.prefix, args, results,
                                                            out))


async def _deploy(nc: Client, prefix: str, args: argparse.Namespace,
                  results: list[Admission], out: TextIO) -> int:
    fleet = await Fleet.open(nc.jetstream())
    planned, problems = await plan(fleet, results, operator=_operator(args),
                                   message=args.message, canary=args.canary)
    if problems:
        for prob in problems:
            out.write(f"FAIL  {prob}\n")
        out.write(f"{len(problems)} deploy rule error(s): nothing published\n")
        return ConfigError.exit_code
    rows = await leader_rows(nc, prefix, 3.0)
    for p in planned:
        await _print_plan(p, fleet, rows, args.source_context, out)
    changed = [p for p in planned if not p.unchanged]
    if args.dry_run:
        out.write(f"dry run: {len(changed)} bot(s) would change, nothing published\n")
        return 0
    for p in changed:
        await fleet.publish(p.version, p.source, p.revision)
        out.write(f"published {p.version.bot} {p.version.short}\n")
    out.write(f"{len(changed)} bot(s) deployed, {len(planned) - len(changed)} unchanged\n")
    return 0


async def run_versions(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``qtd versions``: exit 0 all ok/pending, 3 any behind or refused, 75 no leader."""
    out = out or sys.stdout
    bus = bus_from_args(args, "qtd-versions")
    reply = await on_fleet(bus, "versions", lambda nc: leader_versions(nc, bus.prefix, 10.0))
    if reply is None:
        raise TemporaryError("no leader answered `versions`: is `qtd leader` running?")
    rows = reply.versions
    if args.json:
        for r in rows:
            out.write(json.dumps(msgspec.to_builtins(r)) + "\n")
    else:
        out.write(f"{'BOT':<16} {'NODE':<12} {'DESIRED':<18} {'RUNNING':<18} {'STATUS':<8} "
                  "STAGE\n")
        for r in rows:
            want = f"v{r.desired_version}:{r.desired_hash[:12]}" if r.desired_hash else "-"
            have = f"v{r.running_version}:{r.running_hash[:12]}" if r.running_hash else "-"
            extra = " canary" if r.canary else ""
            reason = f"  ({r.refused_reason[:80]})" if r.refused_reason else ""
            out.write(f"{r.bot:<16} {r.node or '-':<12} {want:<18} {have:<18} "
                      f"{r.status:<8} {r.stage}{extra}{reason}\n")
        if not rows:
            out.write("no bots reported yet\n")
        if reply.qtd_versions is not None:
            out.write(release_line(reply.qtd_versions) + "\n")
    return 3 if any(r.status in ("behind", "refused") for r in rows) else 0


async def run_history(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``qtd history BOT``: every version, newest last, with params (and source) diffs."""
    out = out or sys.stdout
    bus = bus_from_args(args, "qtd-history")
    return await on_fleet(bus, "history", lambda nc: _history(nc, args, out))


async def _history(nc: Client, args: argparse.Namespace, out: TextIO) -> int:
    fleet = await Fleet.open(nc.jetstream())
    versions = await fleet.history(args.bot)
    cur, _ = await fleet.desired(args.bot)
    if not versions:
        raise ConfigError(f"bot {args.bot!r} was never deployed", source="<arg>",
                          field="bot", value=args.bot, rule="a deployed bot")
    prev: DeployVersion | None = None
    for v in versions:
        if args.json:
            out.write(json.dumps(msgspec.to_builtins(v)) + "\n")
            prev = v
            continue
        mark = "*" if cur is not None and cur.version == v.version else " "
        notes = (["canary"] if v.canary else []) + \
            ([f"rollback of v{v.rollback_of}"] if v.rollback_of else [])
        out.write(f"{mark} v{v.version:<4} {_ts(v.ts_ns)}  {v.content_hash[:12]}  "
                  f"{v.stage:<6} {v.operator or '-':<10} {v.message!r}"
                  + (f"  [{', '.join(notes)}]" if notes else "") + "\n")
        for line in params_diff(prev.params if prev else None, v.params):
            out.write(f"        {line}\n")
        if prev is not None and prev.source_hash != v.source_hash:
            out.write(f"        strategy {v.strategy_file} changed "
                      f"({prev.source_hash[:12]} -> {v.source_hash[:12]})\n")
            if args.source:
                old, new = await fleet.source(prev.source_hash), \
                    await fleet.source(v.source_hash)
                for line in source_diff(old, new or b"", f"a/{prev.strategy_file} "
                                        f"(v{prev.version})", f"b/{v.strategy_file} "
                                        f"(v{v.version})"):
                    out.write(f"          {line}\n")
        prev = v
    return 0


def pick_rollback(history: list[DeployVersion], current: DeployVersion, to: str | None
                  ) -> DeployVersion:
    """The version to go back to: ``to`` (``3``, ``v3`` or a content-hash prefix of 4+ hex),
    else the newest older version with other content than ``current``.

    Raises:
        ConfigError: no such version, an ambiguous prefix, or nothing to roll back to.
    """
    if to is None:
        older = [v for v in history if v.version < current.version
                 and v.content_hash != current.content_hash]
        if not older:
            raise ConfigError(f"{current.bot}: no earlier version with other content than "
                              f"{current.short}", source="<arg>", field="to", value=None,
                              rule="an earlier version")
        return older[-1]
    raw = to.strip().lower()
    text = raw.removeprefix("v")
    by_hash = [v for v in history if len(text) >= 4 and v.content_hash.startswith(text)]
    by_hash = list({v.content_hash: v for v in by_hash}.values())  # same content: newest
    by_number = [v for v in history if text.isdigit() and v.version == int(text)]
    # "v12" or a short number is a version number; 4+ hex digits a hash prefix first
    short = raw.startswith("v") or len(text) < 4
    found = (by_number or by_hash) if short else (by_hash or by_number)
    if len(found) != 1:
        rule = "ambiguous hash prefix" if found else "a version number or 4+ hex of its hash"
        raise ConfigError(f"{current.bot}: --to {to!r}: {rule}; versions: "
                          + ", ".join(v.short for v in history), source="<arg>", field="to",
                          value=to, rule=rule)
    return found[0]


async def run_rollback(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``qtd rollback BOT [--to VERSION]``: re-admit an earlier version here and publish it
    as a new version through the deploy path."""
    out = out or sys.stdout
    bus = bus_from_args(args, "qtd-rollback")
    return await on_fleet(bus, "rollback", lambda nc: _rollback(nc, args, out))


async def _rollback(nc: Client, args: argparse.Namespace, out: TextIO) -> int:
    fleet = await Fleet.open(nc.jetstream())
    current, revision = await fleet.desired(args.bot)
    if current is None:
        raise ConfigError(f"bot {args.bot!r} was never deployed", source="<arg>",
                          field="bot", value=args.bot, rule="a deployed bot")
    target = pick_rollback(await fleet.history(args.bot), current, args.to)
    source = await fleet.source(target.source_hash)
    if source is None:
        raise TemporaryError(f"source {target.source_hash[:12]} of {target.short} is "
                             "missing from qtd_sources")
    risk = Path(args.risk) if args.risk and Path(args.risk).is_file() else None
    with tempfile.TemporaryDirectory(prefix="qtd-rollback-") as tmp:
        adm = await readmit(target, source, Path(tmp), risk, smoke=not args.no_smoke)
        problems = list(adm.problems)
        if adm.ok and adm.content_hash != target.content_hash:
            problems.append(Problem(file=str(adm.path), field="content_hash",
                                    value=adm.content_hash[:12],
                                    rule=f"differs from {target.short}"))
        p = promotion_problem(adm, target.stage, current) if adm.ok else None
        problems += [p] if p is not None else []
        if problems:
            out.write(f"FAIL  rollback of {args.bot} to {target.short}: nothing published\n")
            for prob in problems:
                out.write(f"      {prob}\n")
            return ConfigError.exit_code
        v = new_version(adm, source, number=current.version + 1, operator=_operator(args),
                        message=args.message or f"rollback to v{target.version}",
                        canary=target.canary, config_text=target.config,
                        gate_text=target.gate, rollback_of=target.version)
    v = msgspec.structs.replace(v, origin=target.origin)
    out.write(f"rollback {v.bot}: {current.short} -> {target.short} (re-admitted here)\n")
    for line in params_diff(current.params, v.params):
        out.write(f"      {line}\n")
    await fleet.publish(v, source, revision)
    out.write(f"published {v.bot} {v.short} (rollback of v{target.version}; was "
              f"{current.short})\n")
    return 0
