"""Alpaca payloads → qtd events: pure functions, no I/O.

Sources (docs.alpaca.markets): "Orders" (order object, statuses), "Websocket Streaming"
(``trade_updates`` events), "Account Activities" (``FILL`` activities), "Positions",
"Account". The adapter asks alpaca-py for raw JSON (``raw_data=True``) and decodes it here
with msgspec, because alpaca-py's models parse prices and quantities as ``float`` (qtd keeps
``Decimal``) and reject statuses they do not know (qtd must keep such an order *in flight*
and flag it, not drop the message).

Every Alpaca order status maps to a qtd state (:data:`STATUS_STATE`); ``replaced`` and any
status Alpaca adds later map to ``None`` ("the venue said something qtd does not know"),
which reconciliation must never read as "dead".
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

import msgspec

from qtd.brokers.base import AccountSnapshot, OrderStatusReport
from qtd.brokers.retry import VenueMessageError
from qtd.events import (
    DECODE_ERRORS,
    AnyEvent,
    Fill,
    OrderAccepted,
    OrderCanceled,
    OrderExpired,
    OrderIntent,
    OrderRejected,
    OrderState,
    OrderType,
    PositionSnapshot,
    Side,
)
from qtd.feeds.bars import parse_ts

Num = str | int | float


class AlpacaOrder(msgspec.Struct, kw_only=True):
    """The fields of Alpaca's order object qtd reads (unknown fields are ignored)."""

    id: str
    client_order_id: str
    status: str
    symbol: str | None = None
    side: str | None = None
    qty: Num | None = None
    filled_qty: Num | None = None
    filled_avg_price: Num | None = None
    type: str | None = None
    updated_at: str | None = None


class TradeUpdate(msgspec.Struct, kw_only=True):
    """One ``trade_updates`` message's ``data``: ``price``/``qty`` are this execution's,
    ``execution_id`` identifies it (a UUID)."""

    event: str
    order: AlpacaOrder
    timestamp: str
    execution_id: str | None = None
    price: Num | None = None
    qty: Num | None = None
    position_qty: Num | None = None


class _Envelope(msgspec.Struct):
    stream: str
    data: dict[str, Any] = {}


class FillActivity(msgspec.Struct, kw_only=True):
    """A ``FILL`` account activity: ``id`` is ``"<yyyymmddhhmmssSSS>::<execution uuid>"``."""

    id: str
    transaction_time: str
    price: Num
    qty: Num
    side: str
    symbol: str
    order_id: str
    type: str = "fill"


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """Names stamped on the events: qtd node, account and venue."""

    node: str
    account: str
    venue: str = "alpaca"


_ACTIVE: Final = OrderState.ACCEPTED
STATUS_STATE: Final[dict[str, OrderState | None]] = {
    # Alpaca "Order Lifecycle": the order exists at the venue and may still fill.
    "new": _ACTIVE, "accepted": _ACTIVE, "pending_new": _ACTIVE,
    "accepted_for_bidding": _ACTIVE, "pending_review": _ACTIVE, "held": _ACTIVE,
    "stopped": _ACTIVE, "suspended": _ACTIVE, "calculated": _ACTIVE, "done_for_day": _ACTIVE,
    "pending_cancel": _ACTIVE, "pending_replace": _ACTIVE,
    "partially_filled": OrderState.PARTIALLY_FILLED,
    "filled": OrderState.FILLED,
    "canceled": OrderState.CANCELED,
    "expired": OrderState.EXPIRED,
    "rejected": OrderState.REJECTED,
    "replaced": None,  # qtd never replaces orders: a replace is for a human to explain
}
# trade_updates events that change no qtd fact (the order stays open, or a pending step).
_INFORMATIONAL: Final = frozenset({
    "pending_cancel", "pending_replace", "done_for_day", "calculated", "stopped",
    "suspended", "order_cancel_rejected", "order_replace_rejected", "restated", "held",
    "pending_review", "accepted_for_bidding",
})
_ACK_EVENTS: Final = frozenset({"new", "accepted", "pending_new"})

