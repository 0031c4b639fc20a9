"""The vocabulary of qtd: every event stored or sent is a msgspec Struct defined here.

All events share :class:`Event`'s fields:

* ``node`` — the server (agent) or ``"leader"`` that produced it.
* ``bot`` — the bot (strategy instance) it concerns; ``""`` for node-level events.
* ``ts_event`` — when it happened (venue time for venue updates), UTC integer nanoseconds.
* ``ts_init`` — when qtd created the object, UTC integer nanoseconds.
* ``seq`` — the event store sequence number, ``0`` until the store assigns it on append.

Quantities are in the instrument's unit (shares, contracts or coins) and prices and money in
the quote currency, as :class:`decimal.Decimal` so that replays are bit-for-bit repeatable.
Events form one tagged union (:data:`AnyEvent`); the tag field is ``"kind"`` and its value is
the class name, which is also the store's ``kind`` column.
"""

from __future__ import annotations

import typing
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final, TypeAlias

import msgspec


class Side(StrEnum):
    """Order or fill direction."""

    BUY = "BUY"
    SELL = "SELL"

    @property
    def sign(self) -> int:
        """+1 for BUY, -1 for SELL."""
        return 1 if self is Side.BUY else -1

    @property
    def opposite(self) -> Side:
        """The other side."""
        return Side.SELL if self is Side.BUY else Side.BUY


class OrderType(StrEnum):
    """MARKET, LIMIT (at ``limit_price`` or better) or STOP (a market order once the price
    reaches ``stop_price``: buy stops at or above it, sell stops at or below it)."""

    MARKET = "MARKET"
    LIMIT = "LIMIT"
    STOP = "STOP"


class TimeInForce(StrEnum):
    DAY = "DAY"
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"


class OrderState(StrEnum):
    """Order lifecycle states (see :mod:`qtd.orders` for the precedence rules)."""

    PENDING_SUBMIT = "PENDING_SUBMIT"
    SUBMITTED = "SUBMITTED"
    ACCEPTED = "ACCEPTED"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"

    @property
    def is_terminal(self) -> bool:
        """True when no further fills can arrive for the order."""
        return self in _TERMINAL


_TERMINAL = frozenset(
    {OrderState.FILLED, OrderState.CANCELED, OrderState.REJECTED, OrderState.EXPIRED}
)


class TradingState(StrEnum):
    """Trading state of a scope: ACTIVE, REDUCING (only exposure-reducing orders), HALTED."""

    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"


class Scope(StrEnum):
    """Scope of a trading state or kill switch: L1 global, L2 account, L3 strategy, L4 symbol."""

    GLOBAL = "GLOBAL"
    ACCOUNT = "ACCOUNT"
    STRATEGY = "STRATEGY"
    SYMBOL = "SYMBOL"


class AckStage(StrEnum):
    """How far a kill has gone on an agent when it acknowledges it: ``in_force`` (the scope
    is HALTED in memory: from then on no order of it passes the risk engine) or ``durable``
    (the KillSwitch, TradingStateChanged and KillAck events are fsynced in its store)."""

    IN_FORCE = "in_force"
    DURABLE = "durable"


class Severity(StrEnum):
    """Paging severity. P1: kill switch / global halt; P2: account halted, venue down;
    P3: strategy halted, elevated errors; P4: informational."""

    P1 = "P1"
    P2 = "P2"
    P3 = "P3"
    P4 = "P4"


class Event(msgspec.Struct, frozen=True, kw_only=True, tag=True, tag_field="kind", gc=False):
    """Fields every event carries (see the module docstring for units).

    Events are immutable values that never refer back to anything holding them, so they
    cannot be part of a reference cycle: ``gc=False`` keeps them out of the cyclic garbage
    collector (msgspec "Disabling Garbage Collection"). A process holding many of them (the
    leader's projections, a backtest's fills) otherwise pays a full-heap scan per event
    held at every full collection, which grew to 0.7 s pauses in the leader's ingest.
    """

    node: str
    bot: str = ""
    ts_event: int
    ts_init: int
    seq: int = 0


