"""Binance spot payloads → qtd events, and symbol filters: pure functions, no I/O.

Sources (Binance Spot API docs, developers.binance.com/docs/binance-spot-api-docs):
"General API Information" (rate limits ``REQUEST_WEIGHT``/``ORDERS``/``RAW_REQUESTS`` in
``exchangeInfo.rateLimits``), "Filters" (``PRICE_FILTER``, ``LOT_SIZE``, ``MARKET_LOT_SIZE``,
``NOTIONAL``, ``MIN_NOTIONAL``), "Enums" (order status NEW, PENDING_NEW, PARTIALLY_FILLED,
FILLED, CANCELED, PENDING_CANCEL, REJECTED, EXPIRED, EXPIRED_IN_MATCH; execution types NEW,
CANCELED, REPLACED, REJECTED, TRADE, EXPIRED, TRADE_PREVENTION), "User Data Stream"
(``executionReport``: ``c`` client order id, ``C`` original client order id of a cancel,
``x`` execution type, ``X`` status, ``l``/``L`` last qty/price, ``z`` cumulative qty, ``n``/
``N`` commission and asset, ``t`` trade id, ``T`` transaction time ms, ``r`` reject
reason), "Account endpoints" (``GET /api/v3/myTrades`` rows: ``id`` = the trade id ``t``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

import msgspec

from qtd.brokers.base import OrderStatusReport
from qtd.brokers.retry import VenueMessageError
from qtd.events import (
    AnyEvent,
    Fill,
    OrderAccepted,
    OrderCanceled,
    OrderExpired,
    OrderIntent,
    OrderRejected,
    OrderState,
    OrderType,
    Side,
)

_D0: Final = Decimal(0)
_INTERVAL_S: Final = {"SECOND": 1, "MINUTE": 60, "HOUR": 3600, "DAY": 86400}


class SymbolRules(msgspec.Struct, frozen=True, kw_only=True):
    """One symbol's trading filters (prices in ``quote``, quantities in ``base``)."""

    symbol: str
    base: str
    quote: str
    tick_size: Decimal = _D0
    min_price: Decimal = _D0
    max_price: Decimal = _D0
    step_size: Decimal = _D0
    min_qty: Decimal = _D0
    max_qty: Decimal = _D0
    market_step_size: Decimal = _D0
    market_max_qty: Decimal = _D0
    min_notional: Decimal = _D0
    min_notional_market: bool = True
    max_notional: Decimal = _D0


class RateLimit(msgspec.Struct, frozen=True):
    """``limit`` units of ``kind`` (REQUEST_WEIGHT, ORDERS, RAW_REQUESTS) per ``window_s``."""

    kind: str
    window_s: int
    limit: int


class Violation(msgspec.Struct, frozen=True):
    """A filter an order breaks: ``filter`` name, the ``field`` and ``value``, the ``rule``."""

    filter: str
    field: str
    value: Decimal
    rule: str

    @property
    def message(self) -> str:
        return f"{self.filter}: {self.field}={self.value} breaks {self.rule}"


def parse_exchange_info(raw: dict[str, Any]) -> tuple[dict[str, SymbolRules], list[RateLimit]]:
    """Symbol filters and rate limits from ``GET /api/v3/exchangeInfo``.

    Raises:
        VenueMessageError: a symbol or rate limit lacks a documented field.
    """
    try:
        rules = {s["symbol"]: _rules(s) for s in raw.get("symbols", [])}
        limits = [RateLimit(r["rateLimitType"], _INTERVAL_S[r["interval"]] * int(r["intervalNum"]),
                            int(r["limit"])) for r in raw.get("rateLimits", [])]
    except (KeyError, TypeError, ArithmeticError) as exc:
        raise VenueMessageError(f"binance exchangeInfo: unreadable ({exc!r})") from exc
    return rules, limits


def _rules(s: dict[str, Any]) -> SymbolRules:
    f: dict[str, Any] = {"symbol": s["symbol"], "base": s["baseAsset"], "quote": s["quoteAsset"]}
    for flt in s.get("filters", []):
        kind = flt["filterType"]
        if kind == "PRICE_FILTER":
            f.update(tick_size=Decimal(flt["tickSize"]), min_price=Decimal(flt["minPrice"]),
                     max_price=Decimal(flt["maxPrice"]))
        elif kind == "LOT_SIZE":
            f.update(step_size=Decimal(flt["stepSize"]), min_qty=Decimal(flt["minQty"]),
                     max_qty=Decimal(flt["maxQty"]))
        elif kind == "MARKET_LOT_SIZE":
            f.update(market_step_size=Decimal(flt["stepSize"]),
                     market_max_qty=Decimal(flt["maxQty"]))
        elif kind == "NOTIONAL":
            f.update(min_notional=Decimal(flt["minNotional"]),
                     min_notional_market=bool(flt.get("applyMinToMarket", True)),
                     max_notional=Decimal(flt.get("maxNotional", "0")))
        elif kind == "MIN_NOTIONAL":
            f.update(min_notional=Decimal(flt["minNotional"]),
                     min_notional_market=bool(flt.get("applyToMarket", True)))
    return SymbolRules(**f)


