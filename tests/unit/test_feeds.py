"""Loaders, validation, replay and tick-bar building (qtd.feeds)."""

from __future__ import annotations

import gzip
import itertools
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from qtd.clock import SimClock
from qtd.data import dataset_path, load_dataset
from qtd.errors import ConfigError
from qtd.feeds import (
    Bar,
    HistoricalFeed,
    Interval,
    TickBarBuilder,
    Trade,
    available_ns,
    load_alpaca_bars,
    load_bars,
    load_bars_csv,
    load_bars_parquet,
    load_binance_klines,
    load_trades_csv,
    parse_interval,
    parse_ts,
)
from qtd.feeds.validate import (
    MAX_LISTED,
    RULE_DUPLICATE,
    RULE_HIGH,
    RULE_LOW,
    RULE_NUMBER,
    RULE_PRICE,
    RULE_SORTED,
    RULE_TIME,
    RULE_VOLUME,
)

S = 10**9
MIN = 60 * S
HOUR = 3600 * S
DAY = 86_400 * S
T0 = 1_700_000_000 * S  # 2023-11-14T22:13:20Z


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def issues_of(exc: ConfigError) -> list[tuple[int, str, str]]:
    return [(i.row, i.field, i.rule) for i in exc.fields["issues"]]


def d(x: str | int) -> Decimal:
    return Decimal(x)


# --- plain OHLCV CSV -----------------------------------------------------------------------


def test_ohlcv_csv_detects_columns_case_insensitively(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bars.csv",
        "Volume,Close,Low,High,Open,Timestamp\n"
        "10,1.5,0.9,2,1,2024-01-02T00:00:00Z\n"
        "0,1.6,1.4,1.7,1.5,2024-01-03T00:00:00Z\n",
    )
    bars = load_bars(path, "X")
    day0 = parse_ts("2024-01-02")
    assert bars == [
        Bar("X", day0, DAY, d(1), d(2), d("0.9"), d("1.5"), d(10)),
        Bar("X", day0 + DAY, DAY, d("1.5"), d("1.7"), d("1.4"), d("1.6"), d(0)),
    ]


def test_pandas_index_column_epoch_ms_and_gzip(tmp_path: Path) -> None:
    text = ",open,high,low,close\n1700000000000,1,1,1,1\n1700000060000,1,2,1,2\n"
    path = tmp_path / "bars.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    bars = load_bars_csv(path, "X")
    assert [b.ts_ns for b in bars] == [T0, T0 + MIN]
    assert bars[0].interval_ns == MIN  # inferred from the smallest gap
    assert bars[0].volume == 0  # no volume column


BAD_BARS = (
    "time,open,high,low,close,volume\n"
    "2024-01-01T00:00:00Z,10,11,9,10,100\n"  # line 2: good
    "2024-01-03T00:00:00Z,10,11,9,10,100\n"  # line 3: good
    "2024-01-02T00:00:00Z,10,11,9,10,100\n"  # line 4: unsorted
    "2024-01-03T00:00:00Z,10,11,9,10,100\n"  # line 5: duplicate of line 3
    "2024-01-04T00:00:00Z,10,9.5,9,9,100\n"  # line 6: high < open
    "2024-01-05T00:00:00Z,-1,11,-2,10,100\n"  # line 7: negative open and low
    "2024-01-06T00:00:00Z,10,NaN,9,10,100\n"  # line 8: NaN high
    "2024-01-07T00:00:00Z,10,11,10.5,10,-5\n"  # line 9: low > close, negative volume
    "2024-01-08T00:00:00Z,10,11,9,10,abc\n"  # line 10: not a number
    "yesterday,10,11,9,10,1\n"  # line 11: bad time
    "2024-01-09T00:00:00Z,10,inf,9,10,1\n"  # line 12: infinite high
)


