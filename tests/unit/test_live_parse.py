"""Pure normalisation of venue market-data messages (no sockets)."""

from __future__ import annotations

import json
from decimal import Decimal

import msgpack
import pytest

from qtd.feeds import Bar, Trade
from qtd.feeds.live import LiveSettings, Parsed
from qtd.venues.alpaca.feed import AlpacaSession, bar_of, parse_messages
from qtd.venues.binance.feed import BinanceSession, binance_interval, rest_kline_bar

M = 60_000_000_000
T0 = 1_704_067_200_000_000_000  # 2024-01-01T00:00:00Z


def test_alpaca_messages() -> None:
    p = Parsed()
    parse_messages([
        {"T": "success", "msg": "authenticated"},
        {"T": "subscription", "bars": ["AAPL"]},
        {"T": "b", "S": "AAPL", "o": 1.5, "h": 2, "l": 1, "c": 1.75, "v": 100,
         "t": "2024-01-01T00:00:00Z"},
        {"T": "t", "S": "AAPL", "p": 1.8, "s": 5, "t": "2024-01-01T00:00:01.5Z", "i": 1},
        {"T": "q", "S": "AAPL"},                                  # quotes: ignored
        {"T": "error", "code": 406, "msg": "connection limit exceeded"},
        {"T": "b", "S": "MSFT", "o": 1, "h": 1, "l": 1, "c": 1, "v": 1, "t": "x"},
        {"T": "b", "S": "AAPL", "o": 1, "h": 0.5, "l": 1, "c": 1, "v": 1,
         "t": "2024-01-01T00:01:00Z"},
        {"T": "zz"},
    ], {"AAPL"}, p)
    assert p.items == [
        Bar("AAPL", T0, M, Decimal("1.5"), Decimal(2), Decimal(1), Decimal("1.75"),
            Decimal(100)),
        Trade("AAPL", T0 + 1_500_000_000, Decimal("1.8"), Decimal(5))]
    assert p.data == 2 and p.errors == ["406: connection limit exceeded"]
    assert len(p.problems) == 3
    assert "MSFT" in p.problems[0] and "high/low" in p.problems[1] and "zz" in p.problems[2]


def test_alpaca_msgpack_timestamp_and_bad_values() -> None:
    ts = msgpack.Timestamp.from_unix_nano(T0)
    assert bar_of({"o": 1, "h": 1, "l": 1, "c": 1, "v": 0, "t": ts}, "X").ts_ns == T0
    for bad, field in (({"o": "nan"}, "bar.o"), ({"o": True}, "bar.o"), ({"v": -1}, "bar.v"),
                       ({"t": 5}, "bar.t")):
        msg = {"o": 1, "h": 1, "l": 1, "c": 1, "v": 0, "t": ts, **bad}
        with pytest.raises(ValueError, match=field):
            bar_of(msg, "X")
    s = AlpacaSession(["AAPL"], M, LiveSettings(venue="alpaca", api_key="k", secret_key="s"))
    assert s.parse(b"\xc1").problems and s.parse("text").problems


def test_binance_frames() -> None:
    s = BinanceSession(["BTCUSDT"], M, LiveSettings(venue="binance", trades=True))
    assert s.url == ("wss://stream.binance.com:9443/stream?streams="
                     "btcusdt@kline_1m/btcusdt@trade")
    k = {"t": T0 // 10**6, "T": T0 // 10**6 + 59_999, "s": "BTCUSDT", "i": "1m", "o": "10",
         "h": "12", "l": "9", "c": "11", "v": "3.5", "x": False}
    open_ = s.parse(json.dumps({"stream": "btcusdt@kline_1m",
                                "data": {"e": "kline", "s": "BTCUSDT", "k": k}}))
    assert open_.items == [] and open_.data == 1 and not open_.problems
    closed = s.parse(json.dumps({"stream": "btcusdt@kline_1m", "data": {
        "e": "kline", "s": "BTCUSDT", "k": {**k, "x": True}}}))
    assert closed.items == [Bar("BTCUSDT", T0, M, Decimal(10), Decimal(12), Decimal(9),
                                Decimal(11), Decimal("3.5"))]
    trade = s.parse(json.dumps({"stream": "btcusdt@trade", "data": {
        "e": "trade", "s": "BTCUSDT", "p": "11.5", "q": "0.1", "T": T0 // 10**6, "t": 7}}))
    assert trade.items == [Trade("BTCUSDT", T0, Decimal("11.5"), Decimal("0.1"))]
    assert s.parse('{"result": null, "id": 1}').problems == []
    for bad in ("[1,2", b'{"stream": "\xff"}', '{"data": {"e": "kline", "s": "ETHUSDT"}}',
                '{"data": {"e": "depth", "s": "BTCUSDT"}}',
                '{"data": {"e": "trade", "s": "BTCUSDT", "p": "x", "q": "1", "T": 1}}'):
        assert len(s.parse(bad).problems) == 1, bad


def test_binance_rest_rows_and_intervals() -> None:
    row = [T0 // 10**6, "1", "2", "0.5", "1.5", "10", T0 // 10**6 + 59_999, "0", 3, "0", "0",
           "0"]
    assert rest_kline_bar(row, "BTCUSDT", M).close == Decimal("1.5")
    with pytest.raises(ValueError, match="kline row"):
        rest_kline_bar([1, 2], "BTCUSDT", M)
    assert binance_interval(3600 * 10**9) == "1h"
    with pytest.raises(ValueError, match="7 s"):
        binance_interval(7 * 10**9)


def test_silence_defaults_per_venue() -> None:
    from qtd.venues.streams import silence_for
    assert silence_for(LiveSettings(venue="binance")) == 5.0
    assert silence_for(LiveSettings(venue="alpaca")) == 65.0  # one bar a minute, no more
    assert silence_for(LiveSettings(venue="alpaca", silence_s=2.5)) == 2.5
