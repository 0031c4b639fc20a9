"""Clocks: every component reads time through an injected :class:`Clock`.

Live code uses :class:`LiveClock`; backtests and tests use :class:`SimClock`, advanced by the
historical feed. Time is UTC integer nanoseconds since the Unix epoch.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int:
        """Current UTC time in integer nanoseconds since the epoch."""
        ...


class LiveClock:
    """Wall-clock time (``time.time_ns``)."""

    def now_ns(self) -> int:
        return time.time_ns()


class SimClock:
    """A clock that only moves when told to (backtests, tests).

    Args:
        start_ns: initial time, UTC ns.
    """

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns

    def now_ns(self) -> int:
        return self._now

    def set(self, ts_ns: int) -> None:
        """Move to ``ts_ns``.

        Raises:
            ValueError: ``ts_ns`` is earlier than the current time (time never goes back).
        """
        if ts_ns < self._now:
            raise ValueError(f"SimClock cannot go back: {ts_ns} < {self._now}")
        self._now = ts_ns

    def advance(self, delta_ns: int) -> None:
        """Move forward by ``delta_ns`` nanoseconds (>= 0)."""
        self.set(self._now + delta_ns)