# --- signals and orders --------------------------------------------------------------------


class Signal(Event, frozen=True):
    """A strategy's decision, before any order request (e.g. ``"cross_up"``, strength 1.0)."""

    symbol: str
    name: str
    strength: float = 0.0
    price: Decimal | None = None
    note: str = ""


class OrderIntent(Event, frozen=True):
    """Write-ahead record of an order that passed the risk engine, stored *before* the
    broker call. ``client_order_id`` is deterministic (see :mod:`qtd.orders`);
    ``cid_counter`` is the per-bot counter it was built from. ``decision_price`` is the price
    the strategy saw when it decided (for slippage)."""

    client_order_id: str
    cid_counter: int
    account: str
    venue: str
    symbol: str
    side: Side
    qty: Decimal
    order_type: OrderType = OrderType.MARKET
    limit_price: Decimal | None = None
    tif: TimeInForce = TimeInForce.DAY
    reduce_only: bool = False
    decision_price: Decimal | None = None
    reason: str = "strategy"
    stop_price: Decimal | None = None


class OrderDenied(Event, frozen=True):
    """The risk engine refused an order request; no intent was written, no broker saw it."""

    account: str
    symbol: str
    side: Side
    qty: Decimal
    check: str
    message: str
    limit_price: Decimal | None = None


class OrderSubmitted(Event, frozen=True):
    """The adapter handed the order to the venue (request sent, no ack yet).
    ``arrival_price`` is the symbol's last known price (quote currency) when the order was
    handed over: the arrival-price benchmark of :mod:`qtd.quality.execution_quality`."""

    client_order_id: str
    account: str = ""
    venue: str = ""
    arrival_price: Decimal | None = None


class OrderAccepted(Event, frozen=True):
    """The venue acknowledged the order (ack) and gave it ``venue_order_id``."""

    client_order_id: str
    venue_order_id: str = ""


class OrderRejected(Event, frozen=True):
    """The venue (or the adapter's pre-submit checks) refused the order."""

    client_order_id: str
    reason: str
    code: str = ""


class OrderCancelRequested(Event, frozen=True):
    """qtd asked the venue to cancel the order."""

    client_order_id: str
    reason: str = ""


class BrokerError(Event, frozen=True):
    """A broker adapter call raised (``operation`` ``"submit"`` or ``"cancel"``). For a submit
    the order's fate at the venue is unknown (a timeout may still have placed it): the stored
    intent stays open until reconciliation or a venue update settles it."""

    client_order_id: str
    account: str
    operation: str
    error_type: str
    message: str
    venue: str = ""


class OrderCanceled(Event, frozen=True):
    """The venue confirmed the cancel (the order may have been partially filled before)."""

    client_order_id: str
    venue_order_id: str = ""
    reason: str = ""


class OrderExpired(Event, frozen=True):
    """The order's time in force ran out at the venue."""

    client_order_id: str
    venue_order_id: str = ""


class Fill(Event, frozen=True):
    """One execution (a partial fill or the last fill of an order).

    ``trade_id`` is the venue's execution id: the same trade id is never counted twice.
    ``qty`` > 0 in instrument units, ``price`` in ``currency`` (the quote currency),
    ``commission`` in ``commission_currency`` (which may differ, e.g. BNB on Binance).
    """

    client_order_id: str
    trade_id: str
    account: str
    venue: str
    symbol: str
    side: Side
    qty: Decimal
    price: Decimal
    commission: Decimal = Decimal(0)
    commission_currency: str = "USD"
    currency: str = "USD"
    venue_order_id: str = ""
    liquidity: str = ""


# --- state snapshots -----------------------------------------------------------------------


class PositionSnapshot(Event, frozen=True):
    """A position as seen by ``source`` (``"local"`` projection or ``"broker"``).
    ``qty`` is signed (negative = short)."""

    account: str
    symbol: str
    qty: Decimal
    avg_price: Decimal
    source: str = "local"
    mark_price: Decimal | None = None


