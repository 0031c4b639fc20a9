"""The ``alpaca`` venue: Alpaca stocks and crypto through alpaca-py.

* Broker: :class:`~qtd.venues.alpaca.broker.AlpacaBroker` (``TradingClient`` +
  ``TradingStream``); ``mode = "paper"`` uses ``https://paper-api.alpaca.markets``, ``"live"``
  ``https://api.alpaca.markets`` (alpaca-py picks them from ``paper=``); ``base_url`` /
  ``stream_url`` override them (local stubs in tests).
* Live data: :class:`~qtd.venues.alpaca.feed.AlpacaSession` (one-minute bars; the account's
  keys are needed for data too, so shadow accounts need credentials); crypto when every
  symbol has a ``/`` (``"BTC/USD"``), else stocks on the ``XNYS`` calendar; silence limit
  65 s (one bar a minute on a quiet symbol, plus publication delay).
* History: :class:`~qtd.venues.alpaca.history.AlpacaHistory` (stock and crypto bars,
  the account's keys) for ``qtd data fetch``.
* Instruments: the ones the shipped configs use.

SDK modules are imported only when an account connects or a feed is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtd.brokers.base import Broker
from qtd.venues import (
    AccountContext,
    FeedContext,
    HistoryContext,
    LiveData,
    Venue,
    instrument_table,
    started,
)

if TYPE_CHECKING:
    from qtd.catalog.fetch import BarSource
    from qtd.feeds.live import LiveFeed, LiveSettings, VenueSession

INSTRUMENTS = instrument_table(
    "alpaca",
    *((s, "equity", "USD", "XNYS") for s in ("AAPL", "GOOG", "MSFT", "SPY", "QQQ", "IWM")),
    ("BTC/USD", "crypto", "USD", "24x7"),
)
SILENCE_S = 65.0  # one bar a minute and nothing else on a quiet symbol, plus 5 s of delay


async def _connect(ctx: AccountContext) -> Broker:
    from qtd.venues.alpaca.broker import AlpacaBroker

    s = ctx.settings
    key, secret = ctx.credentials or ("", "")
    return await started(AlpacaBroker(
        account=ctx.name, node=ctx.node, clock=ctx.clock, api_key=key, secret_key=secret,
        paper=s.mode == "paper", base_url=s.base_url or None,
        stream_url=s.stream_url or None, timeout_s=s.timeout_s, venue=s.venue_name))


def _session(symbols: list[str], interval_ns: int, settings: LiveSettings) -> VenueSession:
    from qtd.venues.alpaca.feed import AlpacaSession

    return AlpacaSession(symbols, interval_ns, settings)


def _feed(ctx: FeedContext) -> LiveFeed:
    from qtd.venues.streams import account_live_feed

    crypto = all("/" in sym for sym in ctx.symbols)
    return account_live_feed(ctx, "alpaca", asset_class="crypto" if crypto else "stock")


def _calendar(settings: LiveSettings) -> str | None:
    return "XNYS" if settings.asset_class == "stock" else None


def _history(ctx: HistoryContext) -> BarSource:
    from qtd.venues.alpaca.history import AlpacaHistory

    return AlpacaHistory(ctx)


def _symbol_calendar(symbol: str) -> str:
    return "24x7" if "/" in symbol else "XNYS"  # crypto pairs have a slash: "BTC/USD"


VENUE = Venue(
    name="alpaca", instruments=INSTRUMENTS, connect=_connect,
    live_data=LiveData(session=_session, feed=_feed, silence_s=SILENCE_S, calendar=_calendar),
    keys_for_data=True, history=_history, default_calendar=_symbol_calendar)
