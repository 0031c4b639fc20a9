"""The bundled data sets: each loads, validates, and matches its catalogue entry."""

from __future__ import annotations

import itertools
from decimal import Decimal
from functools import cache
from pathlib import Path

import pytest

from qtd.data import (
    DATASETS,
    dataset_info,
    dataset_path,
    format_dataset_table,
    load_dataset,
)
from qtd.errors import ConfigError
from qtd.feeds import Bar, Trade, parse_interval

DAY_NS = 86_400 * 10**9
DATA_DIR = Path(dataset_path("goog_1d")).parent


@cache
def _load(name: str) -> list[Bar] | list[Trade]:
    """Each data set is loaded once per test run (the ticks take ~0.7 s)."""
    return load_dataset(name)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_loads_with_documented_rows_and_range(name: str) -> None:
    info = DATASETS[name]
    items = _load(name)  # the loader validates every row

    assert len(items) == info.rows
    assert items[0].ts_ns == info.first_ts_ns
    assert items[-1].ts_ns == info.last_ts_ns
    assert {item.symbol for item in items} == {info.symbol}
    expected_type = Trade if info.kind == "ticks" else Bar
    assert all(type(item) is expected_type for item in items)


@pytest.mark.parametrize("name", [n for n, i in sorted(DATASETS.items()) if i.kind == "bars"])
def test_bar_datasets_have_their_interval(name: str) -> None:
    info = DATASETS[name]
    bars = _load(name)
    interval = parse_interval(info.interval)
    assert all(isinstance(bar, Bar) for bar in bars)
    assert all(bar.interval_ns == interval.length_at(bar.ts_ns) for bar in bars)
    stamps = [bar.ts_ns for bar in bars]
    assert stamps == sorted(set(stamps))


def test_daily_bars_open_at_midnight_utc() -> None:
    for name in ("goog_1d", "sp500_1d", "nasdaq_1d"):
        assert all(bar.ts_ns % DAY_NS == 0 for bar in _load(name))


def test_monthly_bars_cover_calendar_months() -> None:
    bars = _load("btcusd_1mo")
    assert isinstance(bars[0], Bar) and isinstance(bars[1], Bar)
    assert bars[0].interval_ns == 31 * DAY_NS  # January 2012
    assert bars[1].interval_ns == 29 * DAY_NS  # February 2012 (leap year)
    assert all(a.close_ts_ns == b.ts_ns for a, b in itertools.pairwise(bars))


def test_prices_are_the_source_text() -> None:
    goog = _load("goog_1d")[0]
    assert goog == Bar(
        "GOOG",
        1_092_873_600 * 10**9,  # 2004-08-19T00:00:00Z
        DAY_NS,
        Decimal("100"),
        Decimal("104.06"),
        Decimal("95.96"),
        Decimal("100.34"),
        Decimal("22351900"),
    )
    assert str(_load("sp500_1d")[0].open) == "1229.22998"


def test_ticks_are_utc_converted_from_chicago_and_never_go_back() -> None:
    ticks = _load("es_ticks")
    # Source 2013-09-01 17:00:00.083 America/Chicago (CDT) = 22:00:00.083 UTC.
    assert ticks[0] == Trade("ES", 1_378_072_800_083_000_000, Decimal("1640.25"), Decimal(8))
    stamps = [t.ts_ns for t in ticks]
    assert all(a <= b for a, b in itertools.pairwise(stamps))
    assert all(ts % 1_000_000 == 0 for ts in stamps)  # millisecond source


def test_catalogue_matches_the_files_shipped() -> None:
    shipped = {p.name for p in DATA_DIR.glob("*.csv.gz")}
    assert shipped == {info.file for info in DATASETS.values()}
    for name, info in DATASETS.items():
        path = dataset_path(name)
        assert path.is_file() and path.name == info.file
    sources = (DATA_DIR / "SOURCES.md").read_text(encoding="utf-8")
    for info in DATASETS.values():
        assert info.file in sources and info.licence in sources
        assert info.source.split(": ")[1] in sources


def test_unknown_dataset_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        dataset_info("nope")
    assert caught.value.field == "dataset" and caught.value.value == "nope"
    assert "goog_1d" in caught.value.rule


def test_format_dataset_table() -> None:
    table = format_dataset_table()
    lines = table.splitlines()
    assert lines[0].split()[:5] == ["name", "symbol", "kind", "interval", "rows"]
    assert len(lines) == 1 + len(DATASETS)
    assert "es_ticks    ES      ticks  tick      500000  2013-09-01T22:00:00.083Z" in table
    assert "goog_1d" in lines[1] and "2004-08-19T00:00:00Z" in lines[1]