def test_every_bad_bar_row_is_listed_with_line_and_rule(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.csv", BAD_BARS)
    with pytest.raises(ConfigError) as caught:
        load_bars(path, "X", interval="1d")
    err = caught.value
    assert issues_of(err) == [
        (4, "time", RULE_SORTED),
        (5, "time", RULE_DUPLICATE),
        (6, "high", RULE_HIGH),
        (7, "open", RULE_PRICE),
        (7, "low", RULE_PRICE),
        (8, "high", RULE_PRICE),
        (9, "low", RULE_LOW),
        (9, "volume", RULE_VOLUME),
        (10, "volume", RULE_NUMBER),
        (11, "time", RULE_TIME),
        (12, "high", RULE_PRICE),
    ]
    # The error names the file, and the first issue's field, value and rule.
    assert err.source == str(path) and err.exit_code == 78
    # A time is shown as the file wrote it, not as nanoseconds.
    assert (err.field, err.value, err.rule, err.fields["row"]) == (
        "time",
        "2024-01-02T00:00:00Z",
        RULE_SORTED,
        4,
    )
    assert str(path) in str(err) and "11 bad value(s)" in str(err)
    assert "line 5: time='2024-01-03T00:00:00Z' breaks 'no duplicate timestamps'" in str(err)
    assert "line 6: high='9.5' breaks 'high >= max(open, close)'" in str(err)


def test_an_out_of_order_epoch_time_is_shown_as_written(tmp_path: Path) -> None:
    path = write(
        tmp_path / "epoch.csv",
        "ts_s,open,high,low,close\n1704067200,1,1,1,1\n1704070800,1,1,1,1\n1704067200,1,1,1,1\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_bars(path, "X", interval="1h")
    assert "line 4: ts_s='1704067200' breaks 'no duplicate timestamps'" in str(caught.value)
    assert str(parse_ts("1704067200")) not in str(caught.value)


def test_error_message_lists_50_and_counts_the_rest(tmp_path: Path) -> None:
    rows = "".join(f"{i},1,1,1,1,-1\n" for i in range(1, 61))  # 60 negative volumes
    path = write(tmp_path / "many.csv", "ts_s,open,high,low,close,volume\n" + rows)
    with pytest.raises(ConfigError) as caught:
        load_bars_csv(path, "X", interval="1s")
    assert len(caught.value.fields["issues"]) == 60
    message = str(caught.value)
    assert message.count("breaks") == MAX_LISTED
    assert "... and 10 more" in message


def test_missing_column_and_missing_file(tmp_path: Path) -> None:
    path = write(tmp_path / "x.csv", "time,open,high,close\n2024-01-01,1,1,1\n")
    with pytest.raises(ConfigError) as caught:
        load_bars_csv(path, "X")
    assert caught.value.field == "low"
    with pytest.raises(ConfigError, match="cannot read"):
        load_bars_csv(tmp_path / "absent.csv", "X")
    with pytest.raises(ConfigError, match="empty file"):
        load_bars_csv(write(tmp_path / "empty.csv", ""), "X")
    one = write(tmp_path / "one.csv", "time,open,high,low,close\n2024-01-01,1,1,1,1\n")
    with pytest.raises(ConfigError, match="pass interval="):
        load_bars_csv(one, "X")
    with pytest.raises(ConfigError, match="bad interval") as caught:
        load_bars_csv(one, "X", interval="1 fortnight")
    assert caught.value.field == "interval"


# --- Binance and Alpaca --------------------------------------------------------------------


def kline(open_time: int, close_time: int, o: str = "1", c: str = "1.5") -> str:
    return f"{open_time},{o},2,0.5,{c},12.5,{close_time},18.75,7,6,9,0\n"


def test_binance_klines_ms_and_us(tmp_path: Path) -> None:
    ms = 1_700_000_000_000
    old = write(tmp_path / "old.csv", kline(ms, ms + 59_999) + kline(ms + 60_000, ms + 119_999))
    us = ms * 1000
    new = write(tmp_path / "new.csv", kline(us, us + 59_999_999))
    bars = load_bars(old, "BTCUSDT")  # auto-detected: 12 numeric columns, no header
    assert [(b.ts_ns, b.interval_ns) for b in bars] == [(T0, MIN), (T0 + MIN, MIN)]
    assert bars[0] == Bar("BTCUSDT", T0, MIN, d(1), d(2), d("0.5"), d("1.5"), d("12.5"))
    assert [(b.ts_ns, b.interval_ns) for b in load_binance_klines(new, "BTCUSDT")] == [(T0, MIN)]
    zipped = tmp_path / "BTCUSDT-1m-2023-11-14.csv.gz"
    zipped.write_bytes(gzip.compress(old.read_bytes()))
    assert load_bars(zipped, "BTCUSDT") == bars


def test_binance_klines_with_header_and_bad_rows(tmp_path: Path) -> None:
    ms = 1_700_000_000_000
    header = "open_time,open,high,low,close,volume,close_time,quote_volume,count,a,b,ignore\n"
    path = write(
        tmp_path / "k.csv",
        header + kline(ms, ms + 59_999) + kline(ms, ms + 59_999) + kline(ms + 60_000, ms, o="3"),
    )
    with pytest.raises(ConfigError) as caught:
        load_bars(path, "BTCUSDT")
    assert issues_of(caught.value) == [
        (3, "open_time", RULE_DUPLICATE),
        (4, "close_time", "close_time > open_time"),
        (4, "high", RULE_HIGH),
    ]


def test_alpaca_bars_csv(tmp_path: Path) -> None:
    path = write(
        tmp_path / "alpaca.csv",
        "symbol,timestamp,open,high,low,close,volume,trade_count,vwap\n"
        "AAPL,2024-01-02T14:30:00Z,187.15,187.5,187.0,187.2,1000,12,187.3\n"
        "MSFT,2024-01-02T14:30:00Z,370.0,371.0,369.0,370.5,500,9,370.2\n"
        "AAPL,2024-01-02T14:31:00+00:00,187.2,187.6,187.1,187.4,800,10,187.35\n",
    )
    bars = load_alpaca_bars(path, "AAPL", interval="1Min")
    start = parse_ts("2024-01-02T14:30:00Z")
    assert [(b.symbol, b.ts_ns, b.interval_ns, b.close) for b in bars] == [
        ("AAPL", start, MIN, d("187.2")),
        ("AAPL", start + MIN, MIN, d("187.4")),
    ]
    plain = write(tmp_path / "plain.csv", "time,open,high,low,close\n2024-01-02,1,1,1,1\n")
    with pytest.raises(ConfigError, match="not an Alpaca bars file"):
        load_alpaca_bars(plain, "AAPL")


def test_parquet_round_trip(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "timestamp": pd.to_datetime([T0, T0 + HOUR], unit="ns", utc=True),
            "open": [1.1, 1.2],
            "high": [1.3, 1.4],
            "low": [1.0, 1.1],
            "close": [1.2, 1.3],
            "volume": [5, 6],
        }
    )
    frame.to_parquet(tmp_path / "bars.parquet")
    bars = load_bars_parquet(tmp_path / "bars.parquet", "X")
    with pytest.raises(ConfigError, match="cannot read Parquet"):
        load_bars_parquet(tmp_path / "absent.parquet", "X")
    assert [(b.ts_ns, b.interval_ns, b.open) for b in bars] == [
        (T0, HOUR, d("1.1")),
        (T0 + HOUR, HOUR, d("1.2")),
    ]


# --- trades ---------------------------------------------------------------------------------


def test_trades_csv_and_every_bad_trade_row(tmp_path: Path) -> None:
    good = write(tmp_path / "t.csv", "ts_ms,price,size\n1700000000000,10.5,2\n1700000000000,10,1\n")
    assert load_trades_csv(good, "X") == [
        Trade("X", T0, d("10.5"), d(2)),
        Trade("X", T0, d(10), d(1)),  # same millisecond is fine for trades
    ]
    bad = write(
        tmp_path / "bad.csv",
        "Time,Price,Qty\n"
        "2024-01-01T00:00:01Z,10,1\n"
        "2024-01-01T00:00:00Z,10,1\n"  # line 3: goes back
        "2024-01-01T00:00:02Z,-10,1\n"  # line 4: negative price
        "2024-01-01T00:00:03Z,nan,1\n"  # line 5: NaN price
        "2024-01-01T00:00:04Z,10,-1\n"  # line 6: negative size
        "2024-01-01T00:00:05Z,10\n",  # line 7: short row
    )
    with pytest.raises(ConfigError) as caught:
        load_trades_csv(bad, "X")
    assert issues_of(caught.value) == [
        (3, "Time", RULE_SORTED),
        (4, "price", RULE_PRICE),
        (5, "price", RULE_PRICE),
        (6, "size", RULE_VOLUME),
        (7, "*", "same number of columns as the header"),
    ]


# --- intervals and timestamps ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1m", Interval(fixed_ns=MIN)),
        ("5min", Interval(fixed_ns=5 * MIN)),
        ("1Min", Interval(fixed_ns=MIN)),
        ("4h", Interval(fixed_ns=4 * HOUR)),
        ("1Day", Interval(fixed_ns=DAY)),
        ("2 hours", Interval(fixed_ns=2 * HOUR)),
        ("1w", Interval(fixed_ns=7 * DAY)),
        ("1M", Interval(months=1)),
        ("3mo", Interval(months=3)),
        ("1Month", Interval(months=1)),
        ("250ms", Interval(fixed_ns=250_000_000)),
    ],
)
def test_parse_interval(text: str, expected: Interval) -> None:
    assert parse_interval(text) == expected


