"""Operator overrides of the fleet caps: a cap's limit raised for the rest of one trading day.

``qtd caps raise CAP [--key SYMBOL] --limit X --operator NAME --reason WHY`` asks the leader
(request/reply ``<prefix>.ctl.leader.caps_raise``). The leader checks the request
(:func:`check_raise`), stores a :class:`~qtd.events.CapOverride` in fleet.db, then applies it
(:meth:`CapOverrides.apply`); at start it applies the ``CapOverride`` events of fleet.db
again (its own only: ``node`` ``"leader"``; an agent cannot write one). An override holds
while the fleet's trading day (:class:`~qtd.projections.TradingDay`, the ``[fleet]``
rollover) is the day it was raised on; from the rollover on the configured limit applies
again. Overrides live in this leader's fleet.db only: a standby that takes over applies the
configured limits (the lower ones: fail safe) until the operator raises again.
"""

from __future__ import annotations

import math

from qtd.clock import Clock
from qtd.errors import ConfigError
from qtd.events import CapOverride
from qtd.leader.fleetdb import LEADER_NODE
from qtd.projections import TradingDay

RAISABLE: dict[str, str] = {
    "daily_loss": "today's fleet loss",
    "drawdown": "equity below its peak, %",
    "gross_exposure": "sum of |qty x mark|",
    "symbol_exposure": "|net notional| of one symbol (--key SYMBOL)",
    "error_rate": "(rejects + broker errors) / orders, %",
    "order_spike": "orders/s against the trailing normal, x",
}
"""Caps with a limit an operator may raise, and what the limit measures."""

PERCENT_CAPS = frozenset({"drawdown", "error_rate"})


class CapOverrides:
    """The overrides in force, by ``(cap, key)``.

    Args:
        trading_day: the fleet's trading day (an override holds on the day it was raised).
        clock: leader clock (which day is today).
    """

    def __init__(self, trading_day: TradingDay, clock: Clock) -> None:
        self.trading_day = trading_day
        self.clock = clock
        self._latest: dict[tuple[str, str], CapOverride] = {}

    def today(self) -> str:
        """Today's trading-day label (``YYYY-MM-DD``)."""
        return self.trading_day.label(self.clock.now_ns())

    def apply(self, ev: CapOverride) -> None:
        """Put an override in force (the latest per cap and key wins); one not written by
        the leader is ignored."""
        if ev.node == LEADER_NODE:
            self._latest[(ev.cap, ev.cap_key)] = ev

    def current(self, cap: str, key: str = "") -> CapOverride | None:
        """The override of ``cap`` (``key``: the symbol) in force today, if any."""
        ev = self._latest.get((cap, key))
        return ev if ev is not None and ev.trading_day == self.today() else None

    def limit(self, cap: str, key: str, configured: float) -> float:
        """The limit in force: today's override, else ``configured``."""
        ev = self.current(cap, key)
        return configured if ev is None else ev.new_limit

    def active(self) -> list[CapOverride]:
        """Today's overrides, by cap and key; lapsed ones are dropped."""
        today = self.today()
        for k in [k for k, ev in self._latest.items() if ev.trading_day != today]:
            del self._latest[k]
        return [self._latest[k] for k in sorted(self._latest)]


def check_raise(cap: str, key: str, limit: float | None, in_force: float | None,
                operator: str, reason: str) -> float:
    """Check a raise request against the limit in force; return the new limit.

    Raises:
        ConfigError: empty operator or reason; a cap that cannot be raised, is off, or
            needs (or refuses) ``key``; a limit missing, not finite, not above the limit in
            force, or above 100 for a percentage.
    """
    for field, value in (("operator", operator), ("reason", reason)):
        if not value.strip():
            raise _bad(f"caps raise needs a non-empty {field}", field, value,
                       "must not be empty")
    if cap not in RAISABLE:
        raise _bad(f"cap {cap!r} has no limit to raise; caps that have one: "
                   f"{', '.join(RAISABLE)}", "cap", cap, f"one of {', '.join(RAISABLE)}")
    if in_force is None:
        raise _bad(f"cap {cap} is off in the leader config: nothing to raise", "cap", cap,
                   "a cap configured in [caps]")
    if (cap == "symbol_exposure") != bool(key):
        rule = "required for symbol_exposure" if not key else "only for symbol_exposure"
        raise _bad(f"--key (the symbol) is {rule}", "key", key, rule)
    if limit is None or not math.isfinite(limit) or limit <= in_force:
        raise _bad(f"{cap}{f' {key}' if key else ''}: --limit {limit} must be above the "
                   f"limit in force ({in_force:g})", "limit", limit,
                   f"a finite number > {in_force:g}")
    if cap in PERCENT_CAPS and limit > 100.0:
        raise _bad(f"{cap}: --limit {limit} is a percentage: at most 100", "limit", limit,
                   "<= 100")
    return limit


def _bad(message: str, field: str, value: object, rule: str) -> ConfigError:
    return ConfigError(message, source="<request>", field=field, value=value, rule=rule)
