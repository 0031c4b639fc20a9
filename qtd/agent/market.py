"""Paper-mode market data: bundled real series replayed at an accelerated pace, fanned out.

One :class:`ReplayFeed` per (data set, symbol, speed, loop): every bot on the same source
shares it. For each item, in timestamp order, the feed first calls ``on_price`` (paper
brokers fill resting orders, the risk engine marks the symbol) and only then hands the item
to each subscribed bot, so a bot's market order fills at the price it decided on.

Each subscriber has a bounded queue (:data:`QUEUE_SIZE` items); a bot that falls that far
behind loses its oldest items (counted in :attr:`ReplayFeed.dropped`) rather than growing
memory without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Final

import msgspec

from qtd.catalog.named import load_named
from qtd.feeds import Bar, HistoricalFeed, MarketData
from qtd.feeds.live import LiveFeed

log = logging.getLogger("qtd.agent.market")

QUEUE_SIZE: Final = 4096
OnPrice = Callable[[str, Decimal], Awaitable[None]]
_END: Final = object()


class FeedKey(msgspec.Struct, frozen=True):
    """Identity of a shared feed."""

    dataset: str
    symbol: str
    speed: float
    loop: bool


def _restamp(items: list[MarketData], symbol: str) -> list[MarketData]:
    if not items or items[0].symbol == symbol:
        return items
    return [msgspec.structs.replace(i, symbol=symbol) for i in items]


class ReplayFeed:
    """One replayed series shared by several bots (see the module docstring).

    Args:
        key: data set, symbol stamped on its items, speed (multiple of real time), loop.
        on_price: async callback ``(symbol, price)`` run before bots see each item.
        items: the series itself (tests, benchmarks); default: load ``key.dataset``.
    """

    def __init__(self, key: FeedKey, on_price: OnPrice,
                 items: list[MarketData] | None = None) -> None:
        self.key, self._on_price, self._items = key, on_price, items
        self._subs: dict[str, asyncio.Queue[object]] = {}
        self.delivered = 0
        self.dropped = 0
        self.done = asyncio.Event()

    def subscribe(self, bot: str) -> AsyncIterator[MarketData]:
        """A fresh queue for ``bot`` (replacing an older one); iterate it as the bot's feed."""
        q: asyncio.Queue[object] = asyncio.Queue(QUEUE_SIZE)
        self._subs[bot] = q
        if self.done.is_set():
            q.put_nowait(_END)
        return _drain(q)

    def unsubscribe(self, bot: str) -> None:
        self._subs.pop(bot, None)

    async def run(self) -> None:
        """Replay until the series ends (or forever with ``loop``); cancel to stop."""
        if self._items is None:
            self._items = list(await asyncio.to_thread(load_named, self.key.dataset))
        self._items = await asyncio.to_thread(_restamp, self._items, self.key.symbol)
        try:
            while True:
                await self._one_pass(self._items)
                if not self.key.loop:
                    return
        finally:
            self.done.set()
            for q in self._subs.values():
                self._put(q, _END)

    async def _one_pass(self, items: list[MarketData]) -> None:
        on_price, subs = self._on_price, self._subs
        async for item in HistoricalFeed([items], speed=self.key.speed):
            price = item.close if type(item) is Bar else item.price  # type: ignore[union-attr]
            await on_price(item.symbol, price)
            for q in list(subs.values()):
                self._put(q, item)
            self.delivered += 1

    def _put(self, q: asyncio.Queue[object], item: object) -> None:
        if q.full():
            q.get_nowait()
            self.dropped += 1
            if self.dropped == 1:
                log.warning("feed %s: a bot fell %d items behind; dropping its oldest",
                            self.key.dataset, QUEUE_SIZE)
        q.put_nowait(item)


async def _drain(q: asyncio.Queue[object]) -> AsyncIterator[MarketData]:
    while True:
        item = await q.get()
        if item is _END:
            return
        yield item  # type: ignore[misc]


class LiveFanout(ReplayFeed):
    """Live market data of one venue account (:mod:`qtd.feeds.live`), fanned out to its bots
    like a replay: the live feed runs ``on_price`` (risk marks) before it queues an item,
    then every subscribed bot gets it (a bot that falls :data:`QUEUE_SIZE` items behind
    loses its oldest, counted in :attr:`dropped`; the venue reader is never blocked by one
    slow bot).

    Args:
        key: identity (``FeedKey("live:<account>", "*", 0.0, False)``).
        feed: the live feed (not started: :meth:`run` starts and closes it).
    """

    def __init__(self, key: FeedKey, feed: LiveFeed) -> None:
        super().__init__(key, _no_price, [])
        self.live = feed

    async def run(self) -> None:
        """Read the venue until cancelled (reconnects and back-fills are the feed's)."""
        reader = asyncio.create_task(self.live.run(), name=f"live:{self.key.dataset}")
        try:
            async for item in self.live:
                for q in list(self._subs.values()):
                    self._put(q, item)
                self.delivered += 1
        finally:
            await self.live.close()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            self.done.set()
            for q in self._subs.values():
                self._put(q, _END)


async def _no_price(symbol: str, price: Decimal) -> None:
    return None
