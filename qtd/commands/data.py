"""``qtd data list|import|verify``: the bundled data sets and the local Parquet catalog.

``qtd data fetch`` (from the venues' REST APIs) is added to the same ``data`` parser in
:mod:`qtd.cli`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import msgspec

from qtd.catalog import INTERVALS, Catalog, Provenance, SetInfo, SetKey
from qtd.data import DATASETS, format_dataset_table
from qtd.errors import ConfigError
from qtd.feeds import Bar, ns_to_iso
from qtd.feeds.loaders import load_bars

MAX_SHOWN = 50
"""Problems ``qtd data verify`` prints (``--json`` has them all)."""


def add_actions(dsub: Any) -> None:
    """Add ``list``, ``import`` and ``verify`` to the ``qtd data`` subparsers."""
    lst = dsub.add_parser("list", help="bundled data sets and the catalog's sets")
    lst.add_argument("--json", action="store_true", help="one JSON document on stdout")
    _catalog_arg(lst)
    lst.set_defaults(handler=run_list)
    imp = dsub.add_parser(
        "import",
        help="validate a bar file and add it to the catalog",
        description="Loads FILE with the same validation as backtests (every bad row named "
        "by line, with its time as written), then merges it into the catalog set "
        "VENUE:SYMBOL:INTERVAL; bars already there are kept.",
    )
    imp.add_argument("file", metavar="FILE", help="CSV, CSV.gz, Binance klines or Parquet")
    imp.add_argument("--symbol", required=True, help="the instrument, e.g. MSFT, ETHUSDT")
    imp.add_argument("--interval", required=True, choices=list(INTERVALS), help="bar length")
    imp.add_argument(
        "--venue",
        default="local",
        help="venue the bars are from "
        "(default: local; name the bot's venue to make it its smoke set)",
    )
    _catalog_arg(imp)
    imp.set_defaults(handler=run_import)
    ver = dsub.add_parser(
        "verify",
        help="re-check a catalog set: gaps, duplicates, OHLC rules",
        description="Gaps against the venue's calendar (24x7 for crypto, exchange-calendars "
        "sessions for stocks), order, duplicates, OHLC rules; each problem with its time. "
        "Exit 1 if any problem is found.",
    )
    ver.add_argument("set", metavar="SET", help="venue:SYMBOL:interval (qtd data list)")
    ver.add_argument(
        "--calendar",
        help="24x7 or an exchange-calendars code (default: the venue's for the symbol)",
    )
    ver.add_argument("--json", action="store_true", help="one JSON document on stdout")
    _catalog_arg(ver)
    ver.set_defaults(handler=run_verify)


def _catalog_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--catalog",
        metavar="DIR",
        help="catalog directory (default: $QTD_CATALOG, else $XDG_DATA_HOME/qtd/catalog)",
    )


def _catalog(args: argparse.Namespace) -> Catalog:
    return Catalog(Path(args.catalog) if args.catalog else None)


class _Listing(msgspec.Struct, frozen=True):
    bundled: list[Any]
    catalog_root: str
    catalog: list[SetInfo]


def run_list(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``qtd data list``: the bundled sets, then the catalog's; returns 0."""
    out = out or sys.stdout
    catalog = _catalog(args)
    sets = catalog.sets()
    if args.json:
        doc = _Listing(list(DATASETS.values()), str(catalog.root), sets)
        out.write(msgspec.json.encode(doc).decode() + "\n")
        return 0
    out.write("bundled (qtd/data):\n" + format_dataset_table() + "\n\n")
    out.write(f"catalog ({catalog.root}):\n")
    out.write(format_catalog_table(sets) + "\n")
    return 0


def format_catalog_table(sets: list[SetInfo]) -> str:
    """The catalog's sets as a plain-text table: name, rows, months, first and last bar,
    the last write's time and source."""
    if not sets:
        return "  (empty: `qtd data fetch` or `qtd data import` adds sets)"
    header = ("name", "rows", "months", "first (UTC)", "last (UTC)", "updated (UTC)", "source")
    lines = [header] + [
        (
            info.key.name,
            f"{info.rows:,}",
            str(len(info.months)),
            ns_to_iso(info.first_ns),
            ns_to_iso(info.last_ns),
            _seconds(info.provenance[-1].fetched_at_ns) if info.provenance else "",
            info.provenance[-1].source if info.provenance else "",
        )
        for info in sets
    ]
    widths = [max(len(line[col]) for line in lines) for col in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.rjust(widths[c]) if c in (1, 2) else cell.ljust(widths[c])
            for c, cell in enumerate(line)
        ).rstrip()
        for line in lines
    )