@pytest.mark.parametrize("text", ["", "0m", "m", "1 fortnight", "-1h"])
def test_parse_interval_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad interval"):
        parse_interval(text)


def test_month_interval_length_follows_the_calendar() -> None:
    feb_2024 = parse_ts("2024-02-01")
    assert Interval(months=1).length_at(feb_2024) == 29 * DAY
    assert Interval(months=1).length_at(parse_ts("2023-12-01")) == 31 * DAY


@pytest.mark.parametrize(
    "text",
    [
        "1700000000",
        "1700000000000",
        "1700000000000000",
        "1700000000000000000",
        "1700000000.0",
        "2023-11-14T22:13:20Z",
        "2023-11-14 22:13:20",
        "2023-11-14T23:13:20+01:00",
    ],
)
def test_parse_ts_forms(text: str) -> None:
    assert parse_ts(text) == T0


# --- tick bar building ---------------------------------------------------------------------


def trade(ts: int, price: str, size: int = 1, symbol: str = "X") -> Trade:
    return Trade(symbol, ts, d(price), d(size))


def test_tick_bar_builder_basics() -> None:
    builder = TickBarBuilder(MIN)
    assert builder.update(trade(T0 + 5 * S, "10")) is None
    assert builder.update(trade(T0 + 6 * S, "12", 2)) is None
    assert builder.update(trade(T0 + 7 * S, "9")) is None
    # Three empty minutes, then a trade: one bar for the first minute, none for the gap.
    done = builder.update(trade(T0 + 4 * MIN + S, "11"))
    start = T0 - T0 % MIN  # aligned to the UTC minute
    assert done == Bar("X", start, MIN, d(10), d(12), d(9), d(9), d(4))
    assert builder.update(trade(T0, "99")) is None  # late: older than the open bar
    assert builder.late_trades == 1
    assert builder.flush() == [Bar("X", start + 4 * MIN, MIN, d(11), d(11), d(11), d(11), d(1))]
    assert builder.flush() == []