class LimitUsage(msgspec.Struct, frozen=True, kw_only=True):
    """One risk limit of a bot and how much of it is in use (carried on the bot's
    :class:`PnLSnapshot`). ``limit`` and ``used`` are in ``unit``: ``units`` (instrument
    units), ``currency`` (the account's quote currency), ``%``, ``orders`` or ``orders/s``.
    ``scope``/``key`` name where the limit is configured: ``STRATEGY``/bot,
    ``ACCOUNT``/account, ``SYMBOL``/symbol (the bot's most used symbol)."""

    name: str
    scope: Scope
    key: str
    limit: float
    used: float
    unit: str


class PnLSnapshot(Event, frozen=True):
    """PnL of a bot (``symbol == ""``) or of one of its symbols, in ``currency``.
    ``realized`` is net of fees paid in ``currency``; ``trading_day`` is ISO ``YYYY-MM-DD``.

    A bot-level snapshot from an agent also carries the bot's lifecycle ``stage`` (research,
    backtest, paper, shadow, live), its ``state`` (the most restrictive of its trading states
    and its runner: ACTIVE, REDUCING, HALTED or STOPPED) and its risk ``limits`` with their
    current use ("" and [] when not reported). When ``state`` is not ACTIVE, ``state_scope``
    and ``state_key`` name what sets it on the agent: a trading-state scope (``GLOBAL``,
    ``ACCOUNT``, ``STRATEGY``, ``SYMBOL`` and its key), or ``RUNNER`` (the bot's own runner:
    a strategy error beyond its restarts, or its feed ended) with ``state_reason`` saying
    why ("" from agents older than these fields: the leader then finds the scope itself)."""

    account: str
    realized: Decimal
    unrealized: Decimal
    fees: Decimal
    currency: str = "USD"
    symbol: str = ""
    trading_day: str = ""
    equity: Decimal | None = None
    stage: str = ""
    state: str = ""
    limits: list[LimitUsage] = []
    state_scope: str = ""
    state_key: str = ""
    state_reason: str = ""


class Heartbeat(Event, frozen=True):
    """Liveness of a process (``role`` is ``"agent"`` or ``"leader"``) and the qtd
    ``version`` it runs (``qtd.__version__``; ``""`` from a process older than the field,
    which the leader shows as ``unknown``)."""

    role: str
    state: TradingState = TradingState.ACTIVE
    bots_running: int = 0
    last_seq: int = 0
    version: str = ""


# --- risk and control ----------------------------------------------------------------------


class RiskBreach(Event, frozen=True):
    """A risk check or circuit breaker tripped: which ``check``, on which scope, the
    configured ``limit`` against the observed ``value`` (same unit, named in ``unit``)."""

    check: str
    scope: Scope
    scope_key: str
    limit: float
    value: float
    unit: str = ""
    severity: Severity = Severity.P3
    action: str = "deny"
    symbol: str = ""
    client_order_id: str = ""
    message: str = ""


class TradingStateChanged(Event, frozen=True):
    """A scope moved between ACTIVE / REDUCING / HALTED, with the reason and who did it."""

    scope: Scope
    scope_key: str
    old: TradingState
    new: TradingState
    reason: str
    operator: str = ""


class KillSwitch(Event, frozen=True):
    """Kill switch activated (``active``) or released, at ``scope`` (L1 GLOBAL .. L4 SYMBOL);
    ``kill_id`` names the activation (the kill set holds each until it is released)."""

    scope: Scope
    scope_key: str
    active: bool
    reason: str
    flatten: bool = False
    operator: str = ""
    source: str = "cli"
    kill_id: str = ""


