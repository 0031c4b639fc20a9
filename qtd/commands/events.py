"""``qtd events`` and ``qtd positions``: read a store (read-only) and print."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TextIO

import msgspec

from qtd.books import Books
from qtd.commands.dayrule import resolve_trading_day
from qtd.errors import ConfigError
from qtd.events import KINDS, Event, to_json
from qtd.quality.event_files import read_events
from qtd.storeread import Row, open_reader
from qtd.tradingday import DayRule

_COMMON = {"node", "bot", "ts_event", "ts_init", "seq", "symbol", "client_order_id"}
FOLLOW_POLL_S = 0.5


def format_ts(ts_ns: int) -> str:
    """UTC ISO 8601 with milliseconds, e.g. ``2026-11-25T14:30:00.123Z``."""
    dt = datetime.fromtimestamp(ts_ns / 1e9, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def event_line(ev: Event, node: bool = False) -> str:
    """One table row: seq, time, kind, bot, symbol, client_order_id, other fields (``node``:
    prefixed by the event's node, for a fleet.db holding several)."""
    rest = " ".join(
        f"{k}={v}" for k, v in msgspec.structs.asdict(ev).items()
        if k not in _COMMON and v not in (None, "", {}, [])
    )
    return (
        (f"{ev.node:<10} " if node else "")
        + f"{ev.seq:>8} {format_ts(ev.ts_event)} {type(ev).__name__:<20} {ev.bot:<12} "
        f"{getattr(ev, 'symbol', '') or '-':<10} {getattr(ev, 'client_order_id', '') or '-':<26} "
        f"{rest}"
    )


def _print(rows: Iterable[Row], as_json: bool, node: bool, out: TextIO) -> None:
    for _, ev in rows:
        out.write((to_json(ev).decode() if as_json else event_line(ev, node)) + "\n")
    out.flush()


async def run_events(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run ``qtd events`` on an agent's events.db or the leader's fleet.db (every node's
    events, each line prefixed by its node; ``--after-seq`` is then the ingest id);
    returns the exit status."""
    for k in args.kind or []:
        if k not in KINDS:
            raise ConfigError(
                f"--kind {k!r}: unknown event kind; one of {', '.join(sorted(KINDS))}",
                source="<arg>", field="kind", value=k, rule="known event kind",
            )
    reader = await open_reader(args.db)
    try:
        if args.tail:
            rows = await reader.query(args, after=args.after_seq, limit=args.tail,
                                      newest_first=True)
            rows.reverse()
        else:
            rows = await reader.query(args, after=args.after_seq, limit=args.limit)
        if not args.json and not args.follow and not rows:
            print("(no events match)", file=sys.stderr)
        _print(rows, args.json, reader.fleet, out)
        last = rows[-1][0] if rows else max(args.after_seq, await reader.last_position())
        while args.follow:
            await asyncio.sleep(FOLLOW_POLL_S)
            rows = await reader.query(args, after=last)
            _print(rows, args.json, reader.fleet, out)
            if rows:
                last = rows[-1][0]
    finally:
        await reader.close()
    return 0


def _dec(x: Decimal) -> str:
    """Plain decimal text without trailing zeros or exponent (``100.50`` → ``100.5``)."""
    return f"{x.normalize():f}" if x else "0"


def _money(x: Decimal) -> str:
    return f"{x:,.2f}"


def _price(x: Decimal | None) -> str:
    """A price with its own decimals (2 to 8), thousands separated; ``-`` when unknown."""
    if x is None:
        return "-"
    exp = x.normalize().as_tuple().exponent
    places = min(max(2, -exp if isinstance(exp, int) else 2), 8)
    return f"{x:,.{places}f}"


def table(rows: list[list[str]], right: set[int]) -> str:
    """Rows of cells as aligned columns (two spaces apart; ``right``: right-aligned)."""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) if c in right else cell.ljust(w)
                               for c, (cell, w) in enumerate(zip(r, widths, strict=True))
                               ).rstrip() for r in rows)


LEGEND = ("qty in instrument units (shares, contracts, coins; negative = short); prices and "
          "money in the account's quote currency (ccy); realized is NET of fees, as on the "
          "status page (fees: what was subtracted); unrealized at the mark: the last price "
          "this store saw for the symbol (a fill, an order's decision price, a signal or a "
          "broker mark), listed below with its source and time")


async def run_positions(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run ``qtd positions`` on an agent's events.db or the leader's fleet.db (conventions:
    :mod:`qtd.books`; trading day: :mod:`qtd.commands.dayrule`); returns the exit status."""
    day, rule = resolve_trading_day(args.tz, args.rollover, args.leader_config, args.db)
    books = await Books(day).rebuild(read_events(args.db))
    today = day.label(time.time_ns())
    if args.json:
        out.write(json.dumps(_positions_doc(books, rule, today), indent=2) + "\n")
        return 0
    out.write(f"{args.db}: trading day {rule.describe()}; today is {today}\n{LEGEND}\n\n")
    out.write(_positions_text(books) + "\n")
    for node, seq, msg in books.anomalies():
        out.write(f"ANOMALY {node} seq {seq}: {msg}\n")
    return 0


def _positions_text(books: Books) -> str:
    head = ["node", "bot", "account", "symbol", "qty", "avg price", "mark", "unrealized",
            "realized", "fees", "ccy"]
    rows = [head]
    for node, p in books.positions():
        mark = books.marks.get(p.symbol)
        rows.append([node, p.bot, p.account, p.symbol, _dec(p.qty), _price(p.avg_price or None),
                     _price(mark.price if mark else None), _money(books.unrealized(p)),
                     _money(p.net_realized), _money(p.fees), p.currency])
    parts = [table(rows, {4, 5, 6, 7, 8, 9}) if len(rows) > 1 else "(no positions)"]
    ccy = {(n, p.bot): p.currency for n, p in books.positions()}
    daily = [["node", "bot", "trading day", "realized", "fees", "fills", "traded", "ccy"]]
    for node, bot, d, v in books.daily():
        daily.append([node, bot, d, _money(v.realized - v.fees), _money(v.fees), str(v.fills),
                      _money(v.traded_notional), ccy.get((node, bot), "")])
    if len(daily) > 1:
        parts.append(table(daily, {3, 4, 5, 6}))
    marks = [["symbol", "mark", "source", "at (UTC)", "node", "seq"]]
    for sym, m in sorted(books.marks.items()):
        marks.append([sym, _price(m.price), m.source, format_ts(m.ts_ns), m.node, str(m.seq)])
    if len(marks) > 1:
        parts.append(table(marks, {1, 5}))
    return "\n\n".join(parts)


def _positions_doc(books: Books, rule: DayRule, today: str) -> dict[str, Any]:
    def mark(sym: str) -> dict[str, Any] | None:
        m = books.marks.get(sym)
        return None if m is None else {"price": _dec(m.price), "source": m.source,
                                       "ts_ns": m.ts_ns, "node": m.node, "seq": m.seq}

    return {
        "conventions": {"qty": "instrument units, negative = short",
                        "money": "the position's quote currency (currency)",
                        "realized": "net of fees in the quote currency (as the status page)",
                        "unrealized": "at mark: the last price seen in the store"},
        "trading_day": {"tz": rule.tz, "rollover": rule.rollover, "source": rule.source,
                        "today": today},
        "positions": [
            {"node": n, "bot": p.bot, "account": p.account, "symbol": p.symbol,
             "currency": p.currency, "qty": _dec(p.qty), "avg_price": _dec(p.avg_price),
             "realized": _dec(p.net_realized), "gross_realized": _dec(p.realized),
             "fees": _dec(p.fees), "unrealized": _dec(books.unrealized(p)),
             "mark": mark(p.symbol), "last_fill_price": _dec(p.last_price) if p.last_price
             else None, "other_fees": {k: _dec(v) for k, v in p.other_fees.items()}}
            for n, p in books.positions()
        ],
        "daily": [
            {"node": n, "bot": b, "trading_day": d, "realized": _dec(v.realized - v.fees),
             "gross_realized": _dec(v.realized), "fees": _dec(v.fees), "fills": v.fills,
             "traded_notional": _dec(v.traded_notional)}
            for n, b, d, v in books.daily()
        ],
        "anomalies": [{"node": n, "seq": s, "message": m} for n, s, m in books.anomalies()],
        "open_orders": books.open_orders(),
    }
