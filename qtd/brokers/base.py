"""The broker adapter Protocol and the capability token every adapter demands.

An adapter maps one venue's API to qtd events. It accepts an order only with a
:class:`SubmitToken` minted by the risk engine for exactly that order intent, and checks it
with :func:`verify_token` before any I/O; cancels likewise need a cancel token
(:func:`verify_cancel_token`). No code path can therefore reach a venue without passing
:class:`qtd.risk.RiskEngine` (the only place tokens are minted, through
:class:`qtd.execution.OrderRouter`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Protocol, runtime_checkable

import msgspec

from qtd.events import AnyEvent, OrderIntent, PositionSnapshot
from qtd.risk.tokens import SubmitToken, TokenError, verify_cancel_token, verify_token

__all__ = [
    "AccountSnapshot",
    "Broker",
    "SubmitToken",
    "TokenError",
    "verify_cancel_token",
    "verify_token",
]


class AccountSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """An account as the venue reports it; money in ``currency``."""

    account: str
    cash: Decimal
    equity: Decimal
    currency: str = "USD"


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

    def reports(self) -> AsyncIterator[AnyEvent]:
        """Execution reports as qtd events (OrderAccepted, OrderRejected, Fill,
        OrderCanceled, OrderExpired), in venue order; iterate from one task."""
        ...
