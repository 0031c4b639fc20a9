"""The instruments each venue offers, as admission and routing know them.

A small, explicit list per venue, held by the venue's package (``qtd/venues/<name>/``,
``Venue.instruments``; :mod:`qtd.venues`): a bot may only trade a symbol listed for its
venue. ``paper`` lists the symbols of the bundled real data sets (``qtd data list``), SPX
and IXIC being index levels; ``alpaca`` and ``binance`` list the instruments the shipped
configs use.
Extend a venue's table (or pass ``extra`` to :func:`lookup`) when onboarding one.
Asset classes: ``equity``, ``index``, ``fx``, ``crypto``, ``future``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from qtd.errors import ConfigError
from qtd.venues import AssetClass, Instrument, all_venues, get, known

__all__ = ["INSTRUMENTS", "AssetClass", "Instrument", "lookup", "venues"]


class _ByVenue(Mapping[str, Mapping[str, Instrument]]):
    """``{venue: {symbol: Instrument}}`` read from the venue registry on each access (so a
    venue registered later is listed too)."""

    def __getitem__(self, venue: str) -> Mapping[str, Instrument]:
        try:
            return get(venue, field="venue").instruments
        except ConfigError:
            raise KeyError(venue) from None

    def __iter__(self) -> Iterator[str]:
        return iter([v.name for v in all_venues()])

    def __len__(self) -> int:
        return len(known())


INSTRUMENTS: Mapping[str, Mapping[str, Instrument]] = _ByVenue()


def lookup(venue: str, symbol: str,
           extra: Mapping[str, Mapping[str, Instrument]] | None = None) -> Instrument | None:
    """The instrument ``symbol`` on ``venue``, or ``None`` if the venue does not list it
    (or is unknown)."""
    for table in (extra or {}, INSTRUMENTS):
        inst = table.get(venue, {}).get(symbol)
        if inst is not None:
            return inst
    return None


def venues() -> list[str]:
    """Known venue names."""
    return known()