class CapOverride(Event, frozen=True):
    """An operator raised a fleet cap's limit for the rest of one trading day (``qtd caps
    raise``, audited by the leader, ``node`` ``"leader"``); it lapses at that day's rollover.

    Attributes:
        cap: the cap's name (``daily_loss``, ``drawdown``, ``gross_exposure``,
            ``symbol_exposure``, ``error_rate``, ``order_spike``).
        cap_key: the symbol for ``symbol_exposure``; ``""`` for the others.
        old_limit: the limit in force before (configured or an earlier override), ``unit``.
        new_limit: the raised limit, ``unit`` (fleet currency, percent, or "x normal").
        unit: the cap's unit.
        trading_day: the trading day it applies to (``YYYY-MM-DD``, the fleet's
            :class:`~qtd.projections.TradingDay`).
        operator / reason: who and why (required).
    """

    cap: str
    old_limit: float
    new_limit: float
    unit: str
    trading_day: str
    operator: str
    reason: str
    cap_key: str = ""


class StrategyAdmitted(Event, frozen=True):
    """A (strategy source, params) pair passed admission; ``content_hash`` identifies it."""

    strategy: str
    content_hash: str
    source_hash: str
    params_hash: str
    params: dict[str, Any] = {}
    path: str = ""


class ParamsChanged(Event, frozen=True):
    """A params change for a running bot: ``accepted`` False keeps the old params running."""

    old_hash: str
    new_hash: str
    accepted: bool
    reason: str = ""


class StrategyError(Event, frozen=True):
    """User strategy code raised (or overran) in ``hook``; the bot alone is halted."""

    hook: str
    error_type: str
    message: str
    traceback: str = ""


class Reconciliation(Event, frozen=True):
    """The agent compared one account's stored orders and positions with its broker before
    any bot traded. ``resolved`` lists client_order_ids settled here (the venue had no such
    order: recorded as OrderCanceled); ``unknown_at_venue`` lists venue orders qtd never
    sent; ``position_mismatches`` lists ``"SYMBOL store=Q broker=Q"``. ``ok`` is False when
    something unexplained remains (the account then goes REDUCING with a P2 RiskBreach).
    ``trigger``: ``"start"``, ``"reconnect"`` or ``"periodic"``; ``fills_imported``: fills
    found in the venue's trade history that the store did not have."""

    account: str
    open_in_store: int = 0
    open_at_venue: int = 0
    resolved: list[str] = []
    unresolved: list[str] = []
    unknown_at_venue: list[str] = []
    position_mismatches: list[str] = []
    ok: bool = True
    trigger: str = "start"
    fills_imported: int = 0


class CommandAudit(Event, frozen=True):
    """An operator or leader command the agent received (``verb``: status, halt, resume,
    flatten, reload, kill, kill_release), who sent it, why, and what came of it."""

    verb: str
    operator: str = ""
    reason: str = ""
    scope: Scope | None = None
    scope_key: str = ""
    ok: bool = True
    result: str = ""
    source: str = "nats"


class KillAck(Event, frozen=True):
    """An agent applied a kill switch (``kill_id`` from the kill message): the resulting
    trading ``state`` of the scope and the client_order_ids it asked to cancel. Also
    published on core NATS ``<prefix>.ack.kill.<node>``.

    An agent publishes two per kill: ``stage`` :attr:`AckStage.IN_FORCE` the moment the
    scope is HALTED in memory (published only, never stored; ``canceled`` empty and
    ``flatten_orders`` 0: not issued yet), then :attr:`AckStage.DURABLE` once this event
    itself is stored (fsync) after the KillSwitch and TradingStateChanged events. The
    default ``durable`` is what an agent that predates ``stage`` meant by its single ack
    (sent after the same fsyncs); a reader that predates it ignores the field and takes the
    first ack, the in-force one."""

    kill_id: str
    scope: Scope
    scope_key: str
    reason: str
    state: TradingState
    canceled: list[str] = []
    flatten_orders: int = 0
    duplicate: bool = False
    stage: AckStage = AckStage.DURABLE


