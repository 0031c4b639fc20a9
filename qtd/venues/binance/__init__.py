"""The ``binance`` venue: Binance spot through python-binance.

* Broker: :class:`~qtd.venues.binance.broker.BinanceBroker` (``AsyncClient`` + its own
  WebSocket API user stream). Endpoints by mode: :mod:`qtd.venues.binance.endpoints`
  (live = production, paper = the spot test network); ``base_url`` / ``stream_url``
  override them (local stubs in tests).
* Live data: :class:`~qtd.venues.binance.feed.BinanceSession` (public kline/trade streams:
  no keys, so shadow accounts need no credentials); always open; silence limit 5 s (the
  kline stream pushes an update every 2 s).
* History: :class:`~qtd.venues.binance.history.BinanceHistory` (public REST klines, no
  keys) for ``qtd data fetch``.
* Instruments: the ones the shipped configs use (quote USDT).

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
from qtd.venues.binance.endpoints import LIVE_API, LIVE_WS_API, TESTNET_API, TESTNET_WS_API

if TYPE_CHECKING:
    from qtd.catalog.fetch import BarSource
    from qtd.feeds.live import LiveFeed, LiveSettings, VenueSession

SILENCE_S = 5.0  # "Kline/Candlestick Streams": update speed 2000 ms

INSTRUMENTS = instrument_table(
    "binance",
    ("BTCUSDT", "crypto", "USDT", "24x7"),
    ("ETHUSDT", "crypto", "USDT", "24x7"),
    ("SOLUSDT", "crypto", "USDT", "24x7"),
)


async def _connect(ctx: AccountContext) -> Broker:
    from qtd.venues.binance.broker import BinanceBroker

    s = ctx.settings
    live = s.mode == "live"
    key, secret = ctx.credentials or ("", "")
    return await started(BinanceBroker(
        account=ctx.name, node=ctx.node, clock=ctx.clock, api_key=key, api_secret=secret,
        symbols=ctx.symbols,
        api_url=s.base_url or (LIVE_API if live else TESTNET_API),
        ws_api_url=s.stream_url or (LIVE_WS_API if live else TESTNET_WS_API),
        quote_asset=s.quote_asset, timeout_s=s.timeout_s, venue=s.venue_name))


def _session(symbols: list[str], interval_ns: int, settings: LiveSettings) -> VenueSession:
    from qtd.venues.binance.feed import BinanceSession

    return BinanceSession(symbols, interval_ns, settings)


def _feed(ctx: FeedContext) -> LiveFeed:
    from qtd.venues.streams import account_live_feed

    return account_live_feed(ctx, "binance")


def _history(ctx: HistoryContext) -> BarSource:
    from qtd.venues.binance.history import BinanceHistory

    return BinanceHistory(ctx)


VENUE = Venue(name="binance", instruments=INSTRUMENTS, connect=_connect,
              live_data=LiveData(session=_session, feed=_feed, silence_s=SILENCE_S),
              history=_history, default_calendar=lambda _symbol: "24x7")
