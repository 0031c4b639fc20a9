"""Shadow mode: a bot trades live data on qtd's paper broker while its *live twin* (the same
strategy and params on a real account) trades the venue; this module reports how far apart
they ran (the tracking difference).

Shadow mode needs nothing new in the order path: the shadow bot's account is a
:class:`~qtd.brokers.paper.PaperBroker` fed by a :class:`qtd.feeds.live.LiveFeed`
(``on_price`` → ``PaperBroker.on_price``, the risk engine's marks), so its intents, risk
decisions and simulated fills are recorded in the event store exactly like live ones.

:func:`tracking_difference` compares the two bots over one period from their events (one
store, or each bot's own store), per symbol:

* orders: intents and fills of each; intents are paired in order per (symbol, side), the
  k-th shadow BUY with the k-th live BUY, and each pair's average fill prices give the
  **execution difference** in bps, signed so that positive means the live twin did worse
  (paid more on a buy, got less on a sell): ``(live − shadow) / shadow × 10,000 × (+1 buy,
  −1 sell)``;
* position: net quantity of each at the end of the period (instrument units);
* PnL: realized PnL net of fees and the unrealized PnL at a common mark (``marks``, default:
  the last live fill price, else the shadow's), quote currency; the **tracking difference**
  is ``live total − shadow total``.

Run ``python -m qtd.brokers.shadow --help`` for the command-line report.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import msgspec

from qtd.events import AnyEvent, Fill, OrderIntent, Side
from qtd.feeds.bars import parse_ts
from qtd.projections import Position

ZERO = Decimal(0)
BPS = Decimal(10_000)


class SymbolTracking(msgspec.Struct, frozen=True, kw_only=True):
    """Shadow vs live for one symbol (money in the quote currency, quantities in
    instrument units, differences in bps; see the module docstring for signs)."""

    symbol: str
    shadow_intents: int
    live_intents: int
    shadow_fills: int
    live_fills: int
    paired_orders: int
    mean_exec_diff_bps: float | None
    max_exec_diff_bps: float | None
    shadow_position: Decimal
    live_position: Decimal
    shadow_pnl: Decimal
    live_pnl: Decimal
    tracking_difference: Decimal
    mark: Decimal | None


class TrackingReport(msgspec.Struct, frozen=True, kw_only=True):
    """The tracking difference of a shadow bot against its live twin over one period."""

    shadow_bot: str
    live_bot: str
    since_ns: int | None
    until_ns: int | None
    symbols: list[SymbolTracking]
    tracking_difference: Decimal


def _by_symbol(events: Sequence[AnyEvent], bot: str) -> tuple[
        dict[str, list[OrderIntent]], dict[str, list[Fill]]]:
    intents: dict[str, list[OrderIntent]] = {}
    fills: dict[str, list[Fill]] = {}
    for ev in events:
        if ev.bot != bot:
            continue
        if type(ev) is OrderIntent:
            intents.setdefault(ev.symbol, []).append(ev)
        elif type(ev) is Fill:
            fills.setdefault(ev.symbol, []).append(ev)
    return intents, fills


def _avg_prices(fills: list[Fill]) -> dict[str, Decimal]:
    qty: dict[str, Decimal] = {}
    cost: dict[str, Decimal] = {}
    for f in fills:
        qty[f.client_order_id] = qty.get(f.client_order_id, ZERO) + f.qty
        cost[f.client_order_id] = cost.get(f.client_order_id, ZERO) + f.qty * f.price
    return {c: cost[c] / q for c, q in qty.items() if q}


def _exec_diffs(shadow: list[OrderIntent], live: list[OrderIntent], s_px: dict[str, Decimal],
                l_px: dict[str, Decimal]) -> list[float]:
    out: list[float] = []
    for side in (Side.BUY, Side.SELL):
        s_side = [i for i in shadow if i.side is side and i.client_order_id in s_px]
        l_side = [i for i in live if i.side is side and i.client_order_id in l_px]
        sign = 1 if side is Side.BUY else -1
        for s, lv in zip(s_side, l_side, strict=False):
            sp, lp = s_px[s.client_order_id], l_px[lv.client_order_id]
            out.append(float((lp - sp) / sp * BPS * sign))
    return out


def _position(bot: str, symbol: str, fills: list[Fill]) -> Position:
    pos = Position(bot, "", symbol, fills[0].currency if fills else "")
    for f in sorted(fills, key=lambda f: (f.ts_event, f.seq)):
        pos.apply(f)
    return pos


def tracking_difference(
    shadow_events: Sequence[AnyEvent], live_events: Sequence[AnyEvent], *, shadow_bot: str,
    live_bot: str, since_ns: int | None = None, until_ns: int | None = None,
    marks: dict[str, Decimal] | None = None,
) -> TrackingReport:
    """Compare a shadow bot with its live twin (module docstring).

    Args:
        shadow_events, live_events: events holding each bot's intents and fills (may be
            the same list); those outside ``[since_ns, until_ns)`` (``ts_event``, UTC ns)
            are ignored.
        shadow_bot, live_bot: the two bots' names.
        marks: mark price per symbol for unrealized PnL (quote currency).
    """
    def window(evs: Sequence[AnyEvent]) -> list[AnyEvent]:
        return [e for e in evs if (since_ns is None or e.ts_event >= since_ns)
                and (until_ns is None or e.ts_event < until_ns)]

    s_int, s_fill = _by_symbol(window(shadow_events), shadow_bot)
    l_int, l_fill = _by_symbol(window(live_events), live_bot)
    rows: list[SymbolTracking] = []
    for sym in sorted(set(s_int) | set(l_int) | set(s_fill) | set(l_fill)):
        sf, lf = s_fill.get(sym, []), l_fill.get(sym, [])
        sp, lp = _position(shadow_bot, sym, sf), _position(live_bot, sym, lf)
        mark = (marks or {}).get(sym) or lp.last_price or sp.last_price
        s_pnl = sp.net_realized + sp.unrealized(mark)
        l_pnl = lp.net_realized + lp.unrealized(mark)
        diffs = _exec_diffs(s_int.get(sym, []), l_int.get(sym, []), _avg_prices(sf),
                            _avg_prices(lf))
        rows.append(SymbolTracking(
            symbol=sym, shadow_intents=len(s_int.get(sym, [])),
            live_intents=len(l_int.get(sym, [])), shadow_fills=len(sf), live_fills=len(lf),
            paired_orders=len(diffs),
            mean_exec_diff_bps=sum(diffs) / len(diffs) if diffs else None,
            max_exec_diff_bps=max(diffs, key=abs) if diffs else None,
            shadow_position=sp.qty, live_position=lp.qty, shadow_pnl=s_pnl, live_pnl=l_pnl,
            tracking_difference=l_pnl - s_pnl, mark=mark))
    return TrackingReport(shadow_bot=shadow_bot, live_bot=live_bot, since_ns=since_ns,
                          until_ns=until_ns, symbols=rows,
                          tracking_difference=sum((r.tracking_difference for r in rows), ZERO))


async def tracking_report(shadow_db: Path, shadow_bot: str, live_db: Path, live_bot: str, *,
                          since_ns: int | None = None, until_ns: int | None = None
                          ) -> TrackingReport:
    """:func:`tracking_difference` read from event stores (opened read-only).

    Raises:
        StoreError: a store cannot be opened.
    """
    from qtd.store import EventStore

    async def load(db: Path, bot: str) -> list[AnyEvent]:
        store = await EventStore.open(db, readonly=True)
        try:
            return await store.query(bot=bot, kind=("OrderIntent", "Fill"), since_ns=since_ns,
                                     until_ns=until_ns)
        finally:
            await store.close()

    return tracking_difference(await load(shadow_db, shadow_bot), await load(live_db, live_bot),
                               shadow_bot=shadow_bot, live_bot=live_bot, since_ns=since_ns,
                               until_ns=until_ns)


def format_report(r: TrackingReport) -> str:
    """The report as text for an operator."""
    lines = [f"shadow {r.shadow_bot} vs live {r.live_bot}: tracking difference "
             f"{r.tracking_difference:+.2f} (live − shadow, quote currency)"]
    for s in r.symbols:
        exec_ = ("-" if s.mean_exec_diff_bps is None else
                 f"mean {s.mean_exec_diff_bps:+.1f} bps, worst {s.max_exec_diff_bps:+.1f} bps "
                 f"over {s.paired_orders} paired orders")
        lines.append(
            f"  {s.symbol}: intents {s.shadow_intents}/{s.live_intents}, fills "
            f"{s.shadow_fills}/{s.live_fills} (shadow/live); execution {exec_}; position "
            f"{s.shadow_position}/{s.live_position}; PnL {s.shadow_pnl:.2f}/{s.live_pnl:.2f} "
            f"at mark {s.mark}; difference {s.tracking_difference:+.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m qtd.brokers.shadow",
        description="Tracking difference of a shadow bot (paper broker on live data) against "
                    "its live twin over one period, from the event stores (read-only). "
                    "Positive execution differences mean the live twin filled worse.")
    ap.add_argument("--shadow-db", type=Path, required=True, help="store of the shadow bot")
    ap.add_argument("--shadow-bot", required=True, help="name of the shadow bot")
    ap.add_argument("--live-db", type=Path, help="store of the live twin (default: shadow's)")
    ap.add_argument("--live-bot", required=True, help="name of the live twin")
    ap.add_argument("--since", help="start, ISO 8601 or epoch (UTC), inclusive")
    ap.add_argument("--until", help="end, ISO 8601 or epoch (UTC), exclusive")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    a = ap.parse_args(argv)
    try:
        since = parse_ts(a.since) if a.since else None
        until = parse_ts(a.until) if a.until else None
    except ValueError as exc:
        print(f"--since/--until: {exc}", file=sys.stderr)
        return 78
    report = asyncio.run(tracking_report(a.shadow_db, a.shadow_bot, a.live_db or a.shadow_db,
                                         a.live_bot, since_ns=since, until_ns=until))
    print(msgspec.json.encode(report).decode() if a.json else format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