_tu_decoder = msgspec.json.Decoder(_Envelope)


def dec(value: Num | None, default: Decimal | None = None) -> Decimal | None:
    """An Alpaca number (sent as a string, sometimes as a JSON number) as Decimal."""
    if value is None or value == "":
        return default
    return Decimal(str(value))


def order_state(status: str, filled_qty: Decimal, qty: Decimal | None) -> OrderState | None:
    """Map an Alpaca order status (and its filled quantity) to a qtd state.

    Open statuses with some quantity filled are PARTIALLY_FILLED; ``filled`` stays FILLED.
    Returns None for ``replaced`` and for any status not in :data:`STATUS_STATE`.
    """
    state = STATUS_STATE.get(status)
    if state is OrderState.ACCEPTED and filled_qty > 0:
        return OrderState.FILLED if qty is not None and filled_qty >= qty else \
            OrderState.PARTIALLY_FILLED
    return state


def decode_trade_update(msg: bytes | str | dict[str, Any]) -> TradeUpdate | None:
    """Decode one stream message (a raw frame, or the dict alpaca-py hands over with
    ``raw_data=True``); None for other streams (authorization, listening).

    Raises:
        VenueMessageError: malformed JSON or a ``trade_updates`` payload missing fields.
    """
    try:
        env = (msgspec.convert(msg, _Envelope) if isinstance(msg, dict)
               else _tu_decoder.decode(msg))
        if env.stream != "trade_updates":
            return None
        return msgspec.convert(env.data, TradeUpdate)
    except DECODE_ERRORS as exc:
        raise VenueMessageError(f"alpaca stream: unreadable message: {exc}",
                                raw=str(msg)[:200]) from exc


def is_terminal(tu: TradeUpdate) -> bool:
    """True when the update leaves its order in a terminal qtd state."""
    o = tu.order
    st = order_state(o.status, dec(o.filled_qty, Decimal(0)) or Decimal(0), dec(o.qty))
    return st is not None and st.is_terminal


def trade_update_events(
    tu: TradeUpdate, ctx: Context, bot: str, ts_init: int,
) -> list[AnyEvent]:
    """qtd events for one ``trade_updates`` event (empty for informational ones).

    new/accepted/pending_new → OrderAccepted; partial_fill/fill → Fill (``trade_id`` =
    ``execution_id``, ``qty``/``price`` of this execution); canceled → OrderCanceled;
    expired → OrderExpired; rejected → OrderRejected.

    Raises:
        VenueMessageError: an unknown event, ``replaced``, or a fill without execution_id,
            price or qty (the order must then be checked with the venue, not guessed).
    """
    o, ev = tu.order, tu.event
    base: dict[str, Any] = {"node": ctx.node, "bot": bot, "ts_event": parse_ts(tu.timestamp),
                            "ts_init": ts_init, "client_order_id": o.client_order_id}
    if ev in _ACK_EVENTS:
        return [OrderAccepted(**base, venue_order_id=o.id)]
    if ev in ("fill", "partial_fill"):
        return [_fill(tu, ctx, base)]
    if ev == "canceled":
        return [OrderCanceled(**base, venue_order_id=o.id)]
    if ev == "expired":
        return [OrderExpired(**base, venue_order_id=o.id)]
    if ev == "rejected":
        return [OrderRejected(**base, reason=f"alpaca rejected the order (status {o.status})",
                              code="rejected")]
    if ev in _INFORMATIONAL:
        return []
    raise VenueMessageError(f"alpaca stream: event {ev!r} for {o.client_order_id} is not one "
                            "qtd handles; check the order with the venue",
                            event=ev, client_order_id=o.client_order_id)


