"""Submit and cancel tokens: the capability that lets an order reach a broker adapter.

Only the risk engine mints tokens (:meth:`qtd.risk.engine.Approved.bind` after a passed
check, :meth:`qtd.risk.engine.RiskEngine.cancel_token` for cancels). Adapters call
:func:`verify_token` / :func:`verify_cancel_token` before they touch a venue, so an order
that did not pass the engine is refused at the adapter.

A token is bound to one ``client_order_id`` and a fingerprint of the approved order
(account, symbol, side, qty, type, limit price, reduce-only); it is single-use. The mint key
and the registry of outstanding tokens are the one deliberately process-wide object in qtd:
an adapter must be able to check a token without being handed the engine. The registry only
holds tokens minted and not yet verified, so it stays small.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

from qtd.errors import OperationalError
from qtd.events import OrderIntent, OrderType, Side

_MINT_KEY: Final = object()
_outstanding: dict[tuple[str, str], SubmitToken] = {}

Fingerprint = tuple[str, str, str, Side, Decimal, OrderType, Decimal | None, bool]


class TokenError(OperationalError):
    """A broker adapter was handed a forged, reused or mismatched token: a code path tried
    to reach a broker without the risk engine. Stop and investigate."""


class SubmitToken:
    """Proof that the risk engine approved exactly one order (or cancel). Opaque to adapters.

    Raises:
        TokenError: constructed outside the risk engine.
    """

    __slots__ = ("action", "cid", "fingerprint")

    def __init__(self, action: str, cid: str, fingerprint: Fingerprint | None, key: object) -> None:
        if key is not _MINT_KEY:
            raise TokenError("submit tokens are minted by the risk engine only", cid=cid)
        self.action = action
        self.cid = cid
        self.fingerprint = fingerprint

    def __repr__(self) -> str:
        return f"SubmitToken({self.action}, {self.cid})"


def fingerprint(intent: OrderIntent) -> Fingerprint:
    """The fields of an intent a submit token is bound to."""
    return (
        intent.bot, intent.account, intent.symbol, intent.side, intent.qty,
        intent.order_type, intent.limit_price, intent.reduce_only,
    )


def mint_submit(intent: OrderIntent) -> SubmitToken:
    """Mint a single-use submit token for ``intent`` (risk engine only)."""
    token = SubmitToken("submit", intent.client_order_id, fingerprint(intent), _MINT_KEY)
    _outstanding[("submit", intent.client_order_id)] = token
    return token


def mint_cancel(cid: str) -> SubmitToken:
    """Mint a single-use cancel token for ``cid`` (``"*"`` for cancel-all; engine only)."""
    token = SubmitToken("cancel", cid, None, _MINT_KEY)
    _outstanding[("cancel", cid)] = token
    return token


def verify_token(token: object, intent: OrderIntent) -> None:
    """Check that ``token`` was minted by the risk engine for exactly ``intent`` and consume it.

    Raises:
        TokenError: not a token, not minted by the engine, already used, or minted for another
            client_order_id or other order fields.
    """
    _consume(token, "submit", intent.client_order_id)
    assert isinstance(token, SubmitToken)
    if token.fingerprint != fingerprint(intent):
        raise TokenError(
            f"submit token for {intent.client_order_id} was minted for other order fields",
            cid=intent.client_order_id,
        )


def verify_cancel_token(token: object, cid: str) -> None:
    """Check and consume a cancel token for ``cid`` (``"*"``: cancel all).

    Raises:
        TokenError: as for :func:`verify_token`.
    """
    _consume(token, "cancel", cid)


def _consume(token: object, action: str, cid: str) -> None:
    if not isinstance(token, SubmitToken):
        raise TokenError(f"{action} of {cid}: no risk-engine token given", cid=cid)
    if token.action != action or token.cid != cid:
        raise TokenError(
            f"{action} of {cid}: token was minted for {token.action} of {token.cid}", cid=cid
        )
    if _outstanding.get((action, cid)) is not token:
        raise TokenError(f"{action} of {cid}: token already used or not minted", cid=cid)
    del _outstanding[(action, cid)]
