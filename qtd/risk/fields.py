"""Field types shared by every risk config struct (limits, breakers): constrained numbers
and the trip states, so a breaker's config module need not import :mod:`qtd.risk.config`
(which imports the breaker registry).

Units: amounts in currency or instrument units, percentages in percent (``3.0`` = 3 %),
durations in seconds, counts as integers.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

BIG = 1e15  # upper bound of any configured amount: rejects inf and fat-fingered exponents
Amount = Annotated[float, Meta(gt=0, lt=BIG)]
Pct = Annotated[float, Meta(gt=0, le=100)]
Seconds = Annotated[float, Meta(ge=0, lt=10 * 365 * 86400)]
Count = Annotated[int, Meta(gt=0, lt=10**12)]
TripState = Literal["REDUCING", "HALTED"]


class ConfigStruct(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every risk config table: frozen, unknown keys refused."""
