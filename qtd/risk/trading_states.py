"""Trading states per scope (GLOBAL, ACCOUNT, STRATEGY, SYMBOL): ACTIVE, REDUCING, HALTED.

An order is governed by the most restrictive state of its four scopes. Breakers and the kill
switch only *escalate* (ACTIVE → REDUCING → HALTED); a REDUCING trip may carry an expiry (the
win-streak cooldown) and then returns to ACTIVE by itself. Leaving HALTED needs
:meth:`TradingStates.resume` with an operator name and a reason: nothing resumes by itself
after a critical trip.
"""

from __future__ import annotations

from typing import Final

from qtd.errors import ConfigError
from qtd.events import Scope, Severity, TradingState, TradingStateChanged

ACTIVE: Final = TradingState.ACTIVE
REDUCING: Final = TradingState.REDUCING
HALTED: Final = TradingState.HALTED
_GLOBAL, _ACCOUNT, _STRATEGY, _SYMBOL = Scope.GLOBAL, Scope.ACCOUNT, Scope.STRATEGY, Scope.SYMBOL
_RANK: Final = {ACTIVE: 0, REDUCING: 1, HALTED: 2}

ScopeKey = tuple[Scope, str]


def severity_for(scope: Scope, state: TradingState, *, kill: bool = False) -> Severity:
    """Paging severity of a scope entering ``state``.

    P1: kill switch or global halt; P2: account halted; P3: strategy or symbol halted, any
    REDUCING; P4: back to ACTIVE (informational).
    """
    if kill or (scope is Scope.GLOBAL and state is HALTED):
        return Severity.P1
    if state is HALTED:
        return Severity.P2 if scope is Scope.ACCOUNT else Severity.P3
    return Severity.P3 if state is REDUCING else Severity.P4


class TradingStates:
    """The trading state of every scope that is not ACTIVE.

    Args:
        node: node name stamped on the :class:`~qtd.events.TradingStateChanged` events.
    """

    def __init__(self, node: str) -> None:
        self.node = node
        self._states: dict[ScopeKey, TradingState] = {}
        self._until: dict[ScopeKey, int] = {}
        self._expired: list[TradingStateChanged] = []

    def __bool__(self) -> bool:
        """True while any scope is not ACTIVE (the hot path skips lookups otherwise)."""
        return bool(self._states)

    def get(self, scope: Scope, key: str = "") -> TradingState:
        return self._states.get((scope, key), ACTIVE)

    def effective(
        self, account: str, bot: str, symbol: str, now_ns: int
    ) -> tuple[TradingState, Scope, str]:
        """Most restrictive state over the order's scopes, with the scope that sets it."""
        if self._until:
            self._expire(now_ns)
        worst: tuple[TradingState, Scope, str] = (ACTIVE, _GLOBAL, "")
        get = self._states.get
        for sk in ((_GLOBAL, ""), (_ACCOUNT, account), (_STRATEGY, bot), (_SYMBOL, symbol)):
            st = get(sk)
            if st is not None and _RANK[st] > _RANK[worst[0]]:
                worst = (st, sk[0], sk[1])
        return worst

    def escalate(
        self, scope: Scope, key: str, state: TradingState, reason: str, now_ns: int, *,
        operator: str = "", until_ns: int | None = None,
    ) -> TradingStateChanged | None:
        """Move a scope to ``state`` if that is more restrictive; None if nothing changed.

        Args:
            until_ns: for REDUCING only: return to ACTIVE at this UTC ns time.
        """
        old = self.get(scope, key)
        if _RANK[state] <= _RANK[old]:
            return None
        sk = (scope, key)
        self._states[sk] = state
        self._until.pop(sk, None)
        if until_ns is not None and state is REDUCING:
            self._until[sk] = until_ns
        return self._event(scope, key, old, state, reason, now_ns, operator)

    def resume(
        self, scope: Scope, key: str, operator: str, reason: str, now_ns: int,
        state: TradingState = ACTIVE,
    ) -> TradingStateChanged | None:
        """Operator action: move a scope to a less restrictive ``state`` (default ACTIVE).

        Raises:
            ConfigError: ``operator`` or ``reason`` is empty (an operator must say who and why).
        """
        for name, value in (("operator", operator), ("reason", reason)):
            if not value.strip():
                raise ConfigError(
                    f"resume {scope}:{key}: {name} is required", field=name, value=value,
                    rule="must be non-empty",
                )
        old = self.get(scope, key)
        if _RANK[state] >= _RANK[old]:
            return None
        sk = (scope, key)
        self._until.pop(sk, None)
        if state is ACTIVE:
            del self._states[sk]
        else:
            self._states[sk] = state
        return self._event(scope, key, old, state, reason, now_ns, operator)

    def restore(self, change: TradingStateChanged) -> None:
        """Re-apply a stored state change on restart (no new event). A timed REDUCING
        restored this way has no expiry: after a restart it stays until an operator
        resumes it (when unsure, reduce risk)."""
        sk = (change.scope, change.scope_key)
        self._until.pop(sk, None)
        if change.new is ACTIVE:
            self._states.pop(sk, None)
        else:
            self._states[sk] = change.new

    def snapshot(self) -> dict[ScopeKey, TradingState]:
        """Every non-ACTIVE scope and its state."""
        return dict(self._states)

    def has_expired(self) -> bool:
        """Whether :meth:`take_expired` has events to give."""
        return bool(self._expired)

    def take_expired(self) -> list[TradingStateChanged]:
        """Events of cooldowns that expired (in :meth:`effective`) since the last call."""
        if not self._expired:
            return []
        out, self._expired = self._expired, []
        return out

    def _expire(self, now_ns: int) -> None:
        for sk in [sk for sk, t in self._until.items() if t <= now_ns]:
            del self._until[sk]
            old = self._states.pop(sk)
            self._expired.append(
                self._event(sk[0], sk[1], old, ACTIVE, "cooldown expired", now_ns, "")
            )

    def _event(
        self, scope: Scope, key: str, old: TradingState, new: TradingState, reason: str,
        now_ns: int, operator: str,
    ) -> TradingStateChanged:
        return TradingStateChanged(
            node=self.node, bot=key if scope is Scope.STRATEGY else "", ts_event=now_ns,
            ts_init=now_ns, scope=scope, scope_key=key, old=old, new=new, reason=reason,
            operator=operator,
        )
