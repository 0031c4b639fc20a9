"""The books of a store, as ``qtd positions`` prints them: positions and PnL per node, bot,
account and symbol, marked to the last price.

* **Netting**: :mod:`qtd.projections` (average cost), one projection per node, so a fleet.db
  holding several nodes keeps each node's books apart, as the status page does.
* **Fees**: ``realized`` is **net of fees** paid in the position's quote currency, the
  convention of the status page (:mod:`qtd.leader.view`) and the agents' ``PnLSnapshot``;
  ``fees`` shows what was subtracted, ``gross_realized`` what it was subtracted from. Fees
  in another currency (e.g. BNB) are listed apart and not subtracted.
* **Mark**: open positions are valued at the last price the store saw for the symbol, from
  any event that carries one (:data:`PRICE_SOURCES`: a fill of any bot, an order intent's
  decision price, a signal's price, a broker position snapshot's mark), latest ``ts_event``
  first; the mark's source and time are kept with it. A store holds no market data feed, so
  between trades the mark is as old as its time says.
* **Units**: quantities in instrument units (shares, contracts, coins; negative = short),
  prices and money in the position's quote currency (the account currency).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import msgspec

from qtd.events import AnyEvent, Fill, OrderIntent, PositionSnapshot, Signal
from qtd.projections import DayPnL, Position, Projections, TradingDay

PRICE_SOURCES = {Fill: "fill", OrderIntent: "decision", Signal: "signal",
                 PositionSnapshot: "broker mark"}


class Mark(msgspec.Struct, frozen=True):
    """The last price seen for a symbol: quote currency, when (UTC ns), from which event
    kind (:data:`PRICE_SOURCES`) and its node/seq."""

    price: Decimal
    ts_ns: int
    source: str
    node: str
    seq: int


def price_of(ev: AnyEvent) -> Decimal | None:
    """The market price an event carries, if any (module docstring)."""
    if isinstance(ev, Fill):
        return ev.price
    if isinstance(ev, OrderIntent):
        return ev.decision_price
    if isinstance(ev, Signal):
        return ev.price
    if isinstance(ev, PositionSnapshot):
        return ev.mark_price
    return None


class Books:
    """Positions and daily PnL of every node in one store, with the marks.

    Args:
        trading_day: the day rule for :attr:`daily` (:mod:`qtd.tradingday`).

    Attributes:
        nodes: node → its :class:`~qtd.projections.Projections`.
        marks: symbol → its last :class:`Mark`.
    """

    def __init__(self, trading_day: TradingDay) -> None:
        self.trading_day = trading_day
        self.nodes: dict[str, Projections] = {}
        self.marks: dict[str, Mark] = {}

    def apply(self, ev: AnyEvent) -> None:
        """Apply one event to its node's projections and the marks."""
        proj = self.nodes.get(ev.node)
        if proj is None:
            proj = self.nodes[ev.node] = Projections(self.trading_day)
        proj.apply(ev)
        price = price_of(ev)
        symbol = getattr(ev, "symbol", "")
        if price is not None and symbol:
            old = self.marks.get(symbol)
            if old is None or ev.ts_event >= old.ts_ns:
                self.marks[symbol] = Mark(price, ev.ts_event, PRICE_SOURCES[type(ev)],
                                          ev.node, ev.seq)

    async def rebuild(self, batches: AsyncIterator[list[AnyEvent]]) -> Books:
        """Apply every batch (:func:`qtd.quality.event_files.read_events`); return self."""
        async for batch in batches:
            for ev in batch:
                self.apply(ev)
        return self

    def positions(self) -> list[tuple[str, Position]]:
        """``(node, position)`` sorted by node, bot, account, symbol."""
        rows = [(n, p) for n, proj in self.nodes.items() for p in proj.positions.values()]
        return sorted(rows, key=lambda r: (r[0], r[1].bot, r[1].account, r[1].symbol))

    def daily(self) -> list[tuple[str, str, str, DayPnL]]:
        """``(node, bot, trading day, DayPnL)`` sorted."""
        return sorted(((n, b, d, v) for n, proj in self.nodes.items()
                       for (b, d), v in proj.daily.items()), key=lambda r: r[:3])

    def unrealized(self, p: Position) -> Decimal:
        """Unrealized PnL of ``p`` at its symbol's mark (quote currency)."""
        mark = self.marks.get(p.symbol)
        return p.unrealized(mark.price if mark is not None else None)

    def anomalies(self) -> list[tuple[str, int, str]]:
        return [(n, s, m) for n, proj in sorted(self.nodes.items()) for s, m in proj.anomalies]

    def open_orders(self) -> int:
        return sum(1 for proj in self.nodes.values() for _ in proj.orders.open_orders())
