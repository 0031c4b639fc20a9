"""Historical market data: bar and trade records, file loaders, time-ordered replay.

Times are UTC integer nanoseconds; prices and sizes are :class:`decimal.Decimal`.
"""

from __future__ import annotations

from qtd.feeds.bars import (
    Bar,
    Interval,
    MarketData,
    Trade,
    available_ns,
    ns_to_iso,
    parse_interval,
    parse_ts,
)
from qtd.feeds.loaders import (
    load_alpaca_bars,
    load_bars,
    load_bars_csv,
    load_bars_parquet,
    load_binance_klines,
    load_trades_csv,
)
from qtd.feeds.replay import HistoricalFeed, TickBarBuilder
from qtd.feeds.validate import Issue

__all__ = [
    "Bar",
    "HistoricalFeed",
    "Interval",
    "Issue",
    "MarketData",
    "TickBarBuilder",
    "Trade",
    "available_ns",
    "load_alpaca_bars",
    "load_bars",
    "load_bars_csv",
    "load_bars_parquet",
    "load_binance_klines",
    "load_trades_csv",
    "ns_to_iso",
    "parse_interval",
    "parse_ts",
]
