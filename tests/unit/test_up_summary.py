"""qtd up's summary: the rich table (a terminal) and the plain lines (a pipe, CI) show the
same figures, from a snapshot of a real FleetView fed a round trip of one bot."""

from __future__ import annotations

import io
from decimal import Decimal

from rich.console import Console

from qtd.clock import SimClock
from qtd.events import OrderIntent, Side
from qtd.leader.view import FleetView
from qtd.projections import TradingDay
from qtd.up.summary import FleetWatch, render, rich_view, rows
from tests.factories import NODE, accepted, fill, submitted

T0 = 1_700_000_000_000_000_000


def _watch() -> FleetWatch:
    view = FleetView(trading_day=TradingDay(), capital=Decimal(100_000), currency="USD",
                     clock=SimClock(T0))
    for n, (side, price) in enumerate(((Side.BUY, "100"), (Side.SELL, "103.5"))):
        cid, ts = f"c{n}", T0 + n * 10_000_000
        view.apply(OrderIntent(node=NODE, bot="momo", ts_event=ts, ts_init=ts,
                               client_order_id=cid, cid_counter=n + 1, account="acct1",
                               venue="paper", symbol="SPY", side=side, qty=Decimal(10),
                               decision_price=Decimal(price)))
        for ev in (submitted(cid, ts + 1, bot="momo"), accepted(cid, ts + 2, bot="momo"),
                   fill(cid, f"t{n}", qty="10", price=price, bot="momo", symbol="SPY",
                        side=side, ts=ts + 3)):
            view.apply(ev)
    watch = FleetWatch(None, "qtd", {NODE: ["momo", "idle"]})  # type: ignore[arg-type]
    watch.snapshot = view.snapshot()
    watch.states[(NODE, "momo")] = "ACTIVE"
    watch.states[(NODE, "idle")] = "HALTED"
    return watch


def test_rich_table_and_plain_lines_carry_the_same_figures() -> None:
    watch = _watch()
    table = rows(watch)
    assert table[0][:5] == (NODE, "momo", "ACTIVE", 2, 2)
    assert table[0][5] == 35.0  # (103.5 - 100) x 10, realized
    assert table[1][:5] == (NODE, "idle", "HALTED", 0, 0)
    plain = render(watch, started=0.0, extra=["header line"])
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(
        rich_view(watch, started=0.0, extra=["header line"]))
    fancy = out.getvalue()
    for text in ("header line", "momo", "ACTIVE", "HALTED", "35.00", "kill switch: none"):
        assert text in plain and text in fancy, text
    assert "\x1b[" not in plain  # plain lines for pipes and CI: no terminal codes


def test_waiting_for_the_leader_before_the_first_snapshot() -> None:
    watch = FleetWatch(None, "qtd", {NODE: ["momo"]})  # type: ignore[arg-type]
    assert "(waiting for the leader)" in render(watch, started=0.0)
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(rich_view(watch, started=0.0))
    assert "(waiting for the leader)" in out.getvalue() and "?" in out.getvalue()
