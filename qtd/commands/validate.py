"""``qtd validate PATH...``: admit bot configs and routes files, print every error."""

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


def _line(r: Admission) -> str:
    if r.kind == "routes":
        return f"OK    {r.path}  routes"
    smoke = ""
    if r.smoke:
        sm = r.smoke
        smoke = f"  smoke: {sm.items} bars, {sm.orders} orders, {sm.fills} fills"
        if sm.denials:
            smoke += " (risk denied " + ", ".join(f"{k} x{n}" for k, n in sm.denials.items()) + ")"
        if sm.halts:
            smoke += f"\n      note: risk engine HALTED the bot in the smoke run: {sm.halts[0]}"
    return (f"OK    {r.path}  bot={r.bot} strategy={r.strategy} "
            f"hash={r.content_hash[:16]}{smoke}")


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
               "problems": [msgspec.to_builtins(p) for p in r.problems]}
        out.write(json.dumps(doc, default=str) + "\n")


async def run_validate(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``qtd validate``; returns 0 if everything is admitted, else 78 (EX_CONFIG)."""
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
    if not args.json:
        out.write(f"{len(results)} file(s), {errors} error(s)\n")
    out.flush()
    return ConfigError.exit_code if errors else 0
