"""Replay historical market data in time order, and build time bars from trades.

:class:`HistoricalFeed` merges any number of per-symbol streams (each already in time order)
into one stream ordered by the time each item becomes known: a trade at its ``ts_ns``, a bar
at its **close** (``ts_ns + interval_ns``), so a daily bar never arrives before the hourly
bars inside it. Ties go to the lower symbol, then to the stream given first.

:class:`TickBarBuilder` turns trades into OHLCV bars of a fixed interval.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator

import anyio
import anyio.lowlevel

from qtd.clock import Clock, LiveClock, SimClock
from qtd.feeds.bars import NS_PER_S, Bar, MarketData, Trade, available_ns

Sleep = Callable[[float], Awaitable[None]]
_CHECKPOINT_EVERY = 1024


class HistoricalFeed:
    """A time-ordered replay of many symbols' bars and trades.

    Args:
        streams: iterables of :class:`Bar` / :class:`Trade`, each in ascending order of
            availability time (bar close, trade time). Lists can be replayed many times;
            iterators once.
        clock: a simulated clock moved to each item's availability time (UTC ns) before the
            item is yielded, so code reading the clock sees the replay's "now".
        speed: for ``async for`` only: replay pace as a multiple of real time (``60.0``
            replays an hour in a minute); ``None`` or ``0`` replays as fast as possible
            (yielding to the event loop every 1,024 items). Pacing targets the wall-clock
            time each item is due, so slow consumers do not accumulate drift.
        wall_clock: the real clock the pace is measured against (tests pass a fake).
        sleep: async sleep in seconds used for pacing (tests pass a fake that records).

    Raises:
        ValueError: ``speed`` < 0; or, during iteration, a stream goes back in time (the
            message names the symbol).
    """

    def __init__(
        self,
        streams: Iterable[Iterable[MarketData]],
        *,
        clock: SimClock | None = None,
        speed: float | None = None,
        wall_clock: Clock | None = None,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        if speed is not None and speed < 0:
            raise ValueError(f"speed must be >= 0, got {speed}")
        self._streams = list(streams)
        self._clock = clock
        self._speed = speed or None
        self._wall = wall_clock or LiveClock()
        self._sleep = sleep

    def __iter__(self) -> Iterator[MarketData]:
        for item in self._merged():
            if self._clock is not None:
                self._clock.set(available_ns(item))
            yield item

    async def __aiter__(self) -> AsyncIterator[MarketData]:
        start_wall: int | None = None
        start_ts = count = 0
        for item in self._merged():
            ts = available_ns(item)
            if self._speed is None:
                count += 1
                if count % _CHECKPOINT_EVERY == 0:
                    await anyio.lowlevel.checkpoint()  # let other tasks run
            else:
                if start_wall is None:
                    start_wall, start_ts = self._wall.now_ns(), ts
                due = start_wall + (ts - start_ts) / self._speed
                delay_s = (due - self._wall.now_ns()) / NS_PER_S
                if delay_s > 0:
                    await self._sleep(delay_s)
                else:
                    await anyio.lowlevel.checkpoint()
            if self._clock is not None:
                self._clock.set(ts)  # only once the item is due, not while waiting for it
            yield item

    def _merged(self) -> Iterator[MarketData]:
        keyed = (_keyed(stream) for stream in self._streams)
        for _ts, _symbol, item in heapq.merge(*keyed, key=_merge_key):
            yield item


def _merge_key(entry: tuple[int, str, MarketData]) -> tuple[int, str]:
    return entry[0], entry[1]


def _keyed(stream: Iterable[MarketData]) -> Iterator[tuple[int, str, MarketData]]:
    prev = None
    for item in stream:
        ts = available_ns(item)
        if prev is not None and ts < prev:
            raise ValueError(
                f"{item.symbol}: stream goes back in time ({ts} < {prev} ns); sort it first"
            )
        prev = ts
        yield ts, item.symbol, item


class TickBarBuilder:
    """Builds time bars from trades, one open bar per symbol.

    Bars open on multiples of ``interval_ns`` since the Unix epoch, i.e. on UTC boundaries
    (1-minute bars at :00 seconds, daily bars at 00:00 UTC; weekly bars would start on
    Thursdays). A bar is emitted when the first trade of a later interval arrives for the same
    symbol, or by :meth:`flush`. Intervals without trades produce no bar. A trade older than
    the symbol's open bar is dropped and counted in :attr:`late_trades`.

    Args:
        interval_ns: bar length in ns (> 0), e.g. ``60 * 10**9`` for 1-minute bars.

    Raises:
        ValueError: ``interval_ns`` <= 0.
    """

    def __init__(self, interval_ns: int) -> None:
        if interval_ns <= 0:
            raise ValueError(f"interval_ns must be > 0, got {interval_ns}")
        self.interval_ns = interval_ns
        self.late_trades = 0
        self._open: dict[str, _OpenBar] = {}

    def update(self, trade: Trade) -> Bar | None:
        """Add one trade; returns the symbol's previous bar if this trade closed it."""
        start = trade.ts_ns - trade.ts_ns % self.interval_ns
        bar = self._open.get(trade.symbol)
        if bar is not None and start == bar.start:
            price = trade.price
            if price > bar.high:
                bar.high = price
            elif price < bar.low:
                bar.low = price
            bar.close = price
            bar.volume += trade.size
            return None
        if bar is not None and start < bar.start:
            self.late_trades += 1
            return None
        self._open[trade.symbol] = _OpenBar(start, trade)
        return None if bar is None else bar.to_bar(trade.symbol, self.interval_ns)

    def build(self, trades: Iterable[Trade]) -> Iterator[Bar]:
        """Every bar from ``trades`` in order, including the open bars at the end."""
        for trade in trades:
            bar = self.update(trade)
            if bar is not None:
                yield bar
        yield from self.flush()

    def flush(self) -> list[Bar]:
        """Close and return every open bar (ordered by open time, then symbol)."""
        bars = [bar.to_bar(symbol, self.interval_ns) for symbol, bar in self._open.items()]
        self._open.clear()
        return sorted(bars, key=lambda bar: (bar.ts_ns, bar.symbol))


class _OpenBar:
    __slots__ = ("close", "high", "low", "open", "start", "volume")

    def __init__(self, start: int, trade: Trade) -> None:
        self.start = start
        self.open = self.high = self.low = self.close = trade.price
        self.volume = trade.size

    def to_bar(self, symbol: str, interval_ns: int) -> Bar:
        return Bar(
            symbol, self.start, interval_ns, self.open, self.high, self.low, self.close, self.volume
        )