class Alert(Event, frozen=True):
    """A leader alert (page) changing ``status``: ``"open"`` (raised or escalated),
    ``"acked"`` (an operator acknowledged it) or ``"closed"`` (the condition recovered).
    ``alert_id`` is stable across the changes; ``key`` identifies the condition (e.g.
    ``"hb:node-a"``); ``limit`` and ``value`` are in ``unit``. The leader stores these in
    fleet.db as the audit trail of paging."""

    alert_id: str
    key: str
    severity: Severity
    status: str
    title: str
    trigger: str = ""
    limit: float | None = None
    value: float | None = None
    unit: str = ""
    symbol: str = ""
    message: str = ""
    operator: str = ""


class BotVersion(Event, frozen=True):
    """The version of a bot this node runs now (fleet deploys, :mod:`qtd.deploy`): stored
    at agent start for every bot and after every deployed version took effect.

    Attributes:
        version: deploy version number (1, 2, ...); 0 = a local config never deployed.
        content_hash: sha256 hex of strategy source + canonical params (admission's).
        stage: the bot's lifecycle stage (paper, shadow, live).
        how: ``"start"`` (admitted at agent start), ``"params"`` (params swapped at a bar
            boundary) or ``"restart"`` (new strategy source: bot restarted between bars).
    """

    version: int
    content_hash: str
    stage: str = ""
    how: str = ""


class DeployRefused(Event, frozen=True):
    """A deployed version this node refused (its own re-admission failed, or the change
    needs a restart): the old version keeps running. ``reason`` lists every problem."""

    version: int
    content_hash: str
    running_hash: str
    reason: str


class CanaryStep(Event, frozen=True):
    """One decision of a canary rollout of a deployed version (:mod:`qtd.agent.canary_ramps`):
    the candidate runs as the second runner ``canary_bot`` (``<bot>~canary``) with
    ``fraction`` of the bot's allocation; the incumbent keeps ``1 - fraction``.

    Attributes:
        action: ``start``, ``advance``, ``promote`` (the candidate became the bot's
            version) or ``rollback`` (the candidate stopped; its position flattened
            reduce-only; the incumbent has the whole allocation again).
        step: index of the ramp step (0 = the first share).
        fraction: the candidate's share after this decision (0.0 after a rollback).
        version / content_hash: the candidate (deploy version number, sha256 hex).
        running_hash: the incumbent's content hash.
        canary_bot: bot id of the candidate's runner (its orders, fills and PnL).
        sharpe: rolling Sharpe of the candidate's slice (None: not enough observations).
        drawdown: drawdown of the slice from its peak, fraction (0.10 = 10 %).
        realized / unrealized: the candidate's PnL so far, quote currency (``unrealized``
            net of the unrealized PnL of the positions it was given by
            :class:`PositionTransfer` at the incumbent's cost, so the sum is its own result).
        reason: why, in words.
    """

    action: str
    step: int
    fraction: float
    version: int
    content_hash: str
    running_hash: str
    canary_bot: str
    sharpe: float | None = None
    drawdown: float | None = None
    realized: float = 0.0
    unrealized: float = 0.0
    reason: str = ""


class PositionTransfer(Event, frozen=True):
    """An internal move of a position share between two bot ids of one beneficial owner on
    one account and symbol, without any order (a canary's ramp, promotion or rollback
    between ``<bot>`` and ``<bot>~canary``: :mod:`qtd.agent.canary_ramps`). Stored before it
    takes effect; :meth:`qtd.projections.Projections.apply` applies it.

    **Convention: transferred at the giver's average cost.** ``qty`` is the signed quantity
    taken from ``from_bot``'s position (same sign as that position, shares/contracts/coins)
    and ``cost`` the signed cost basis that goes with it (``cost(giver) × qty / qty(giver)``,
    the whole cost when the whole position moves), so ``price = cost / qty`` is the giver's
    average entry price (quote currency). The giver realizes nothing; the receiver adds
    ``qty`` and ``cost`` when flat or on the same side (realized PnL unchanged in total),
    and nets against the opposite side at ``price`` like a fill of the average-cost method
    otherwise (that part realizes the entry-price difference between the two). Total PnL
    (realized + mark × qty − cost) of the two bots together is exactly unchanged.

    Attributes:
        transfer_id: deterministic id (duplicates are applied once).
        reason: why, in words.
    """

    account: str = ""
    symbol: str = ""
    from_bot: str = ""
    to_bot: str = ""
    qty: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)
    price: Decimal = Decimal(0)
    currency: str = "USD"
    transfer_id: str = ""
    reason: str = ""


