"""The instruments each venue offers, as admission and routing know them.

A small, explicit list: a bot may only trade a symbol listed for its venue. ``paper`` lists
the symbols of the bundled real data sets (``qtd data list``) plus the ETFs SPY and QQQ
(replayed from the S&P 500 / NASDAQ index data); ``alpaca`` and ``binance`` list the
instruments the shipped configs use. Extend :data:`INSTRUMENTS` (or pass ``extra`` to
:func:`lookup`) when onboarding one.
Asset classes: ``equity``, ``index``, ``fx``, ``crypto``, ``future``.
"""

from __future__ import annotations

from typing import Literal

import msgspec

AssetClass = Literal["equity", "index", "fx", "crypto", "future"]


class Instrument(msgspec.Struct, frozen=True, kw_only=True):
    """One tradable instrument on one venue.

    Attributes:
        venue: venue name.
        symbol: the venue's symbol.
        asset_class: one of :data:`AssetClass`.
        currency: quote currency of its prices.
        calendar: trading-session name used by routes (``"XNYS"``, ``"24x7"``, ``"FX"``,
            ``"CME"``; see :mod:`qtd.routes`).
    """

    venue: str
    symbol: str
    asset_class: AssetClass
    currency: str = "USD"
    calendar: str = "XNYS"


def _table(venue: str, *rows: tuple[str, AssetClass, str, str]) -> dict[str, Instrument]:
    return {s: Instrument(venue=venue, symbol=s, asset_class=a, currency=c, calendar=cal)
            for s, a, c, cal in rows}


INSTRUMENTS: dict[str, dict[str, Instrument]] = {
    "paper": _table(
        "paper",
        ("GOOG", "equity", "USD", "XNYS"),
        ("SPX", "index", "USD", "XNYS"),
        ("IXIC", "index", "USD", "XNYS"),
        ("SPY", "equity", "USD", "XNYS"),
        ("QQQ", "equity", "USD", "XNYS"),
        ("EURUSD", "fx", "USD", "FX"),
        ("BTCUSD", "crypto", "USD", "24x7"),
        ("ES", "future", "USD", "CME"),
    ),
    "alpaca": _table(
        "alpaca",
        *((s, "equity", "USD", "XNYS") for s in ("AAPL", "GOOG", "MSFT", "SPY", "QQQ", "IWM")),
        ("BTC/USD", "crypto", "USD", "24x7"),
    ),
    "binance": _table(
        "binance",
        ("BTCUSDT", "crypto", "USDT", "24x7"),
        ("ETHUSDT", "crypto", "USDT", "24x7"),
        ("SOLUSDT", "crypto", "USDT", "24x7"),
    ),
}


def lookup(venue: str, symbol: str,
           extra: dict[str, dict[str, Instrument]] | None = None) -> Instrument | None:
    """The instrument ``symbol`` on ``venue``, or ``None`` if the venue does not list it."""
    for table in (extra or {}, INSTRUMENTS):
        inst = table.get(venue, {}).get(symbol)
        if inst is not None:
            return inst
    return None


def venues() -> list[str]:
    """Known venue names."""
    return sorted(INSTRUMENTS)
