"""``qtd validate PATH...``: admit bot configs and routes files, print every error.

A bot that passed admission but that the risk engine HALTED during its smoke backtest (its
own circuit breaker, e.g. ``consecutive_losses``) is listed as ``WARN``, not ``OK``: the
config is valid and a breaker that trips on a losing streak is working as designed, but the
bot would stop the same way live, so the operator must see it (with the breaker, its
reading and how many orders it then denied). ``--strict`` makes a warning fail (exit 78),
for CI gates that want every bot to finish its smoke run trading.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

import msgspec

from qtd.admit import Admission, admit_paths
from qtd.errors import ConfigError
from qtd.store import EventStore


def warnings(r: Admission) -> list[str]:
    """What an admitted bot's smoke run says the operator must know (module docstring)."""
    sm = r.smoke
    if not sm or not sm.halts:
        return []
    denied = sm.denials.get("trading_state", 0)
    return [f"smoke backtest: the risk engine HALTED the bot ({sm.halts[0]}); it then "
            f"traded no more: {denied} later order(s) denied (trading_state), "
            f"{sm.fills} fill(s) in {sm.items} bars"]


def _line(r: Admission) -> str:
    if r.kind == "routes":
        return f"OK    {r.path}  routes"
    smoke = ""
    if r.smoke:
        sm = r.smoke
        smoke = f"  smoke: {sm.items} bars, {sm.orders} orders, {sm.fills} fills"
        if sm.denials:
            smoke += " (risk denied " + ", ".join(f"{k} x{n}" for k, n in sm.denials.items()) + ")"
    warn = warnings(r)
    return (f"{'WARN' if warn else 'OK':<6}{r.path}  bot={r.bot} strategy={r.strategy} "
            f"hash={r.content_hash[:16]}{smoke}" + "".join(f"\n      WARN: {w}" for w in warn))


def _print(results: list[Admission], out: TextIO) -> None:
    for r in results:
        if r.ok:
            out.write(_line(r) + "\n")
            continue
        out.write(f"FAIL  {r.path}" + (f"  bot={r.bot}" if r.bot else "") + "\n")
        for p in r.problems:
            out.write(f"      {p}\n")


def _json(results: list[Admission], out: TextIO) -> None:
    for r in results:
        doc = {"path": str(r.path), "kind": r.kind, "ok": r.ok, "bot": r.bot,
               "strategy": r.strategy, "content_hash": r.content_hash, "params": r.params,
               "problems": [msgspec.to_builtins(p) for p in r.problems],
               "warnings": warnings(r)}
        out.write(json.dumps(doc, default=str) + "\n")


async def run_validate(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``qtd validate``; returns 0 if everything is admitted, else 78 (EX_CONFIG); with
    ``--strict`` also 78 on a warning (module docstring)."""
    out = out or sys.stdout
    paths = [Path(p) for p in args.paths]
    if args.db:
        async with await EventStore.open(args.db, node=args.node) as store:
            results = await admit_paths(paths, store=store, node=args.node,
                                        smoke=not args.no_smoke)
    else:
        results = await admit_paths(paths, node=args.node, smoke=not args.no_smoke)
    (_json if args.json else _print)(results, out)
    errors = sum(len(r.problems) for r in results)
    warned = sum(len(warnings(r)) for r in results if r.ok)
    if not args.json:
        out.write(f"{len(results)} file(s), {errors} error(s), {warned} warning(s)"
                  + (" (--strict: warnings fail)" if warned and args.strict else "") + "\n")
    out.flush()
    return ConfigError.exit_code if errors or (warned and args.strict) else 0
