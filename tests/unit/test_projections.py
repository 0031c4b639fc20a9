"""Positions (average cost), PnL by trading day, and the time-zone day boundary."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from qtd.events import Side
from qtd.projections import Position, Projections, TradingDay
from tests.factories import fill, intent


def _ns(text: str, tz: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()) * 10**9


def _pos(*fills: tuple[Side, str, str]) -> Position:
    p = Position("b", "a", "X", "USD")
    for i, (side, qty, price) in enumerate(fills):
        p.apply(fill("c", f"t{i}", side=side, qty=qty, price=price))
    return p


def test_adding_averages_the_cost() -> None:
    p = _pos((Side.BUY, "10", "100"), (Side.BUY, "30", "104"))
    assert p.qty == 40 and p.avg_price == Decimal("103") and p.realized == 0


def test_reducing_realizes_against_average_cost() -> None:
    p = _pos((Side.BUY, "10", "100"), (Side.BUY, "10", "110"), (Side.SELL, "5", "120"))
    assert p.qty == 15 and p.avg_price == Decimal("105")
    assert p.realized == Decimal("75")  # 5 × (120 − 105)


def test_short_then_cover_and_flip() -> None:
    p = _pos((Side.SELL, "10", "50"), (Side.BUY, "4", "45"))
    assert p.qty == -6 and p.realized == Decimal("20") and p.avg_price == Decimal("50")
    p.apply(fill("c", "t9", side=Side.BUY, qty="10", price="40"))  # cover 6, open long 4
    assert p.qty == 4 and p.realized == Decimal("80") and p.avg_price == Decimal("40")
    assert p.unrealized(Decimal("41")) == Decimal("4")


def _btc(sell_qty: str) -> Position:
    """0.5 BTC bought at 30,000 (15 USDT fee), then ``sell_qty`` sold at 31,000 (fee in BNB)."""
    p = Position("b", "a", "BTCUSDT", "USDT")
    p.apply(fill("c", "t1", qty="0.5", price="30000", commission="15",
                 commission_currency="USDT"))
    p.apply(fill("c", "t2", side=Side.SELL, qty=sell_qty, price="31000", commission="0.01",
                 commission_currency="BNB"))
    return p


def test_flat_position_has_zero_cost_and_fees_by_currency() -> None:
    p = _btc("0.5")
    assert p.qty == 0 and p.cost == 0 and p.realized == Decimal("500")
    assert p.fees == Decimal("15") and p.net_realized == Decimal("485")
    assert p.other_fees == {"BNB": Decimal("0.01")}


def test_copy_is_equal_and_independent() -> None:
    p = _btc("0.2")
    c = p.copy()
    assert [getattr(c, f) for f in Position.__slots__] == [
        getattr(p, f) for f in Position.__slots__]
    c.apply(fill("c", "t3", qty="1", price="32000", commission="0.02",
                 commission_currency="BNB"))
    assert (p.qty, p.fills, p.other_fees) == (Decimal("0.3"), 2, {"BNB": Decimal("0.01")})
    assert (c.qty, c.fills, c.other_fees) == (Decimal("1.3"), 3, {"BNB": Decimal("0.03")})


def test_trading_day_rollover_in_new_york_across_dst() -> None:
    day = TradingDay("America/New_York", "17:00")
    assert day.label(_ns("2026-03-06T16:59:59", "America/New_York")) == "2026-03-05"
    assert day.label(_ns("2026-03-06T17:00:00", "America/New_York")) == "2026-03-06"
    # DST starts 2026-03-08 02:00 local: the day still begins at 17:00 local time
    assert day.label(_ns("2026-03-08T16:59:00", "America/New_York")) == "2026-03-07"
    assert day.label(_ns("2026-03-08T17:00:00", "America/New_York")) == "2026-03-08"
    assert TradingDay().label(_ns("2026-03-08T23:59:59", "UTC")) == "2026-03-08"


def test_trading_day_rejects_bad_config() -> None:
    with pytest.raises(ValueError):
        TradingDay("UTC", "25:00")
    with pytest.raises(Exception, match="Nowhere"):
        TradingDay("Nowhere/City")


def test_daily_pnl_by_bot_and_day() -> None:
    proj = Projections(TradingDay("UTC"))
    d1, d2 = _ns("2026-01-05T15:00:00", "UTC"), _ns("2026-01-06T15:00:00", "UTC")
    proj.apply(intent("c1", qty="10"))
    proj.apply(fill("c1", "t1", qty="10", price="100", ts=d1, commission="1"))
    proj.apply(intent("c2", side=Side.SELL, qty="10"))
    proj.apply(fill("c2", "t2", side=Side.SELL, qty="10", price="103", ts=d2, commission="1"))
    assert proj.daily[("bot1", "2026-01-05")].as_tuple() == (0, 1, 1, 1000)
    assert proj.daily[("bot1", "2026-01-06")].as_tuple() == (30, 1, 1, 1030)
