"""qtd data verify/import/list: gaps against calendars, OHLC rules, times as text."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from qtd.catalog import Catalog, Provenance, SetKey
from qtd.catalog.verify import verify_bars
from qtd.cli import main
from qtd.feeds.bars import Bar, datetime_to_ns

MIN = 60 * 10**9
HOUR = 60 * MIN
DAY = 24 * HOUR


def _ns(text: str) -> int:
    return datetime_to_ns(datetime.fromisoformat(text))


def _bar(symbol: str, ts: int, length: int, high: str = "11") -> Bar:
    d = Decimal
    return Bar(symbol, ts, length, d("10"), d(high), d("9"), d("10.5"), d("1"))


def test_a_24x7_gap_is_one_problem_with_its_first_and_last_missing_bar() -> None:
    start = _ns("2024-03-30T22:00:00")
    bars = [_bar("ETHUSDT", start + i * HOUR, HOUR) for i in range(10) if i not in (3, 4, 5)]
    report = verify_bars("binance:ETHUSDT:1h", bars, "1h", "24x7")
    assert report.expected == 10 and report.rows == 7
    [gap] = report.problems
    assert (gap.kind, gap.time, gap.until, gap.bars) == (
        "gap",
        "2024-03-31T01:00:00Z",
        "2024-03-31T03:00:00Z",
        3,
    )


def test_a_long_24x7_set_expects_every_bar_up_to_the_last() -> None:
    start = _ns("2024-01-01T00:00:00")  # 4,368 hours: a float range length drops the last
    bars = [_bar("ETHUSDT", start + i * HOUR, HOUR) for i in range(4368)]
    report = verify_bars("binance:ETHUSDT:1h", bars, "1h", "24x7")
    assert (report.expected, report.off_calendar, report.problems) == (4368, 0, [])


def test_stock_minutes_follow_the_exchange_calendar_with_its_early_close() -> None:
    # 2024-07-03: NYSE closes at 13:00 New York (17:00 UTC); 07-04 holiday; 07-05 full day.
    first, last = _ns("2024-07-03T13:30:00"), _ns("2024-07-05T19:59:00")
    from qtd.calendars import ExchangeSession

    minutes = ExchangeSession("XNYS").minutes_ns(first, last)
    assert len(minutes) == 210 + 390
    missing = _ns("2024-07-05T15:00:00")
    bars = [_bar("MSFT", ts, MIN) for ts in minutes if ts != missing]
    bars.append(_bar("MSFT", _ns("2024-07-05T20:30:00"), MIN))  # after-hours bar
    report = verify_bars("alpaca:MSFT:1m", bars, "1m", "XNYS")
    assert report.expected == 600 and report.off_calendar == 1
    assert [(p.kind, p.time, p.bars) for p in report.problems] == [
        ("gap", "2024-07-05T15:00:00Z", 1)
    ]


def test_daily_stock_bars_are_checked_against_sessions() -> None:
    # Alpaca labels daily bars at midnight New York (04:00 UTC in summer).
    days = ["2024-07-01", "2024-07-02", "2024-07-05", "2024-07-08"]  # 07-03 missing
    bars = [_bar("MSFT", _ns(f"{d}T04:00:00"), DAY) for d in days]
    report = verify_bars("alpaca:MSFT:1d", bars, "1d", "XNYS")
    assert [(p.kind, p.time, p.bars) for p in report.problems] == [
        ("gap", "2024-07-03T00:00:00Z", 1)
    ]


def test_duplicates_order_ohlc_and_grid_are_named_by_time() -> None:
    t = _ns("2024-01-01T00:00:00")
    bars = [
        _bar("X", t, HOUR),
        _bar("X", t + HOUR, HOUR, high="10.2"),  # high < close
        _bar("X", t + HOUR, HOUR),  # duplicate
        _bar("X", t + 2 * HOUR + MIN, HOUR),  # off the hourly grid
    ]
    report = verify_bars("binance:X:1h", bars, "1h", "24x7")
    kinds = {(p.kind, p.time, p.field) for p in report.problems}
    assert ("ohlc", "2024-01-01T01:00:00Z", "high") in kinds
    assert ("duplicate", "2024-01-01T01:00:00Z", "ts") in kinds
    assert ("grid", "2024-01-01T02:01:00Z", "ts") in kinds
    dup = next(p for p in report.problems if p.kind == "duplicate")
    assert dup.value == "2024-01-01T01:00:00Z"  # the time as text, never nanoseconds


def _prov(bars: list[Bar]) -> Provenance:
    return Provenance(
        venue="binance",
        endpoint="test",
        fetched_at_ns=0,
        rows=len(bars),
        first_ns=bars[0].ts_ns,
        last_ns=bars[-1].ts_ns,
        source="rest",
    )


def test_verify_cli_exit_status_text_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = Catalog(tmp_path)
    start = _ns("2024-01-31T20:00:00")
    bars = [_bar("ETHUSDT", start + i * HOUR, HOUR) for i in range(8) if i != 5]
    catalog.write(SetKey.parse("binance:ETHUSDT:1h"), bars, _prov(bars))
    root = ["--catalog", str(tmp_path)]
    assert main(["data", "verify", "binance:ETHUSDT:1h", *root]) == 1
    text = capsys.readouterr().out
    assert "gap        2024-02-01T01:00:00Z: 1 bar(s) missing" in text
    assert main(["data", "verify", "binance:ETHUSDT:1h", "--json", *root]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["calendar"] == "24x7" and doc["problems"][0]["time"] == "2024-02-01T01:00:00Z"
    good = bars[:5]
    catalog.write(
        SetKey.parse("binance:BTCUSDT:1h"),
        [msgspec.structs.replace(b, symbol="BTCUSDT") for b in good],
        _prov(good),
    )
    assert main(["data", "verify", "binance:btcusdt:1h", *root]) == 0
    assert "ok: no gaps" in capsys.readouterr().out


def test_verify_of_a_venue_without_a_calendar_asks_for_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bars = [_bar("X", _ns("2024-01-01T00:00:00") + i * HOUR, HOUR) for i in range(3)]
    Catalog(tmp_path).write(SetKey.parse("local:X:1h"), bars, _prov(bars))
    assert main(["data", "verify", "local:X:1h", "--catalog", str(tmp_path)]) == 78
    err = capsys.readouterr().err
    assert "unknown venue" in err and "binance" in err and "--calendar" in err
    args = ["data", "verify", "local:X:1h", "--calendar", "24x7", "--catalog", str(tmp_path)]
    assert main(args) == 0


def test_import_validates_like_the_loaders_and_list_shows_both_kinds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "msft.csv"
    good.write_text(
        "timestamp,open,high,low,close,volume\n"
        "2024-07-01T13:30:00Z,450.10,451,450,450.5,1200\n"
        "2024-07-01T13:31:00Z,450.5,450.9,450.2,450.30,900\n"
    )
    root = ["--catalog", str(tmp_path / "cat")]
    args = ["data", "import", str(good), "--symbol", "msft", "--interval", "1m"]
    assert main([*args, "--venue", "alpaca", *root]) == 0
    assert "2 new" in capsys.readouterr().out
    assert main([*args, "--venue", "alpaca", *root]) == 0
    assert "0 new, 2 already" in capsys.readouterr().out
    back = Catalog(tmp_path / "cat").read(SetKey.parse("alpaca:MSFT:1m"))
    assert [str(b.open) for b in back] == ["450.10", "450.5"]
    bad = tmp_path / "bad.csv"
    bad.write_text("time,open,high,low,close\n2024-07-01 13:31,1,1,1,1\n2024-07-01 13:30,1,1,1,1\n")
    assert main(["data", "import", str(bad), "--symbol", "X", "--interval", "1m", *root]) == 78
    assert "line 3: time='2024-07-01 13:30' breaks 'timestamps ascending'" in (
        capsys.readouterr().err
    )
    assert main(["data", "list", *root]) == 0
    text = capsys.readouterr().out
    assert "goog_1d" in text and "alpaca:MSFT:1m" in text and "import:msft.csv" in text
    assert main(["data", "list", "--json", *root]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [s["key"]["symbol"] for s in doc["catalog"]] == ["MSFT"]
    assert any(d["name"] == "goog_1d" for d in doc["bundled"])
