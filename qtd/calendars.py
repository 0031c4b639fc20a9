"""Exchange trading sessions from the ``exchange-calendars`` package (holidays, early closes).

A session name that is an ``exchange_calendars`` calendar code (``XNYS``, ``XNAS``, ``CMES``,
``XLON``, … — see ``exchange_calendars.get_calendar_names()``) is open exactly when that
calendar says a minute is a trading minute, including holidays and half days (e.g. NYSE
closes at 13:00 New York on 2018-12-24). Calendars cover 1990-01-01 to about a year ahead;
a time outside that range is treated as *closed* (no route matches), never guessed.

``exchange-calendars`` imports pandas (≈0.5 s), so it is imported on first use only.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

CALENDAR_START = "1990-01-01"


@functools.cache
def calendar_names() -> frozenset[str]:
    """Codes of every calendar ``exchange-calendars`` provides."""
    import exchange_calendars

    return frozenset(exchange_calendars.get_calendar_names())


def is_calendar(name: str) -> bool:
    """True if ``name`` is an ``exchange-calendars`` code."""
    return name in calendar_names()


@functools.cache
def _calendar(code: str) -> Any:
    import exchange_calendars

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # see ExchangeSession.contains
        return exchange_calendars.get_calendar(code, start=CALENDAR_START)


class ExchangeSession:
    """The trading minutes of one exchange calendar.

    Args:
        code: an ``exchange-calendars`` code, e.g. ``"XNYS"``.

    Raises:
        KeyError: unknown code (check with :func:`is_calendar` first).
    """

    def __init__(self, code: str) -> None:
        if not is_calendar(code):
            raise KeyError(code)
        self.code = code

    def contains(self, ts_ns: int) -> bool:
        """True if UTC ns ``ts_ns`` is a trading minute of the calendar."""
        import pandas as pd

        with warnings.catch_warnings():
            # exchange-calendars 4.13 calls Series.values on tz-aware data, which pandas 3.1
            # deprecates (Pandas4Warning, a DeprecationWarning): harmless, not ours to fix.
            warnings.simplefilter("ignore", DeprecationWarning)
            cal = _calendar(self.code)
            minute = pd.Timestamp(ts_ns, unit="ns", tz="UTC").floor("min")
            if not cal.first_minute <= minute <= cal.last_minute:
                return False
            return bool(cal.is_open_on_minute(minute))

    def minutes_ns(self, start_ns: int, end_ns: int) -> list[int]:
        """Open times (UTC ns) of the trading minutes from ``start_ns`` to ``end_ns``
        inclusive, clipped to the calendar's range; ascending."""
        import pandas as pd

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # see contains
            cal = _calendar(self.code)
            start = max(pd.Timestamp(start_ns, unit="ns", tz="UTC").ceil("min"), cal.first_minute)
            end = min(pd.Timestamp(end_ns, unit="ns", tz="UTC").floor("min"), cal.last_minute)
            if start > end:
                return []
            minutes = cal.minutes_in_range(start, end)
            return minutes.as_unit("ns").asi8.tolist()  # type: ignore[no-any-return]

    def session_days(self, start_ns: int, end_ns: int) -> list[int]:
        """Sessions from ``start_ns`` to ``end_ns`` inclusive (clipped to the calendar's
        range), each as UTC ns of 00:00 of its date; ascending."""
        import pandas as pd

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # see contains
            cal = _calendar(self.code)
            start = max(pd.Timestamp(start_ns, unit="ns").normalize(), cal.first_session)
            end = min(pd.Timestamp(end_ns, unit="ns").normalize(), cal.last_session)
            if start > end:
                return []
            sessions = cal.sessions_in_range(start, end)
            return sessions.as_unit("ns").asi8.tolist()  # type: ignore[no-any-return]