def _fill(tu: TradeUpdate, ctx: Context, base: dict[str, Any]) -> Fill:
    o = tu.order
    qty, price = dec(tu.qty), dec(tu.price)
    if not tu.execution_id or qty is None or price is None or o.side not in ("buy", "sell"):
        raise VenueMessageError(f"alpaca stream: {tu.event} for {o.client_order_id} lacks "
                                "execution_id, qty, price or side",
                                client_order_id=o.client_order_id)
    return Fill(**base, trade_id=tu.execution_id, account=ctx.account, venue=ctx.venue,
                symbol=o.symbol or "", side=Side(o.side.upper()), qty=qty, price=price,
                venue_order_id=o.id)


def order_report(raw: dict[str, Any]) -> OrderStatusReport:
    """The venue's word on one order from an Alpaca order object.

    Raises:
        VenueMessageError: the object lacks id, client_order_id or status.
    """
    try:
        o = msgspec.convert(raw, AlpacaOrder)
    except msgspec.ValidationError as exc:
        raise VenueMessageError(f"alpaca order: unreadable: {exc}") from exc
    filled = dec(o.filled_qty, Decimal(0))
    assert filled is not None
    qty = dec(o.qty)
    return OrderStatusReport(
        client_order_id=o.client_order_id, state=order_state(o.status, filled, qty),
        venue_status=o.status, filled_qty=filled, avg_price=dec(o.filled_avg_price) or None,
        venue_order_id=o.id, symbol=o.symbol or "",
        side=Side(o.side.upper()) if o.side in ("buy", "sell") else None, qty=qty,
        ts_ns=parse_ts(o.updated_at) if o.updated_at else 0,
    )


def activity_fill(
    raw: dict[str, Any], cid: str, ctx: Context, bot: str, ts_init: int,
) -> Fill:
    """A Fill from a ``FILL`` account activity; ``trade_id`` is the execution UUID after
    ``::`` in the activity id (the stream's ``execution_id`` of the same execution).

    Raises:
        VenueMessageError: the activity lacks a field.
    """
    try:
        a = msgspec.convert(raw, FillActivity)
    except msgspec.ValidationError as exc:
        raise VenueMessageError(f"alpaca activity: unreadable: {exc}") from exc
    qty, price = dec(a.qty), dec(a.price)
    assert qty is not None and price is not None
    return Fill(node=ctx.node, bot=bot, ts_event=parse_ts(a.transaction_time), ts_init=ts_init,
                client_order_id=cid, trade_id=a.id.rpartition("::")[2], account=ctx.account,
                venue=ctx.venue, symbol=a.symbol, side=Side(a.side.upper()), qty=qty,
                price=price, venue_order_id=a.order_id)


def order_body(intent: OrderIntent) -> dict[str, Any]:
    """JSON body of ``POST /v2/orders`` for an intent (quantities as strings, exact)."""
    body: dict[str, Any] = {
        "symbol": intent.symbol, "qty": str(intent.qty), "side": intent.side.value.lower(),
        "type": intent.order_type.value.lower(), "time_in_force": intent.tif.value.lower(),
        "client_order_id": intent.client_order_id,
    }
    if intent.order_type is OrderType.LIMIT:
        body["limit_price"] = str(intent.limit_price)
    return body


def position_snapshots(
    rows: list[dict[str, Any]], ctx: Context, now: int
) -> list[PositionSnapshot]:
    """``GET /v2/positions`` rows as broker-side snapshots (``qty`` signed)."""
    out = []
    for p in rows:
        qty = dec(p.get("qty"), Decimal(0))
        assert qty is not None
        if p.get("side") == "short" and qty > 0:
            qty = -qty
        out.append(PositionSnapshot(
            node=ctx.node, ts_event=now, ts_init=now, account=ctx.account, symbol=p["symbol"],
            qty=qty, avg_price=dec(p.get("avg_entry_price"), Decimal(0)) or Decimal(0),
            source="broker", mark_price=dec(p.get("current_price")),
        ))
    return out


def account_snapshot(raw: dict[str, Any], account: str) -> AccountSnapshot:
    """``GET /v2/account`` as cash and equity (``currency``, default USD)."""
    return AccountSnapshot(account=account, cash=Decimal(str(raw["cash"])),
                           equity=Decimal(str(raw["equity"])),
                           currency=raw.get("currency") or "USD")