def _on_grid(value: Decimal, step: Decimal, origin: Decimal = _D0) -> bool:
    return not step or (value - origin) % step == 0


def check_filters(
    r: SymbolRules, intent: OrderIntent, ref_price: Decimal | None
) -> Violation | None:
    """The first filter ``intent`` breaks, or None. A MARKET order's notional is checked at
    ``ref_price`` (the decision price; skipped when unknown). Binance "Filters": price in
    [minPrice, maxPrice] with (price - minPrice) % tickSize == 0; quantity in [minQty,
    maxQty] with (qty - minQty) % stepSize == 0; price × qty ≥ minNotional."""
    qty, market = intent.qty, intent.order_type is OrderType.MARKET
    price = ref_price if market else intent.limit_price
    if not market and price is not None:
        if r.min_price and price < r.min_price:
            return Violation("PRICE_FILTER", "price", price, f"price >= minPrice {r.min_price}")
        if r.max_price and price > r.max_price:
            return Violation("PRICE_FILTER", "price", price, f"price <= maxPrice {r.max_price}")
        if not _on_grid(price, r.tick_size, r.min_price):
            return Violation("PRICE_FILTER", "price", price, f"multiple of tickSize {r.tick_size}")
    if r.min_qty and qty < r.min_qty:
        return Violation("LOT_SIZE", "quantity", qty, f"quantity >= minQty {r.min_qty}")
    max_qty = r.market_max_qty if market and r.market_max_qty else r.max_qty
    if max_qty and qty > max_qty:
        return Violation("LOT_SIZE", "quantity", qty, f"quantity <= maxQty {max_qty}")
    if not _on_grid(qty, r.step_size, r.min_qty):
        return Violation("LOT_SIZE", "quantity", qty, f"multiple of stepSize {r.step_size}")
    if price is not None and (r.min_notional_market or not market):
        notional = price * qty
        if r.min_notional and notional < r.min_notional:
            return Violation("NOTIONAL", "price*quantity", notional,
                             f"notional >= minNotional {r.min_notional}")
        if r.max_notional and notional > r.max_notional:
            return Violation("NOTIONAL", "price*quantity", notional,
                             f"notional <= maxNotional {r.max_notional}")
    return None


def order_params(intent: OrderIntent, recv_window_ms: int) -> dict[str, Any]:
    """Parameters of ``POST /api/v3/order`` (``newOrderRespType=RESULT``)."""
    p: dict[str, Any] = {
        "symbol": intent.symbol, "side": intent.side.value, "type": intent.order_type.value,
        "quantity": str(intent.qty), "newClientOrderId": intent.client_order_id,
        "newOrderRespType": "RESULT", "recvWindow": recv_window_ms,
    }
    if intent.order_type is OrderType.LIMIT:
        p["price"] = str(intent.limit_price)
        p["timeInForce"] = "GTC" if intent.tif.value == "DAY" else intent.tif.value
    return p


_OPEN: Final = OrderState.ACCEPTED
STATUS_STATE: Final[dict[str, OrderState]] = {
    "NEW": _OPEN, "PENDING_NEW": _OPEN, "PENDING_CANCEL": _OPEN,
    "PARTIALLY_FILLED": OrderState.PARTIALLY_FILLED, "FILLED": OrderState.FILLED,
    "CANCELED": OrderState.CANCELED, "REJECTED": OrderState.REJECTED,
    "EXPIRED": OrderState.EXPIRED, "EXPIRED_IN_MATCH": OrderState.EXPIRED,
}


def order_state(status: str, executed: Decimal) -> OrderState | None:
    """Map a Binance order status to a qtd state (None: a status qtd does not know)."""
    state = STATUS_STATE.get(status)
    if state is _OPEN and executed > 0:
        return OrderState.PARTIALLY_FILLED
    return state