def run_import(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``qtd data import``: validate FILE and merge it into the catalog; returns 0.

    Raises:
        ConfigError: bad set name, unreadable file, or bad rows (all listed).
    """
    out = out or sys.stdout
    key = SetKey.parse(f"{args.venue}:{args.symbol}:{args.interval}")
    path = Path(args.file)
    if not path.is_file():
        raise ConfigError(
            f"{path}: no such file",
            source=str(path),
            field="file",
            value=str(path),
            rule="an existing file",
        )
    bars = load_bars(path, key.symbol, interval=key.interval)
    if not bars:
        raise ConfigError(
            f"{path}: no bars",
            source=str(path),
            field="file",
            value=str(path),
            rule="at least one bar",
        )
    catalog = _catalog(args)
    provenance = Provenance(
        venue=key.venue,
        endpoint=str(path.resolve()),
        fetched_at_ns=time.time_ns(),
        rows=len(bars),
        first_ns=min(b.ts_ns for b in bars),
        last_ns=max(b.ts_ns for b in bars),
        source=f"import:{path.name}",
    )
    added = catalog.write(key, bars, provenance)
    out.write(
        f"{key.name}: {len(bars):,} bars read from {path}, {added:,} new, "
        f"{len(bars) - added:,} already in the catalog ({catalog.set_dir(key)})\n"
    )
    return 0


def set_calendar(key: SetKey, given: str | None) -> str:
    """The calendar to verify ``key`` against: ``given``, else the venue's for the symbol.

    Raises:
        ConfigError: unknown venue, or a venue that cannot tell (pass ``--calendar``).
    """
    if given:
        return given
    from qtd import venues

    try:
        venue = venues.get(key.venue, field="venue", source=key.name)
    except ConfigError as exc:
        raise ConfigError(
            f"{exc}; or pass --calendar (24x7, XNYS, ...)",
            source=key.name,
            field="venue",
            value=key.venue,
            rule=exc.rule,
        ) from None
    calendar = venue.calendar_of(key.symbol)
    if calendar is None:
        raise ConfigError(
            f"{key.name}: venue {key.venue} does not say which calendar {key.symbol} trades "
            "on; pass --calendar (24x7, XNYS, ...)",
            source=key.name,
            field="calendar",
            value=None,
            rule="--calendar for a symbol the venue does not list",
        )
    return calendar


def run_verify(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``qtd data verify``: returns 0 when the set has no problem, 1 otherwise.

    Raises:
        ConfigError: bad or unknown set, or no calendar for it.
    """
    from qtd.catalog.verify import check_calendar, verify_bars

    out = out or sys.stdout
    key = SetKey.parse(args.set)
    catalog = _catalog(args)
    if not catalog.has(key):
        known = ", ".join(k.name for k in catalog.set_keys()) or "(none)"
        raise ConfigError(
            f"{key.name}: not in the catalog ({catalog.root}); sets: {known}",
            source="<arg>",
            field="set",
            value=args.set,
            rule="a catalog set",
        )
    calendar = set_calendar(key, args.calendar)
    check_calendar(calendar)
    bars: list[Bar] = catalog.read(key)
    report = verify_bars(key.name, bars, key.interval, calendar)
    if args.json:
        out.write(msgspec.json.encode(report).decode() + "\n")
        return 0 if report.ok else 1
    out.write(
        f"{report.set}: {report.rows:,} bars {report.first} .. {report.last}, "
        f"calendar {report.calendar} expects {report.expected:,}"
        f"{f', {report.off_calendar:,} outside it' if report.off_calendar else ''}\n"
    )
    if report.ok:
        out.write("ok: no gaps, duplicates or OHLC problems\n")
        return 0
    out.write(f"{len(report.problems)} problem(s):\n")
    for problem in report.problems[:MAX_SHOWN]:
        out.write(f"  {problem.describe()}\n")
    if len(report.problems) > MAX_SHOWN:
        out.write(f"  ... and {len(report.problems) - MAX_SHOWN} more (--json lists all)\n")
    return 1


def _seconds(ts_ns: int) -> str:
    return ns_to_iso(ts_ns - ts_ns % 1_000_000_000)
