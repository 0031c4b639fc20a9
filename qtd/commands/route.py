"""``qtd route explain SYMBOL``: show every route rule tried and why it matched or not."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from qtd.admit.instruments import INSTRUMENTS, lookup
from qtd.data import DATASETS, load_dataset
from qtd.errors import ConfigError
from qtd.feeds import Bar, ns_to_iso
from qtd.regime import Regime, RegimeReading, classify
from qtd.routes import Query, explain, load_routes


def _venue(symbol: str, venue: str | None) -> str:
    if venue:
        return venue
    found = [v for v in sorted(INSTRUMENTS) if symbol in INSTRUMENTS[v]]
    return "paper" if "paper" in found else (found[0] if found else "paper")


def _dataset_for(symbol: str, name: str | None) -> str | None:
    if name:
        return name
    return next((d.name for d in DATASETS.values() if d.symbol == symbol and d.kind == "bars"),
                None)


def _regime(symbol: str, args: argparse.Namespace, at_ns: int) -> tuple[Regime, str]:
    if args.regime:
        return Regime(args.regime), f"{args.regime} (given with --regime)"
    name = _dataset_for(symbol, args.dataset)
    if name is None:
        return Regime.UNKNOWN, "unknown (no bundled bars for this symbol; use --dataset)"
    bars = [b for b in load_dataset(name) if isinstance(b, Bar)]
    if args.at is not None:
        bars = [b for b in bars if b.close_ts_ns <= at_ns]
    reading: RegimeReading = classify(bars)
    return reading.regime, f"{reading.explain()} from data set {name}"


def run_route_explain(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``qtd route explain``; returns 0 if a rule matched, 1 if none did.

    Raises:
        ConfigError: the routes file is invalid (every problem listed).
    """
    out = out or sys.stdout
    cfg, problems = load_routes(Path(args.routes))
    if cfg is None:
        raise ConfigError("\n".join(str(p) for p in problems), source=args.routes,
                          field=problems[0].field, value=problems[0].value,
                          rule=problems[0].rule)
    venue = _venue(args.symbol, args.venue)
    inst = lookup(venue, args.symbol)
    at_ns = args.at if args.at is not None else args.now_ns
    regime, why = _regime(args.symbol, args, at_ns)
    q = Query(venue=venue, symbol=args.symbol, asset_class=inst.asset_class if inst else None,
              ts_ns=at_ns, regime=regime)
    out.write(f"route {args.symbol} on {venue} "
              f"(asset class {q.asset_class or 'unlisted'}) at {ns_to_iso(at_ns)}\n")
    out.write(f"regime: {why}\n")
    chosen, traces = explain(cfg, q)
    for t in traces:
        if chosen is not None and t.index > cfg.route.index(chosen) + 1:
            verdict = "not reached (would match)" if t.matched else "not reached"
        else:
            verdict = "MATCH" if t.matched else "no match"
        out.write(f"  {t.index}. {t.name}: {verdict}\n")
        for reason in t.reasons:
            out.write(f"       {reason}\n")
    if chosen is None:
        out.write("=> no rule matched: no strategy for this instrument now\n")
        return 1
    out.write(f"=> {chosen.name}: strategy={chosen.strategy} preset={chosen.preset} "
              f"risk_profile={chosen.risk_profile}\n")
    return 0