def order_report(raw: dict[str, Any]) -> OrderStatusReport:
    """The venue's word on one order from an order object (``GET /api/v3/order``, the
    ``POST`` RESULT answer, or an ``openOrders`` row).

    Raises:
        VenueMessageError: a documented field is missing.
    """
    try:
        executed = Decimal(raw["executedQty"])
        quote = Decimal(raw.get("cummulativeQuoteQty") or 0)
        ts = raw.get("updateTime") or raw.get("transactTime") or 0
        return OrderStatusReport(
            client_order_id=raw["clientOrderId"], state=order_state(raw["status"], executed),
            venue_status=raw["status"], filled_qty=executed,
            avg_price=quote / executed if executed else None,
            venue_order_id=str(raw["orderId"]), symbol=raw.get("symbol", ""),
            side=Side(raw["side"]) if raw.get("side") in ("BUY", "SELL") else None,
            qty=Decimal(raw["origQty"]) if raw.get("origQty") else None,
            ts_ns=int(ts) * 1_000_000,
        )
    except (KeyError, ArithmeticError, ValueError) as exc:
        raise VenueMessageError(f"binance order: unreadable ({exc!r})") from exc


class Names(msgspec.Struct, frozen=True, kw_only=True):
    """Names stamped on events: node, account, venue."""

    node: str
    account: str
    venue: str = "binance"


def report_cid(er: dict[str, Any]) -> str:
    """The order's client_order_id in an executionReport (``C`` on cancels, else ``c``)."""
    return str(er.get("C") or er.get("c") or "")


def execution_report_events(
    er: dict[str, Any], names: Names, bot: str, quote: str, ts_init: int,
) -> list[AnyEvent]:
    """qtd events for one ``executionReport`` (``quote``: the symbol's quote asset).

    NEW → OrderAccepted; TRADE → Fill (``trade_id`` = ``t``); CANCELED → OrderCanceled;
    REJECTED → OrderRejected (``r``); EXPIRED and TRADE_PREVENTION (status
    EXPIRED_IN_MATCH) → OrderExpired; REPLACED → nothing (qtd never amends).

    Raises:
        VenueMessageError: an unknown execution type, or a field missing.
    """
    try:
        x, cid, vid = er["x"], report_cid(er), str(er["i"])
        base: dict[str, Any] = {"node": names.node, "bot": bot, "ts_event": int(er["E"]) * 10**6,
                                "ts_init": ts_init, "client_order_id": cid}
        if x == "NEW":
            return [OrderAccepted(**base, venue_order_id=vid)]
        if x == "TRADE":
            base["ts_event"] = int(er["T"]) * 10**6
            return [Fill(**base, trade_id=str(er["t"]), account=names.account, venue=names.venue,
                         symbol=er["s"], side=Side(er["S"]), qty=Decimal(er["l"]),
                         price=Decimal(er["L"]), commission=Decimal(er.get("n") or 0),
                         commission_currency=er.get("N") or quote, currency=quote,
                         venue_order_id=vid, liquidity="maker" if er.get("m") else "taker")]
        if x == "CANCELED":
            return [OrderCanceled(**base, venue_order_id=vid)]
        if x == "REJECTED":
            return [OrderRejected(**base, reason=str(er.get("r", "")), code="REJECTED")]
        if x in ("EXPIRED", "TRADE_PREVENTION"):
            return [OrderExpired(**base, venue_order_id=vid)]
        if x == "REPLACED":
            return []
    except (KeyError, ArithmeticError, ValueError) as exc:
        raise VenueMessageError(f"binance executionReport: unreadable ({exc!r})",
                                client_order_id=str(er.get("c", ""))) from exc
    raise VenueMessageError(f"binance executionReport: execution type {x!r} for {cid} is not "
                            "one qtd handles; check the order with the venue",
                            client_order_id=cid)


def trade_fill(
    row: dict[str, Any], cid: str, names: Names, bot: str, quote: str, ts_init: int,
) -> Fill:
    """A Fill from a ``GET /api/v3/myTrades`` row (``id`` is the stream's trade id ``t``).

    Raises:
        VenueMessageError: a documented field is missing.
    """
    try:
        return Fill(
            node=names.node, bot=bot, ts_event=int(row["time"]) * 10**6, ts_init=ts_init,
            client_order_id=cid, trade_id=str(row["id"]), account=names.account,
            venue=names.venue, symbol=row["symbol"],
            side=Side.BUY if row["isBuyer"] else Side.SELL, qty=Decimal(row["qty"]),
            price=Decimal(row["price"]), commission=Decimal(row.get("commission") or 0),
            commission_currency=row.get("commissionAsset") or quote, currency=quote,
            venue_order_id=str(row["orderId"]),
            liquidity="maker" if row.get("isMaker") else "taker",
        )
    except (KeyError, ArithmeticError, ValueError) as exc:
        raise VenueMessageError(f"binance myTrades: unreadable ({exc!r})") from exc