def test_tick_bar_builder_keeps_symbols_apart() -> None:
    trades = [
        trade(T0, "1", symbol="B"),
        trade(T0 + S, "5", symbol="A"),
        trade(T0 + MIN, "2", symbol="B"),
    ]
    bars = list(TickBarBuilder(MIN).build(trades))
    assert [(b.symbol, b.close) for b in bars] == [("B", d(1)), ("A", d(5)), ("B", d(2))]


@pytest.fixture(scope="module")
def first_day_ticks() -> list[Trade]:
    """E-mini trades before 2013-09-03 00:00 UTC (Sunday evening and Labor Day), ~109k."""
    end = parse_ts("2013-09-03T00:00:00Z")
    ticks = load_dataset("es_ticks")
    return [t for t in ticks if isinstance(t, Trade) and t.ts_ns < end]


@pytest.mark.parametrize("rule", ["1min", "5min", "1h"])
def test_tick_bars_match_pandas_resample_on_real_ticks(
    first_day_ticks: list[Trade], rule: str
) -> None:
    interval_ns = int(pd.Timedelta(rule).value)
    bars = list(TickBarBuilder(interval_ns).build(first_day_ticks))

    # Independent path: pandas reads the bundled file and resamples.
    frame = pd.read_csv(dataset_path("es_ticks"))
    frame.index = pd.to_datetime(frame["ts_ms"], unit="ms", utc=True)
    frame = frame[frame.index < pd.Timestamp("2013-09-03", tz="UTC")]
    resampled = frame["price"].resample(rule).ohlc()
    resampled["volume"] = frame["size"].resample(rule).sum()
    resampled = resampled.dropna()  # intervals without trades

    assert len(first_day_ticks) == len(frame)
    assert [b.ts_ns for b in bars] == [int(ts.value) for ts in resampled.index]
    ours = [
        (float(b.open), float(b.high), float(b.low), float(b.close), int(b.volume)) for b in bars
    ]
    theirs = [
        (r.open, r.high, r.low, r.close, int(r.volume)) for r in resampled.itertuples(index=False)
    ]
    assert ours == theirs
    assert all(b.interval_ns == interval_ns for b in bars)


