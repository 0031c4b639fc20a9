"""Live market data by venue name: the entry points that pick a venue's
:class:`~qtd.feeds.live.VenueSession` from the registry (:mod:`qtd.venues`) and wrap it in
the venue-neutral :class:`~qtd.feeds.live.LiveFeed` (guarantees in :mod:`qtd.feeds.live`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Literal

from qtd.errors import ConfigError
from qtd.feeds.bars import Bar, parse_interval
from qtd.feeds.live import LiveFeed, LiveSettings, MarketOpen, OnPrice, VenueSession
from qtd.venues import FeedContext, LiveData, get


def _live_data(venue: str) -> LiveData:
    try:
        data = get(venue, field="venue").live_data
    except ConfigError as exc:  # its message names the known venues
        raise ValueError(str(exc)) from None
    if data is None:
        raise ValueError(f"venue = {venue!r}: no live market data (bots on it replay data)")
    return data


def silence_for(settings: LiveSettings) -> float:
    """The silence watchdog's limit, seconds: ``settings.silence_s``, or the venue default
    (5 s Binance, 65 s Alpaca; see :class:`~qtd.feeds.live.LiveSettings`).

    Raises:
        ValueError: unknown venue, or one without live data.
    """
    if settings.silence_s is not None:
        return settings.silence_s
    return _live_data(settings.venue).silence_s


def market_open_for(settings: LiveSettings) -> MarketOpen | None:
    """The "is the market open" test for ``settings``: an exchange calendar (``calendar``,
    else the venue's default: ``"XNYS"`` for Alpaca stocks), None (always open) without one.

    Raises:
        ValueError: unknown venue, or ``calendar`` is not an exchange-calendars code.
    """
    code = settings.calendar
    if code is None:
        code = _live_data(settings.venue).calendar(settings)
    if code is None:
        return None
    from qtd.calendars import ExchangeSession, is_calendar

    if not is_calendar(code):
        raise ValueError(f"calendar = {code!r}: not an exchange-calendars code")
    return ExchangeSession(code).contains


def make_session(venue: str, symbols: list[str], interval_ns: int,
                 settings: LiveSettings) -> VenueSession:
    """The venue session for ``venue``.

    Raises:
        ValueError: unknown venue, or an interval the venue does not stream (names it).
    """
    session: VenueSession = _live_data(venue).session(symbols, interval_ns, settings)
    return session


def open_live_feed(venue: str, symbols: list[str], interval: str, settings: LiveSettings, *,
                   on_price: OnPrice | None = None,
                   market_open: MarketOpen | None = None) -> LiveFeed:
    """A :class:`~qtd.feeds.live.LiveFeed` for ``symbols`` at ``interval`` (``"1m"``,
    ``"5m"``, ``"1h"``...); start it with ``asyncio.create_task(feed.run())`` and iterate it.

    Raises:
        ValueError: bad venue, interval, symbols or calendar (the message names the field).
    """
    if not symbols:
        raise ValueError("symbols = []: at least one symbol is required")
    iv = parse_interval(interval)
    if iv.months:
        raise ValueError(f"interval = {interval!r}: calendar-month bars are not streamed")
    if venue != settings.venue:
        raise ValueError(f"venue = {venue!r} but settings.venue = {settings.venue!r}")
    session = make_session(venue, symbols, iv.fixed_ns, settings)
    return LiveFeed(session, symbols, iv.fixed_ns, settings,
                    market_open=market_open or market_open_for(settings), on_price=on_price,
                    default_silence_s=silence_for(settings))


def account_live_feed(ctx: FeedContext, venue: str, *,
                      asset_class: Literal["stock", "crypto"] = "stock") -> LiveFeed:
    """The live feed of an account's bots from its ``data_*`` settings (bars at
    ``data_interval``; ``ctx.credentials`` as the data API key, if any).

    Raises:
        ValueError: bad interval, symbols or venue.
    """
    s = ctx.settings
    key, secret = ctx.credentials or ("", "")
    settings = LiveSettings(
        venue=venue, api_key=key, secret_key=secret, asset_class=asset_class,
        feed=s.data_feed, stream_url=s.data_stream_url or None,
        rest_url=s.data_rest_url or None)
    return open_live_feed(venue, ctx.symbols, s.data_interval, settings,
                          on_price=ctx.on_price)


@contextlib.asynccontextmanager
async def open_live_bars(venue: str, symbols: list[str], interval: str, settings: LiveSettings,
                         *, on_price: OnPrice | None = None) -> AsyncIterator[
                             AsyncIterator[Bar]]:
    """Closed bars of ``symbols`` from ``venue``, reconnected and back-filled (see
    :mod:`qtd.feeds.live`); the feed runs while the context is open and is closed on exit.

    Raises:
        ValueError: as :func:`open_live_feed`.
    """
    feed = open_live_feed(venue, symbols, interval, settings, on_price=on_price)
    task = asyncio.create_task(feed.run(), name=f"live-feed-{venue}")

    async def bars() -> AsyncIterator[Bar]:
        async for item in feed:
            if type(item) is Bar:
                yield item

    try:
        yield bars()
    finally:
        await feed.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
