"""The broker adapter Protocol and the capability token every adapter demands.

An adapter maps one venue's API to qtd events. It accepts an order only with a
:class:`SubmitToken` minted by the risk engine for exactly that order intent, and checks it
with :func:`verify_token` before any I/O; cancels likewise need a cancel token
(:func:`verify_cancel_token`). No code path can therefore reach a venue without passing
:class:`qtd.risk.RiskEngine` (the only place tokens are minted, through
:class:`qtd.execution.OrderRouter`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Protocol, TypeGuard, runtime_checkable

import msgspec

from qtd.events import AnyEvent, Fill, OrderIntent, OrderState, PositionSnapshot, Side
from qtd.risk.tokens import SubmitToken, TokenError, verify_cancel_token, verify_token

__all__ = [
    "AccountSnapshot",
    "Broker",
    "Link",
    "OrderStatusReport",
    "PriceFed",
    "SubmitToken",
    "TokenError",
    "fed_by_prices",
    "verify_cancel_token",
    "verify_token",
]


class AccountSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """An account as the venue reports it; money in ``currency``."""

    account: str
    cash: Decimal
    equity: Decimal
    currency: str = "USD"


class OrderStatusReport(msgspec.Struct, frozen=True, kw_only=True):
    """The venue's word on one order (for reconciliation and unknown submit outcomes).

    Attributes:
        client_order_id: the order's client_order_id.
        state: the venue status mapped to a qtd state; ``None`` when the venue reported a
            status qtd does not know (``venue_status``): never treat that order as dead.
        venue_status: the venue's own status string, as sent.
        filled_qty: cumulative filled quantity, instrument units.
        avg_price: average fill price, quote currency (``None`` before any fill).
        venue_order_id: the venue's order id.
        symbol: instrument symbol as qtd names it.
        side: order side, when the venue reports it.
        qty: ordered quantity, instrument units, when the venue reports it.
        ts_ns: the venue's last update time of the order, UTC ns (0 if unknown).
    """

    client_order_id: str
    state: OrderState | None
    venue_status: str
    filled_qty: Decimal
    avg_price: Decimal | None = None
    venue_order_id: str = ""
    symbol: str = ""
    side: Side | None = None
    qty: Decimal | None = None
    ts_ns: int = 0


class Link:
    """Connection state of an adapter's venue stream, for reconciliation and the
    auto-flatten policy (:class:`qtd.reconcile.Reconciler`).

    The adapter calls :meth:`down` when its stream drops and :meth:`up` when it is
    connected (and subscribed) again; listeners registered with :meth:`on_up` get the outage
    length in seconds (monotonic clock; 0.0 for the first connection).
    """

    def __init__(self) -> None:
        self.down_since: float | None = None
        self.ups = 0
        self._listeners: list[Callable[[float], None]] = []

    @property
    def is_up(self) -> bool:
        return self.ups > 0 and self.down_since is None

    def on_up(self, listener: Callable[[float], None]) -> None:
        """Call ``listener(outage_s)`` after every (re)connection."""
        self._listeners.append(listener)

    def down(self) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()

    def up(self) -> None:
        outage = 0.0 if self.down_since is None else time.monotonic() - self.down_since
        self.down_since = None
        self.ups += 1
        for listener in list(self._listeners):
            listener(outage)


@runtime_checkable
class Broker(Protocol):
    """One venue account. ``account`` and ``venue`` name it in qtd events."""

    account: str
    venue: str

    async def submit(self, intent: OrderIntent, token: SubmitToken) -> None:
        """Send the order to the venue; results arrive on :meth:`reports`.

        Raises:
            TokenError: the token was not minted by the risk engine for this intent, or was
                used before. Nothing was sent.
            TemporaryError: the venue could not be reached; the order's fate may be unknown.
        """
        ...

    async def cancel(self, client_order_id: str, token: SubmitToken) -> None:
        """Ask the venue to cancel one order (confirmation arrives on :meth:`reports`).

        Raises:
            TokenError: missing or wrong cancel token.
        """
        ...

    async def cancel_all(self, token: SubmitToken) -> list[str]:
        """Cancel every open order of the account (token minted for ``"*"``); returns the
        client_order_ids asked to cancel."""
        ...

    async def open_orders(self) -> list[OrderIntent]:
        """Orders open at the venue, as the intents they were sent from."""
        ...

    async def positions(self) -> list[PositionSnapshot]:
        """Positions as the venue reports them (``source="broker"``)."""
        ...

    async def account_info(self) -> AccountSnapshot:
        """Cash and equity of the account."""
        ...

    async def get_order(self, client_order_id: str) -> OrderStatusReport | None:
        """The venue's word on one order, looked up by client_order_id; None when the venue
        says it has no such order.

        Raises:
            TemporaryError: the venue could not be asked (the answer is not "no such order").
        """
        ...

    async def fills_since(self, ts_ns: int) -> list[Fill]:
        """Executions of the account at or after ``ts_ns`` (UTC ns) from the venue's trade
        history, oldest first, with the same ``trade_id`` the report stream uses.

        Raises:
            TemporaryError: the venue could not be asked.
        """
        ...

    def reports(self) -> AsyncIterator[AnyEvent]:
        """Execution reports as qtd events (OrderAccepted, OrderRejected, Fill,
        OrderCanceled, OrderExpired), in venue order; iterate from one task."""
        ...

    def has_reports(self) -> bool:
        """Whether reports already received are queued here, not yet taken by
        :meth:`reports` (the agent stores them before its final outbox flush)."""
        ...


@runtime_checkable
class PriceFed(Protocol):
    """A broker that fills on the market data the agent receives (qtd's paper broker, a
    simulated venue's): the agent hands it every price before any bot acts on it."""

    def on_price(self, symbol: str, price: Decimal, ts_ns: int) -> None:
        """The last price of ``symbol`` (quote currency) at ``ts_ns`` (UTC ns)."""
        ...


def fed_by_prices(broker: object) -> TypeGuard[PriceFed]:
    """Whether ``broker`` takes prices (:class:`PriceFed`); answered once per class, so it
    is cheap on every tick."""
    cls = type(broker)
    fed = _FED.get(cls)
    if fed is None:
        fed = _FED[cls] = issubclass(cls, PriceFed)
    return fed


_FED: dict[type, bool] = {}