# --- replay ---------------------------------------------------------------------------------


def test_feed_merges_real_datasets_in_availability_order() -> None:
    names = ("goog_1d", "sp500_1d", "nasdaq_1d", "eurusd_1h", "btcusd_1mo")
    streams = [load_dataset(name) for name in names]
    clock = SimClock()
    merged = list(HistoricalFeed(streams, clock=clock))

    assert len(merged) == sum(len(s) for s in streams)
    keys = [(available_ns(item), item.symbol) for item in merged]
    assert keys == sorted(keys)  # time order, ties by symbol
    assert clock.now_ns() == available_ns(merged[-1])
    # GOOG, IXIC and SPX share dates: on a shared date they come out in symbol order.
    day = [item.symbol for item in merged if item.ts_ns == parse_ts("2010-01-04")]
    assert day == ["GOOG", "IXIC", "SPX"]


def test_daily_bar_arrives_after_the_hourly_bars_inside_it() -> None:
    hourly = [Bar("A", T0 + i * HOUR, HOUR, d(1), d(1), d(1), d(1), d(0)) for i in range(24)]
    daily = [Bar("A", T0, DAY, d(1), d(1), d(1), d(1), d(0))]
    merged = list(HistoricalFeed([daily, hourly]))
    assert merged[-2:] == [daily[0], hourly[-1]]  # same close time: daily stream was first
    assert merged[:-2] == hourly[:-1]


def test_feed_rejects_a_stream_that_goes_back() -> None:
    stream = [trade(T0 + S, "1"), trade(T0, "1")]
    with pytest.raises(ValueError, match="goes back in time"):
        list(HistoricalFeed([stream]))


class FakeWall:
    """A wall clock and sleeper in one: sleeping moves the clock, and is recorded."""

    def __init__(self, sim: SimClock | None = None) -> None:
        self.now = 1_000 * S
        self.sleeps: list[float] = []
        self.sim = sim
        self.sim_during_sleep: list[int] = []

    def now_ns(self) -> int:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.sim is not None:
            self.sim_during_sleep.append(self.sim.now_ns())
        self.now += int(seconds * S)


async def test_async_replay_paces_by_speed_factor() -> None:
    sim = SimClock()
    wall = FakeWall(sim)
    trades = [trade(T0, "1"), trade(T0 + 60 * S, "2"), trade(T0 + 60 * S, "3")]
    trades.append(trade(T0 + 180 * S, "4"))
    feed = HistoricalFeed([trades], clock=sim, speed=60.0, wall_clock=wall, sleep=wall.sleep)
    seen = []
    async for item in feed:
        assert sim.now_ns() == item.ts_ns  # the simulated clock moves on delivery
        seen.append(item)
    assert seen == trades
    assert wall.sleeps == pytest.approx([1.0, 2.0])  # 60 s and 120 s of market time at 60x
    assert wall.sim_during_sleep == [T0, T0 + 60 * S]  # not yet the awaited item's time


async def test_async_replay_full_speed_does_not_sleep() -> None:
    wall = FakeWall()
    trades = [trade(T0 + i * S, "1") for i in range(3000)]
    feed = HistoricalFeed([trades], wall_clock=wall, sleep=wall.sleep)
    assert [t async for t in feed] == trades
    assert wall.sleeps == []


def test_replay_of_real_ticks_with_bars_is_ordered(first_day_ticks: list[Trade]) -> None:
    ticks = first_day_ticks[:20_000]
    bars = list(TickBarBuilder(MIN).build(ticks))
    merged = list(HistoricalFeed([ticks, bars]))
    stamps = [available_ns(item) for item in merged]
    assert stamps == sorted(stamps)
    # Each 1-minute bar comes after every trade it was built from, before any later trade.
    for item, after in itertools.pairwise(merged):
        if isinstance(item, Bar) and isinstance(after, Trade):
            assert after.ts_ns >= item.close_ts_ns
