"""``qtd data fetch VENUE SYMBOL... --interval --start --end``: venue history into the catalog.

The venue is looked up by name in the venue registry (:mod:`qtd.venues`); its ``history``
factory gives the :class:`~qtd.catalog.fetch.BarSource` (Binance: public REST klines, no
keys; Alpaca: the historical bars API with the account's keys). The loop, resume,
incremental update and validation are :mod:`qtd.catalog.fetch`'s.

Credentials are read as the agent reads them (:func:`qtd.agent.accounts.load_credentials`):
with ``--config agent.toml --account NAME`` that account's ``credentials_env`` /
``credentials_file`` (and its ``data_rest_url`` / ``data_feed``); otherwise the variables
of ``--credentials-env`` (default ``APCA_API_KEY_ID APCA_API_SECRET_KEY``) looked up in
``$CREDENTIALS_DIRECTORY/<account>.env``, ``--credentials-file`` and the environment.

Progress: a rich progress bar on a terminal, else one plain line per symbol and per tenth
of its range. Exit status: 0 every symbol complete; 1 a bar was dropped or a venue error
stopped a symbol (the rest of that symbol's bars are stored and a later run resumes);
78 bad arguments or credentials; 130 interrupted (bars received so far are stored).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from qtd.catalog import INTERVALS, Catalog, SetKey
from qtd.catalog.fetch import BadBar, Fetcher, FetchResult
from qtd.errors import ConfigError
from qtd.feeds.bars import ns_to_iso, parse_ts
from qtd.venues import AccountSettings, HistoryContext, Venue, get, known

DEFAULT_KEYS = ["APCA_API_KEY_ID", "APCA_API_SECRET_KEY"]


def add_parser(dsub: Any) -> None:
    """Add ``fetch`` to the ``qtd data`` actions."""
    p = dsub.add_parser(
        "fetch", help="fetch a venue's bar history into the local catalog",
        description="Fetches bars of each SYMBOL from VENUE (binance: public spot klines; "
        "alpaca: stocks, or crypto like BTC/USD, with the account's keys) into the catalog "
        "as venue:SYMBOL:interval. Only what the catalog lacks is asked for: a second run "
        "fetches nothing, a later run only the new bars, and an interrupted run resumes "
        "where it stopped. Every bar is checked (prices > 0, high/low bound open/close, "
        "volume >= 0, times ascending); a bad one is dropped and named by its time. "
        "Exit 1 if a bar was dropped or a venue error stopped a symbol.")
    p.add_argument("venue", help="venue name (binance, alpaca)")
    p.add_argument("symbols", nargs="+", metavar="SYMBOL", help="the venue's symbols")
    p.add_argument("--interval", required=True, choices=list(INTERVALS), help="bar length")
    p.add_argument("--start", help="first open time (ISO 8601 UTC, e.g. 2024-01-01, or epoch); "
                   "default: the set's first bar (update an existing set)")
    p.add_argument("--end", help="end, exclusive (default: now; the bar still open is never "
                   "fetched)")
    p.add_argument("--catalog", type=Path, help="catalog directory (default $QTD_CATALOG, "
                   "else $XDG_DATA_HOME/qtd/catalog)")
    p.add_argument("--config", type=Path, help="agent config whose --account supplies keys, "
                   "data_rest_url and data_feed")
    p.add_argument("--account", help="account name (credentials file "
                   "$CREDENTIALS_DIRECTORY/<account>.env; default: the venue's name)")
    p.add_argument("--credentials-env", nargs=2, metavar=("KEY_VAR", "SECRET_VAR"),
                   default=DEFAULT_KEYS, help="variables holding the key and secret "
                   f"(default {' '.join(DEFAULT_KEYS)})")
    p.add_argument("--credentials-file", default="", help="env file with those variables "
                   "(mode 0600)")
    p.add_argument("--rest-url", default="", help="market data REST base override")
    p.add_argument("--feed", choices=["iex", "sip"], help="alpaca stocks feed (default iex)")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, s")
    p.set_defaults(handler=run_fetch)


def run_fetch(args: argparse.Namespace) -> int:
    """Handler of ``qtd data fetch``.

    Raises:
        ConfigError: unknown venue or one without history, bad times, missing credentials.
    """
    venue = _venue(args.venue)
    keys = [SetKey(venue.name, s.upper(), args.interval) for s in args.symbols]
    catalog = Catalog(args.catalog)
    end_ns = _time(args.end, "--end") if args.end else time.time_ns()
    starts = {k: _start(args.start, catalog, k) for k in keys}
    ctx = _context(args, venue)
    bar = sys.stdout.isatty()
    results = asyncio.run(_fetch_all(venue, ctx, catalog, keys, starts, end_ns, bar))
    return 0 if all(not r.bad and not r.error for r in results) else 1


async def _fetch_all(venue: Venue, ctx: HistoryContext, catalog: Catalog, keys: list[SetKey],
                     starts: dict[SetKey, int], end_ns: int, bar: bool) -> list[FetchResult]:
    assert venue.history is not None
    source = venue.history(ctx)
    listener: RichListener | LineListener = RichListener() if bar else LineListener(sys.stdout)
    out: list[FetchResult] = []
    try:
        with listener:
            fetcher = Fetcher(catalog, source, listener=listener)
            for key in keys:
                out.append(await fetcher.fetch(key, starts[key], end_ns))
    finally:
        await source.close()
    return out


def _venue(name: str) -> Venue:
    venue = get(name, field="venue", source="qtd data fetch")
    if venue.history is None:
        have = [n for n in known() if get(n).history is not None]
        raise ConfigError(f"venue {name!r} has no history to fetch; venues with history: "
                          f"{', '.join(have)}", field="venue", value=name,
                          rule=f"one of: {', '.join(have)}")
    return venue


def _time(text: str, option: str) -> int:
    try:
        return parse_ts(text)
    except ValueError:
        raise ConfigError(f"{option} {text!r}: not a time", field=option, value=text,
                          rule="ISO 8601 (2024-01-01, 2024-01-01T09:30:00Z) or epoch") from None


def _start(text: str | None, catalog: Catalog, key: SetKey) -> int:
    if text:
        return _time(text, "--start")
    span = catalog.span(key)
    if span is None:
        raise ConfigError(f"{key.name} is not in the catalog ({catalog.root}): give --start",
                          field="--start", value="", rule="required for a new set")
    return span[0]


def _context(args: argparse.Namespace, venue: Venue) -> HistoryContext:
    from qtd.agent.accounts import load_credentials

    name = args.account or venue.name
    rest_url, feed = args.rest_url, args.feed
    settings = AccountSettings(broker=venue.name, credentials_env=list(args.credentials_env),
                               credentials_file=args.credentials_file)
    if args.config:
        from qtd.agent.config import load_agent_config

        cfg = load_agent_config(args.config)
        if name not in cfg.accounts:
            raise ConfigError(f"{args.config}: no [accounts.{name}] (accounts: "
                              f"{', '.join(cfg.accounts)})", source=str(args.config),
                              field="--account", value=name, rule="an account of the config")
        settings = cfg.accounts[name]
        rest_url, feed = rest_url or settings.data_rest_url, feed or settings.data_feed
    creds = load_credentials(name, settings) if venue.keys_for_data else None
    return HistoryContext(credentials=creds, rest_url=rest_url, data_feed=feed or "iex",
                          timeout_s=args.timeout)


def _summary(key: SetKey, r: FetchResult) -> str:
    asked = ", ".join(f"{ns_to_iso(lo)} .. {ns_to_iso(hi)}" for lo, hi in r.asked)
    text = (f"{key.name}: {r.added} bars added, {r.received} received in {r.pages} pages"
            + (f" (asked {asked})" if asked else " (already complete: nothing asked)"))
    if r.gaps:
        text += (f"; {r.gaps} stretch{'es' if r.gaps != 1 else ''} without bars at the venue "
                 f"(longest {_duration(r.longest_gap_ns)} from {r.longest_gap_at}; "
                 f"qtd data verify {key.name} checks them against its calendar)")
    if r.bad:
        text += f"; {len(r.bad)} bad bars dropped"
    if r.error:
        text += f"; STOPPED: {r.error} (what came before is stored; run again to resume)"
    return text


def _duration(ns: int) -> str:
    minutes = ns // 60_000_000_000
    return f"{minutes // 1440}d {minutes % 1440 // 60}h" if minutes >= 1440 else \
        f"{minutes // 60}h {minutes % 60}m" if minutes >= 60 else f"{minutes}m"


class LineListener:
    """Plain progress lines (not a terminal): start, every tenth, problems, summary."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.total, self.done, self.next_tenth = 0, 0, 1

    def __enter__(self) -> LineListener:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def started(self, key: SetKey, total_ns: int) -> None:
        self.total, self.done, self.next_tenth = total_ns, 0, 1
        print(f"{key.name}: fetching {total_ns / key.interval_ns:.0f} bar slots", file=self.out,
              flush=True)

    def advanced(self, key: SetKey, done_ns: int, bars: int) -> None:
        self.done += done_ns
        while self.total and self.done * 10 >= self.next_tenth * self.total \
                and self.next_tenth < 10:
            print(f"{key.name}: {self.next_tenth * 10}%", file=self.out, flush=True)
            self.next_tenth += 1

    def problem(self, key: SetKey, bad: BadBar) -> None:
        print(f"{key.name}: bad bar {bad.describe()}", file=self.out, flush=True)

    def finished(self, key: SetKey, result: FetchResult) -> None:
        print(_summary(key, result), file=self.out, flush=True)


class RichListener:
    """A rich progress bar per symbol (a terminal)."""

    def __init__(self) -> None:
        self.console = Console()
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[bars]} bars"), TimeRemainingColumn(),
                                 console=self.console)
        self.tasks: dict[SetKey, TaskID] = {}
        self.bars: dict[SetKey, int] = {}

    def __enter__(self) -> RichListener:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def started(self, key: SetKey, total_ns: int) -> None:
        self.tasks[key] = self.progress.add_task(key.name, total=max(total_ns, 1), bars=0)
        self.bars[key] = 0

    def advanced(self, key: SetKey, done_ns: int, bars: int) -> None:
        self.bars[key] += bars
        self.progress.update(self.tasks[key], advance=done_ns, bars=self.bars[key])

    def problem(self, key: SetKey, bad: BadBar) -> None:
        self.progress.console.print(f"[yellow]{escape(key.name)}: bad bar "
                                    f"{escape(bad.describe())}[/yellow]", highlight=False)

    def finished(self, key: SetKey, result: FetchResult) -> None:
        self.progress.update(self.tasks[key], completed=1, total=1)
        self.progress.console.print(_summary(key, result), markup=False, highlight=False)