AnyEvent: TypeAlias = (
    Signal
    | OrderIntent
    | OrderDenied
    | OrderSubmitted
    | OrderAccepted
    | OrderRejected
    | OrderCancelRequested
    | OrderCanceled
    | BrokerError
    | OrderExpired
    | Fill
    | PositionSnapshot
    | PnLSnapshot
    | Heartbeat
    | RiskBreach
    | TradingStateChanged
    | KillSwitch
    | CapOverride
    | StrategyAdmitted
    | ParamsChanged
    | StrategyError
    | Reconciliation
    | CommandAudit
    | KillAck
    | Alert
    | BotVersion
    | DeployRefused
    | CanaryStep
    | PositionTransfer
)

EVENT_TYPES: tuple[type[Event], ...] = typing.get_args(AnyEvent)
KINDS: frozenset[str] = frozenset(t.__name__ for t in EVENT_TYPES)

_msgpack_encoder = msgspec.msgpack.Encoder(decimal_format="string")
_msgpack_decoder: msgspec.msgpack.Decoder[AnyEvent] = msgspec.msgpack.Decoder(AnyEvent)
_json_encoder = msgspec.json.Encoder(decimal_format="string")
_json_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)


def encode(event: Event) -> bytes:
    """Encode an event to msgpack bytes (the store's payload format)."""
    return _msgpack_encoder.encode(event)


def decode(data: bytes) -> AnyEvent:
    """Decode msgpack bytes written by :func:`encode`.

    Raises:
        msgspec.ValidationError: the bytes are not a known event (names the bad field).
        msgspec.DecodeError: the bytes are not msgpack.
    """
    return _msgpack_decoder.decode(data)


_msgpack_list_decoder: msgspec.msgpack.Decoder[list[AnyEvent]] = msgspec.msgpack.Decoder(
    list[AnyEvent]
)


def decode_many(payloads: list[bytes]) -> list[AnyEvent]:
    """Decode many :func:`encode` payloads in one call (framed as one msgpack array32).

    Raises:
        msgspec.ValidationError, msgspec.DecodeError: as :func:`decode`, for the first bad
            payload (the error names its array index).
    """
    header = b"\xdd" + len(payloads).to_bytes(4, "big")  # msgpack array32 (msgpack spec)
    return _msgpack_list_decoder.decode(header + b"".join(payloads))


def to_json(event: Event) -> bytes:
    """Encode an event as one JSON object (for NATS and ``qtd events --json``)."""
    return _json_encoder.encode(event)


DECODE_ERRORS: Final = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)
"""What decoding a message from the network can raise: not JSON/msgpack, a wrong or missing
field, or a JSON string that is not UTF-8 (msgspec raises ``UnicodeDecodeError`` for that,
not ``DecodeError``). Every handler of NATS, venue or HTTP input catches this tuple."""


def from_json(data: bytes | str) -> AnyEvent:
    """Decode one JSON event.

    Raises:
        msgspec.ValidationError: wrong or missing field; the message names the field path.
        msgspec.DecodeError: not JSON, or a string in it is not UTF-8 (which msgspec
            itself reports as UnicodeDecodeError).
    """
    try:
        return _json_decoder.decode(data)
    except UnicodeDecodeError as exc:
        raise msgspec.DecodeError(f"JSON is malformed: not UTF-8 ({exc})") from None
