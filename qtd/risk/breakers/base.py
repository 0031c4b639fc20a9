"""What every circuit breaker shares: its config base (:class:`BreakerConfig`, which builds
the breaker), the hooks a breaker may watch (:class:`Breaker`), the account equity book the
engine keeps for them (:class:`AccountBook`) and the one way to trip (:class:`Tripper`).

A breaker is one small class that overrides only the hooks it watches; the engine calls
each hook on the enabled breakers that override it, in registry order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING

from qtd.events import Event, LimitUsage, RiskBreach, Scope, TradingState
from qtd.projections import Position, TradingDay
from qtd.risk.exposure import ZERO, Cell
from qtd.risk.fields import ConfigStruct
from qtd.risk.trading_states import TradingStates, severity_for

if TYPE_CHECKING:
    from qtd.risk.scope_limits import AccountConfig


class AccountBook:
    """One account's equity, kept as ``base + unreal_total`` (currency): ``base`` =
    configured equity + Σ net realized of its positions (re-derived on fills and transfers),
    ``unreal`` = Σ unrealized of its open positions per symbol at the last marks. ``day`` /
    ``day_open``: the trading day of the last update and the equity it opened with;
    ``peak``: the highest equity seen."""

    __slots__ = ("base", "day", "day_open", "equity", "peak", "positions", "start", "unreal",
                 "unreal_total")

    def __init__(self, start: Decimal) -> None:
        self.start = start
        self.equity = Cell(start)
        self.positions: list[Position] = []
        self.base = start
        self.unreal: dict[str, Decimal] = {}
        self.unreal_total = ZERO
        self.day = ""
        self.day_open = start
        self.peak = start


class Tripper:
    """Moves a scope to a breaker's trip state (escalation only) and emits the
    :class:`~qtd.events.RiskBreach` and :class:`~qtd.events.TradingStateChanged`.

    Args:
        states: the engine's trading states.
        emit: receives the events to store.
        node: node name for the events.
    """

    def __init__(self, states: TradingStates, emit: Callable[[Event], None], node: str) -> None:
        self.states, self.emit, self.node = states, emit, node

    def __call__(
        self, check: str, scope: Scope, key: str, state: str, limit: float, value: float,
        unit: str, now_ns: int, *, until_ns: int | None = None, reason: str = "",
    ) -> bool:
        """Trip ``scope``/``key`` to ``state`` (``limit``/``value`` in ``unit``; ``reason``
        defaults to ``circuit breaker <check>: <value> <unit> vs limit <limit> <unit>``).
        Returns False when the scope was already at or above ``state`` (nothing emitted)."""
        new = TradingState(state)
        reason = reason or f"circuit breaker {check}: {value:g} {unit} vs limit {limit:g} {unit}"
        change = self.states.escalate(scope, key, new, reason, now_ns, until_ns=until_ns)
        if change is None:
            return False
        self.emit(RiskBreach(
            node=self.node, bot=key if scope is Scope.STRATEGY else "", ts_event=now_ns,
            ts_init=now_ns, check=check, scope=scope, scope_key=key, limit=float(limit),
            value=float(value), unit=unit, severity=severity_for(scope, new),
            action=new.value.lower(), message=reason,
        ))
        self.emit(change)
        return True


class BreakerContext:
    """What a breaker is built with: the accounts' configs by name (``[accounts.<name>]``),
    the account books (read only), the trading day and the tripper."""

    __slots__ = ("accounts", "books", "day", "trip")

    def __init__(self, accounts: Mapping[str, AccountConfig], books: Mapping[str, AccountBook],
                 day: TradingDay, trip: Tripper) -> None:
        self.accounts, self.books, self.day, self.trip = accounts, books, day, trip


class Breaker:
    """One circuit breaker. Each hook is a no-op here: a breaker overrides the ones it
    watches and is only called for those."""

    __slots__ = ()

    def on_trade(self, bot: str, pnl: float, now_ns: int) -> None:
        """A closing trade of ``bot``: its PnL net of the fill's fee (currency)."""

    def on_fill(self, bot: str, now_ns: int) -> None:
        """Any fill of ``bot``."""

    def on_equity(self, account: str, book: AccountBook, now_ns: int) -> None:
        """The account's equity was re-valued (``book.equity``, day open and peak updated)."""

    def on_broker_result(self, account: str, ok: bool, now_ns: int) -> None:
        """One broker request (submit / cancel) of ``account`` succeeded or failed."""

    def usage(self, bot: str, account: str, now_ns: int) -> list[LimitUsage]:
        """The breaker's limits binding ``bot`` on ``account`` with their current use, for
        the status page's cap bars ([] when it shows none)."""
        return []


class BreakerConfig(ConfigStruct, frozen=True, kw_only=True):
    """Base of a breaker's ``[breakers.<name>]`` table; every breaker is disabled while its
    threshold is unset."""

    def build(self, ctx: BreakerContext) -> Breaker | None:
        """The breaker, or None when this config leaves it disabled."""
        raise NotImplementedError

