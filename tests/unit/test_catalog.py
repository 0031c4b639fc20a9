"""The Parquet catalog: exact round trips, monthly files, duplicates, set names."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from qtd.catalog import Catalog, Provenance, SetKey
from qtd.errors import ConfigError
from qtd.feeds.bars import Bar, datetime_to_ns

HOUR = 3600 * 10**9
KEY = SetKey("binance", "ETHUSDT", "1h")


def _ns(text: str) -> int:
    from datetime import datetime

    return datetime_to_ns(datetime.fromisoformat(text))


def _bars(start: str, count: int, *, close: str = "3012.45000000") -> list[Bar]:
    first = _ns(start)
    return [
        Bar(
            "ETHUSDT",
            first + i * HOUR,
            HOUR,
            Decimal("3000.10"),
            Decimal("3020.5"),
            Decimal("2999.99000000"),
            Decimal(close),
            Decimal(f"{i}.000100"),
        )
        for i in range(count)
    ]


def _prov(bars: list[Bar], source: str = "rest") -> Provenance:
    return Provenance(
        venue="binance",
        endpoint="GET /api/v3/klines",
        fetched_at_ns=1,
        rows=len(bars),
        first_ns=bars[0].ts_ns,
        last_ns=bars[-1].ts_ns,
        source=source,
    )


def test_round_trip_keeps_decimals_exactly_as_written(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path)
    bars = _bars("2024-01-31T20:00:00", 10)  # crosses into February
    assert catalog.write(KEY, bars, _prov(bars)) == 10
    back = catalog.read(KEY)
    assert back == bars
    assert [str(b.close) for b in back] == ["3012.45000000"] * 10
    assert str(back[3].volume) == "3.000100"
    assert sorted(p.name for p in catalog.set_dir(KEY).glob("*.parquet")) == [
        "2024-01.parquet",
        "2024-02.parquet",
    ]
    assert catalog.span(KEY) == (bars[0].ts_ns, bars[-1].ts_ns)
    assert catalog.read(KEY, bars[2].ts_ns, bars[5].ts_ns) == bars[2:5]


def test_appending_a_month_leaves_the_other_months_files_alone(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path)
    jan = _bars("2024-01-01T00:00:00", 24)
    feb = _bars("2024-02-01T00:00:00", 24)
    catalog.write(KEY, jan + feb, _prov(jan + feb))
    directory = catalog.set_dir(KEY)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.glob("*.parquet")}
    mar = _bars("2024-03-01T00:00:00", 24)
    assert catalog.write(KEY, mar, _prov(mar)) == 24
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.glob("*.parquet")}
    assert after["2024-01.parquet"] == before["2024-01.parquet"]
    assert after["2024-02.parquet"] == before["2024-02.parquet"]
    assert "2024-03.parquet" in after
    assert catalog.read(KEY) == jan + feb + mar
    assert [p.rows for p in catalog.provenance(KEY)] == [48, 24]


def test_duplicates_are_dropped_and_the_stored_bar_wins(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path)
    first = _bars("2024-01-01T00:00:00", 5)
    catalog.write(KEY, first, _prov(first))
    changed = _bars("2024-01-01T03:00:00", 4, close="3015")  # 03:00 and 04:00 overlap
    assert catalog.write(KEY, list(reversed(changed)) + changed[:1], _prov(changed)) == 2
    back = catalog.read(KEY)
    assert [b.ts_ns for b in back] == [first[0].ts_ns + i * HOUR for i in range(7)]
    assert [str(b.close) for b in back] == ["3012.45000000"] * 5 + ["3015"] * 2
    assert catalog.write(KEY, first, _prov(first)) == 0
    assert catalog.rows(KEY) == 7


def test_sets_lists_each_set_with_its_range_and_provenance(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path)
    bars = _bars("2024-01-31T22:00:00", 4)
    catalog.write(KEY, bars, _prov(bars))
    crypto = SetKey.parse("alpaca:btc/usd:1h")
    btc = [
        Bar("BTC/USD", b.ts_ns, b.interval_ns, b.open, b.high, b.low, b.close, b.volume)
        for b in bars
    ]
    catalog.write(crypto, btc, _prov(btc, "import:btc.csv"))
    infos = catalog.sets()
    assert [i.key.name for i in infos] == ["alpaca:BTC/USD:1h", "binance:ETHUSDT:1h"]
    assert infos[0].rows == 4 and infos[0].months == ["2024-01", "2024-02"]
    assert (infos[0].first_ns, infos[0].last_ns) == (bars[0].ts_ns, bars[-1].ts_ns)
    assert infos[0].provenance[0].source == "import:btc.csv"
    assert catalog.has(crypto) and not catalog.has(SetKey("binance", "ETHUSDT", "1d"))
    assert catalog.read(SetKey("binance", "ETHUSDT", "1d")) == []
    assert catalog.span(SetKey("binance", "ETHUSDT", "1d")) is None


def test_default_root_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QTD_CATALOG", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Catalog().root == tmp_path / "xdg" / "qtd" / "catalog"
    monkeypatch.setenv("QTD_CATALOG", str(tmp_path / "cat"))
    assert Catalog().root == tmp_path / "cat"


@pytest.mark.parametrize(
    ("text", "field", "value"),
    [
        ("binance:ETHUSDT:2h", "interval", "2h"),
        ("binance:ETH USDT:1h", "symbol", "ETH USDT"),
        ("bin-ance:ETHUSDT:1h", "venue", "bin-ance"),
        ("binance:ETHUSDT", "set", "binance:ETHUSDT"),
    ],
)
def test_bad_set_names_name_the_field_value_and_rule(text: str, field: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SetKey.parse(text)
    assert (caught.value.field, caught.value.value) == (field, value)
    assert caught.value.rule and caught.value.rule in str(caught.value)


def test_a_bar_of_another_symbol_or_interval_is_refused(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path)
    bar = _bars("2024-01-01T00:00:00", 1)[0]
    with pytest.raises(ConfigError) as caught:
        catalog.write(SetKey("binance", "BTCUSDT", "1h"), [bar], _prov([bar]))
    assert caught.value.field == "symbol"
    with pytest.raises(ConfigError) as caught:
        catalog.write(SetKey("binance", "ETHUSDT", "1m"), [bar], _prov([bar]))
    assert caught.value.field == "interval"
    assert not catalog.has(SetKey("binance", "ETHUSDT", "1m"))


def test_parse_normalises_case() -> None:
    key = SetKey.parse(" Binance:ethusdt:1h ")
    assert key == KEY and key.name == "binance:ETHUSDT:1h"
