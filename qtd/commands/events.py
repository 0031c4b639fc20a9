"""``qtd events`` and ``qtd positions``: read a store (read-only) and print."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TextIO

import msgspec

from qtd.errors import ConfigError
from qtd.events import KINDS, Event, to_json
from qtd.projections import Projections, TradingDay
from qtd.store import EventStore

_COMMON = {"node", "bot", "ts_event", "ts_init", "seq", "symbol", "client_order_id"}
FOLLOW_POLL_S = 0.5


def format_ts(ts_ns: int) -> str:
    """UTC ISO 8601 with milliseconds, e.g. ``2026-11-25T14:30:00.123Z``."""
    dt = datetime.fromtimestamp(ts_ns / 1e9, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def event_line(ev: Event) -> str:
    """One table row: seq, time, kind, bot, symbol, client_order_id, other fields."""
    rest = " ".join(
        f"{k}={v}" for k, v in msgspec.structs.asdict(ev).items()
        if k not in _COMMON and v not in (None, "", {}, [])
    )
    return (
        f"{ev.seq:>8} {format_ts(ev.ts_event)} {type(ev).__name__:<20} {ev.bot:<12} "
        f"{getattr(ev, 'symbol', '') or '-':<10} {getattr(ev, 'client_order_id', '') or '-':<26} "
        f"{rest}"
    )


def _print(events: Iterable[Event], as_json: bool, out: TextIO) -> None:
    for ev in events:
        out.write((to_json(ev).decode() if as_json else event_line(ev)) + "\n")
    out.flush()


async def run_events(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run ``qtd events``; returns the exit status."""
    for k in args.kind or []:
        if k not in KINDS:
            raise ConfigError(
                f"--kind {k!r}: unknown event kind; one of {', '.join(sorted(KINDS))}",
                source="<arg>", field="kind", value=k, rule="known event kind",
            )
    filters: dict[str, Any] = dict(
        bot=args.bot, kind=args.kind, symbol=args.symbol, client_order_id=args.cid,
        since_ns=args.since, until_ns=args.until,
    )
    async with await EventStore.open(args.db, readonly=True) as store:
        if args.tail:
            events = await store.query(**filters, after_seq=args.after_seq, limit=args.tail,
                                       newest_first=True)
            events.reverse()
        else:
            events = await store.query(**filters, after_seq=args.after_seq, limit=args.limit)
        if not args.json and not args.follow and not events:
            print("(no events match)", file=sys.stderr)
        _print(events, args.json, out)
        last = events[-1].seq if events else max(args.after_seq, await _last_seq(store))
        while args.follow:
            await asyncio.sleep(FOLLOW_POLL_S)
            events = await store.query(**filters, after_seq=last)
            _print(events, args.json, out)
            if events:
                last = events[-1].seq
    return 0


async def _last_seq(store: EventStore) -> int:
    tail = await store.query(limit=1, newest_first=True)
    return tail[0].seq if tail else 0


def _dec(x: Decimal) -> str:
    """Plain decimal text without trailing zeros or exponent (``100.50`` → ``100.5``)."""
    return f"{x.normalize():f}" if x else "0"


async def run_positions(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run ``qtd positions``; returns the exit status."""
    try:
        day = TradingDay(args.tz, args.rollover)
    except (ValueError, KeyError) as exc:
        raise ConfigError(
            f"--tz {args.tz!r} / --rollover {args.rollover!r}: {exc}",
            source="<arg>", field="tz/rollover", value=f"{args.tz} {args.rollover}",
            rule="IANA time zone and HH:MM",
        ) from None
    async with await EventStore.open(args.db, readonly=True) as store:
        proj = await Projections(day).rebuild(store.replay_batches())
    positions = sorted(proj.positions.values(), key=lambda p: (p.bot, p.account, p.symbol))
    if args.json:
        doc = {
            "positions": [
                {"bot": p.bot, "account": p.account, "symbol": p.symbol, "qty": _dec(p.qty),
                 "avg_price": _dec(p.avg_price), "realized": _dec(p.realized),
                 "fees": _dec(p.fees), "unrealized_at_last": _dec(p.unrealized()),
                 "last_price": _dec(p.last_price) if p.last_price else None, "other_fees":
                 {k: _dec(v) for k, v in p.other_fees.items()}}
                for p in positions
            ],
            "daily": [
                {"bot": b, "trading_day": d, "realized": _dec(v.realized), "fees": _dec(v.fees),
                 "fills": v.fills, "traded_notional": _dec(v.traded_notional)}
                for (b, d), v in sorted(proj.daily.items())
            ],
            "anomalies": [{"seq": s, "message": m} for s, m in proj.anomalies],
            "open_orders": sum(1 for _ in proj.orders.open_orders()),
        }
        out.write(json.dumps(doc, indent=2) + "\n")
        return 0
    out.write(f"{'bot':<14}{'account':<12}{'symbol':<12}{'qty':>14}{'avg_price':>14}"
              f"{'realized':>14}{'fees':>10}{'unreal@last':>14}\n")
    for p in positions:
        out.write(f"{p.bot:<14}{p.account:<12}{p.symbol:<12}{_dec(p.qty):>14}"
                  f"{_dec(p.avg_price):>14.14}{_dec(p.realized):>14.14}{_dec(p.fees):>10.10}"
                  f"{_dec(p.unrealized()):>14.14}\n")
    out.write(f"\n{'bot':<14}{'trading_day':<14}{'realized':>14}{'fees':>10}{'fills':>8}\n")
    for (bot, d), v in sorted(proj.daily.items()):
        out.write(f"{bot:<14}{d:<14}{_dec(v.realized):>14.14}{_dec(v.fees):>10.10}"
                  f"{v.fills:>8}\n")
    for seq, msg in proj.anomalies:
        out.write(f"ANOMALY seq {seq}: {msg}\n")
    return 0
