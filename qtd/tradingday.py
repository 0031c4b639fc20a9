"""Which trading day: one answer for the status page, ``qtd positions``, ``qtd report daily``
and the leader.

The fleet's trading day is the leader config's ``[fleet] trading_day_tz`` /
``trading_day_rollover`` (:class:`~qtd.projections.TradingDay`: day D runs from the rollover,
local time in the zone, on D to the rollover on D+1). The leader labels fills, today's PnL,
the status page and its daily report with it (:func:`fleet_trading_day`); every agent's
``[trading_day]`` must say the same (``qtd up`` generates both from one ``etc/``).

A command reading a store picks its trading day with
:func:`qtd.commands.dayrule.resolve_trading_day` (it loads the configs, so it sits with the
commands), as a :class:`DayRule` that says where the answer came from.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from qtd.errors import ConfigError
from qtd.projections import TradingDay


class FleetDay(Protocol):
    """The trading-day fields of a leader config's ``[fleet]``
    (:class:`~qtd.leader.config.FleetConfig`)."""

    @property
    def trading_day_tz(self) -> str:
        """IANA time zone of the rollover."""
        ...

    @property
    def trading_day_rollover(self) -> str:
        """Local ``HH:MM`` at which day D+1 starts."""
        ...


class DayRule(msgspec.Struct, frozen=True, kw_only=True):
    """A trading-day rule and where it came from (printed by the commands)."""

    tz: str
    rollover: str
    source: str

    def trading_day(self) -> TradingDay:
        """The :class:`TradingDay` of this rule.

        Raises:
            ConfigError: unknown zone or rollover not ``HH:MM`` (names the source).
        """
        try:
            return TradingDay(self.tz, self.rollover)
        except (ValueError, KeyError) as exc:
            raise ConfigError(
                f"{self.source}: trading day {self.tz!r} {self.rollover!r}: {exc}",
                source=self.source, field="tz/rollover", value=f"{self.tz} {self.rollover}",
                rule="IANA time zone and HH:MM") from None

    def describe(self) -> str:
        return f"{self.tz}, rollover {self.rollover} (from {self.source})"


def fleet_trading_day(fleet: FleetDay) -> TradingDay:
    """The fleet's trading day from a leader config's ``[fleet]`` (module docstring)."""
    return TradingDay(fleet.trading_day_tz, fleet.trading_day_rollover)
