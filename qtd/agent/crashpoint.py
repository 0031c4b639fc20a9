"""Test-only crash points of the order path: the agent SIGKILLs itself at a named point.

**Off by default.** Only the environment variable ``QTD_TEST_CRASH_AT`` turns it on; the
crash suite (``tests/chaos/test_crash_order_path.py``) sets it on an agent subprocess to hit
the narrow windows a random kill delay rarely lands in. Never set it in production.

Format: ``QTD_TEST_CRASH_AT="<point>:<n>"`` — die with SIGKILL (no cleanup, no flush, like a
power cut of the process) the ``n``-th time (1-based) the order path passes ``<point>``:

=================  ==========================================================================
point              where (the store append is the observable step of the order path)
=================  ==========================================================================
``intent_stored``  the :class:`~qtd.events.OrderIntent` commit returned: before the broker
                   adapter's submit (the venue has not seen the order)
``submitted``      the broker's submit returned (the venue has the order), before
                   :class:`~qtd.events.OrderSubmitted` is stored
``ack``            a venue ack (:class:`~qtd.events.OrderAccepted`) arrived, before it is
                   stored
``fill``           a venue :class:`~qtd.events.Fill` arrived, before it is stored
=================  ==========================================================================

A malformed value is refused at start (``ValueError`` naming the variable, the value and the
rule), so a typo cannot silently turn the suite into a no-op.
"""

from __future__ import annotations

import os
import signal

from qtd.events import AnyEvent, Event, Fill, OrderAccepted, OrderIntent, OrderSubmitted

ENV = "QTD_TEST_CRASH_AT"
POINTS = ("intent_stored", "submitted", "ack", "fill")
_BEFORE = {OrderSubmitted: "submitted", OrderAccepted: "ack", Fill: "fill"}


class CrashPoint:
    """Counts passes of one point and SIGKILLs the process at the ``n``-th.

    Args:
        point: one of :data:`POINTS`.
        n: the pass (1-based) at which to die.
    """

    def __init__(self, point: str, n: int) -> None:
        self.point, self.n, self.seen = point, n, 0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> CrashPoint | None:
        """The crash point ``QTD_TEST_CRASH_AT`` names, or None when unset (the default).

        Raises:
            ValueError: the value is not ``<point>:<n>`` with a known point and ``n`` >= 1.
        """
        raw = (os.environ if environ is None else environ).get(ENV, "")
        if not raw:
            return None
        point, _, count = raw.partition(":")
        if point not in POINTS or not count.isdigit() or int(count) < 1:
            raise ValueError(f"{ENV}={raw!r}: must be <point>:<n> with point one of "
                             f"{', '.join(POINTS)} and n >= 1")
        return cls(point, int(count))

    def before(self, event: Event) -> None:
        """Call before ``event`` is stored."""
        if _BEFORE.get(type(event)) == self.point:
            self._pass()

    def after(self, stored: AnyEvent) -> None:
        """Call after ``stored`` was committed."""
        if self.point == "intent_stored" and type(stored) is OrderIntent:
            self._pass()

    def _pass(self) -> None:
        self.seen += 1
        if self.seen >= self.n:
            os.kill(os.getpid(), signal.SIGKILL)
