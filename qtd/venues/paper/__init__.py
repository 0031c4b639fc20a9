"""The ``paper`` venue: qtd's own simulated account (:class:`~qtd.brokers.paper.PaperBroker`)
filled on replayed bundled data sets; no venue client, no credentials.

Its instruments are the symbols of the bundled real data sets (``qtd data list``), traded
as what they are: SPX and IXIC are the S&P 500 and NASDAQ Composite index levels.
"""

from __future__ import annotations

from decimal import Decimal

from qtd.brokers.base import Broker
from qtd.brokers.paper import PaperBroker
from qtd.venues import AccountContext, Venue, instrument_table

INSTRUMENTS = instrument_table(
    "paper",
    ("GOOG", "equity", "USD", "XNYS"),
    ("SPX", "index", "USD", "XNYS"),
    ("IXIC", "index", "USD", "XNYS"),
    ("EURUSD", "fx", "USD", "FX"),
    ("BTCUSD", "crypto", "USD", "24x7"),
    ("ES", "future", "USD", "CME"),
)


def paper_broker(ctx: AccountContext) -> PaperBroker:
    """qtd's paper broker for an account (``cash``, ``slippage_bps``, ``commission_bps``,
    ``max_fill_qty`` apply): a ``paper`` account, or a venue account in shadow / qtd-paper
    mode (then filled on the venue's live market data)."""
    s = ctx.settings
    return PaperBroker(
        account=ctx.name, node=ctx.node, clock=ctx.clock, venue=s.venue_name,
        cash=Decimal(str(s.cash)), slippage_bps=Decimal(str(s.slippage_bps)),
        commission_bps=Decimal(str(s.commission_bps)),
        max_fill_qty=None if s.max_fill_qty is None else Decimal(str(s.max_fill_qty)),
        history=ctx.history)


async def _connect(ctx: AccountContext) -> Broker:
    return paper_broker(ctx)


VENUE = Venue(name="paper", instruments=INSTRUMENTS, connect=_connect, simulator=True,
              keys_for_orders=False)
