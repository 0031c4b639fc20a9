"""Order lifecycle: deterministic client_order_id, order requests and the order state machine.

States: PENDING_SUBMIT → SUBMITTED → ACCEPTED → PARTIALLY_FILLED → FILLED, and the other
terminal states CANCELED / REJECTED / EXPIRED.

The state is *derived from facts* (submitted? acked? canceled? rejected? expired? filled
quantity) rather than from the last message, so handlers are idempotent and the result does
not depend on the order venue updates arrive in:

1. filled quantity >= order quantity → FILLED (a late cancel or ack never un-fills);
2. else a reject → REJECTED; a confirmed cancel → CANCELED; an expiry → EXPIRED
   (in that precedence if a venue ever sends several);
3. else some fill → PARTIALLY_FILLED; an ack → ACCEPTED; a submit → SUBMITTED;
   otherwise PENDING_SUBMIT.

A fill whose venue trade id was already counted for the order is a duplicate and changes
nothing. A fill for a client_order_id we never wrote an intent for is kept as an *orphan*,
flagged, and still counted in positions (it is real exposure); if the intent shows up later
the orphan is attached to it.

A long-running process bounds its memory with ``OrderBook(keep_terminal=N)``: only the N
orders that most recently reached a terminal state are kept; older terminal orders are
*retired* (dropped from memory, counted in ``forgotten``; the event store still holds them).
Open orders are never retired. A terminal order rarely hears from its venue again, but it can
(a fill that crossed a cancel, a venue re-sending a fill after a reconnect), so a holder that
has the store looks an unknown client_order_id up there: :meth:`OrderBook.retired_cid` says
when an update may be for a retired order, and :meth:`OrderBook.recall` rebuilds the order
from its stored events, after which the update is applied (or dropped as a duplicate) as for
any held order. Without that lookup (the leader), a late fill is counted as an orphan.
:meth:`OrderBook.stats` gives the figures (the agent's ``status`` reply, ``orders``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections import deque
from collections.abc import Iterable, Iterator, KeysView
from decimal import Decimal
from enum import StrEnum
from typing import Final, Protocol

import msgspec

from qtd.errors import ConfigError
from qtd.events import (
    Event,
    Fill,
    OrderAccepted,
    OrderCanceled,
    OrderCancelRequested,
    OrderExpired,
    OrderIntent,
    OrderRejected,
    OrderState,
    OrderSubmitted,
    OrderType,
    Side,
    TimeInForce,
)

_ZERO: Final = Decimal(0)
CID_MAX_LEN: Final = 36  # Binance newClientOrderId limit; Alpaca allows 128.
_CID_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


class OrderRequest(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a strategy (or an operator command) asks for; only the risk engine turns it
    into an :class:`~qtd.events.OrderIntent`.

    An immutable value that refers to nothing holding it (so never in a reference cycle):
    ``gc=False`` keeps it out of the cyclic GC, like the events (a bot keeps its requests).

    ``qty`` in instrument units (> 0), ``limit_price`` and ``decision_price`` in the quote
    currency; ``decision_price`` is the price the decision was based on (for slippage).
    """

    bot: str
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


def client_order_id(node: str, bot: str, incarnation: str, counter: int) -> str:
    """Deterministic client_order_id: ``<node8>.<bot8>.<hash6>.<counter>``, ≤ 36 chars.

    ``node8``/``bot8`` are the first 8 characters of the names (``[A-Za-z0-9_-]`` only, for
    people reading a venue's blotter); ``hash6`` is 6 base32 chars of
    BLAKE2b(node, bot, incarnation), so truncated names and a recreated store never collide;
    ``counter`` is the bot's order counter (decimal, ≥ 1), persisted with every intent.
    Characters fit Binance's ``^[.A-Z:/a-z0-9_-]{1,36}$`` and Alpaca's 128-char limit.

    Raises:
        ConfigError: counter < 1 or > 9,999,999,999 (the id would exceed 36 characters).
    """
    if not 1 <= counter <= 9_999_999_999:
        raise ConfigError(
            f"client_order_id counter={counter}: must be in 1..9999999999",
            field="counter", value=counter, rule="1 <= counter <= 9999999999",
        )
    cid = f"{_cid_prefix(node, bot, incarnation)}.{counter}"
    assert len(cid) <= CID_MAX_LEN
    return cid


@functools.lru_cache(maxsize=4096)
def _cid_prefix(node: str, bot: str, incarnation: str) -> str:
    digest = hashlib.blake2b(f"{node}\x00{bot}\x00{incarnation}".encode(), digest_size=5).digest()
    tag = base64.b32encode(digest).decode()[:6].lower()
    return f"{_CID_TOKEN.sub('', node)[:8]}.{_CID_TOKEN.sub('', bot)[:8]}.{tag}"


class ApplyResult(StrEnum):
    """What :meth:`OrderBook.apply` did with an event."""

    APPLIED = "APPLIED"  # new information, state may have changed
    DUPLICATE = "DUPLICATE"  # already known (same fact or same trade id)
    ORPHAN = "ORPHAN"  # fill (or update) for an order we have no intent for: flagged
    IGNORED = "IGNORED"  # not an order event


class OrderRecord(msgspec.Struct, gc=False):
    """Mutable projection of one order (build it with :meth:`of`). ``filled_qty`` in
    instrument units, ``avg_fill_price`` in the quote currency (``None`` before the first
    fill).

    It refers to nothing that refers back to it (its intent and values only), so it is kept
    out of the cyclic GC (``gc=False``): a backtest keeps every order's record, and a heap
    growing with the fills would make each full collection slower.
    """

    intent: OrderIntent
    cid: str
    bot: str
    account: str
    symbol: str
    side: Side
    ts_last: int
    submitted: bool = False
    accepted: bool = False
    canceled: bool = False
    rejected: bool = False
    expired: bool = False
    cancel_requested: bool = False
    reject_reason: str = ""
    venue_order_id: str = ""
    filled_qty: Decimal = _ZERO
    filled_cost: Decimal = _ZERO
    trades: dict[str, None] = msgspec.field(default_factory=dict)
    """Trade ids seen: a dict used as a set (see :attr:`trade_ids`)."""
    state: OrderState = OrderState.PENDING_SUBMIT
    terminal: bool = False
    """``state.is_terminal``, kept with it (read once per event)."""

    @classmethod
    def of(cls, intent: OrderIntent) -> OrderRecord:
        """A new record for ``intent`` (PENDING_SUBMIT, nothing filled)."""
        return cls(intent, intent.client_order_id, intent.bot, intent.account, intent.symbol,
                   intent.side, intent.ts_event)

    @property
    def qty(self) -> Decimal:
        return self.intent.qty

    @property
    def trade_ids(self) -> KeysView[str]:
        """The venue trade ids of the fills applied (a set-like view)."""
        return self.trades.keys()

    @property
    def leaves_qty(self) -> Decimal:
        """Quantity still open at the venue (0 once terminal)."""
        return _ZERO if self.terminal else self.intent.qty - self.filled_qty

    @property
    def avg_fill_price(self) -> Decimal | None:
        return self.filled_cost / self.filled_qty if self.filled_qty else None

    def derive_state(self) -> OrderState:
        """The state implied by the facts seen so far (see the module docstring)."""
        if self.filled_qty >= self.intent.qty:
            return OrderState.FILLED
        if self.rejected:
            return OrderState.REJECTED
        if self.canceled:
            return OrderState.CANCELED
        if self.expired:
            return OrderState.EXPIRED
        if self.filled_qty > 0:
            return OrderState.PARTIALLY_FILLED
        if self.accepted:
            return OrderState.ACCEPTED
        if self.submitted:
            return OrderState.SUBMITTED
        return OrderState.PENDING_SUBMIT

    def as_tuple(self) -> tuple[object, ...]:
        """Comparable summary (state, filled qty, cost, trade ids) for tests and reconciliation."""
        return (self.cid, self.state, self.filled_qty, self.filled_cost, frozenset(self.trade_ids))


class BookStats(msgspec.Struct, frozen=True, kw_only=True):
    """What an :class:`OrderBook` holds in memory (counts of orders).

    Attributes:
        held: orders in memory, open and terminal.
        terminal_held: terminal orders in memory (at most ``terminal_kept`` when bounded).
        terminal_kept: the bound on ``terminal_held`` (``None``: every order is kept).
        retired: terminal orders dropped from memory since the book was built (the store
            still holds them).
        recalled: retired orders rebuilt from the store for a late venue update.
    """

    held: int
    terminal_held: int
    terminal_kept: int | None
    retired: int
    recalled: int


class OrderBook:
    """All orders of one store (or of the fleet, on the leader), keyed by client_order_id.

    Args:
        keep_terminal: keep only this many of the orders that reached a terminal state most
            recently (module docstring); ``None`` (default) keeps every order.

    Raises:
        ValueError: ``keep_terminal`` < 0.
    """

    def __init__(self, keep_terminal: int | None = None) -> None:
        if keep_terminal is not None and keep_terminal < 0:
            raise ValueError(f"keep_terminal={keep_terminal!r}: must be >= 0 orders or None")
        self.orders: dict[str, OrderRecord] = {}
        self.orphan_fills: dict[str, list[Fill]] = {}
        self._orphan_trade_ids: set[tuple[str, str]] = set()
        self.keep_terminal = keep_terminal
        self.forgotten = 0
        self.recalled = 0
        self._terminal: deque[str] | None = None if keep_terminal is None else deque()

    def _rederive(self, rec: OrderRecord) -> None:
        """``rec`` took a new fact: derive its state; with ``keep_terminal``, queue it if it
        just became terminal and forget the oldest terminal orders beyond the bound."""
        before = rec.terminal
        rec.state = state = rec.derive_state()
        rec.terminal = now = state in _TERMINAL
        done = self._terminal
        if done is None or before or not now:
            return
        done.append(rec.cid)
        orders = self.orders
        while len(done) > self.keep_terminal:  # type: ignore[operator]
            old = orders.get(done.popleft())
            if old is not None and old.state.is_terminal:
                del orders[old.cid]
                self.forgotten += 1

    def get(self, cid: str) -> OrderRecord | None:
        return self.orders.get(cid)

    def stats(self) -> BookStats:
        """Orders held in memory and retired (:class:`BookStats`)."""
        done = self._terminal
        terminal = (len(done) if done is not None
                    else sum(1 for r in self.orders.values() if r.state.is_terminal))
        return BookStats(held=len(self.orders), terminal_held=terminal,
                         terminal_kept=self.keep_terminal, retired=self.forgotten,
                         recalled=self.recalled)

    def retired_cid(self, event: Event) -> str | None:
        """The client_order_id of a fill or status update for an order this book does not
        hold, once it has retired any order (so the update may be for a retired one); None
        otherwise. The caller looks the id up in its store and hands what it finds to
        :meth:`recall` before applying the update."""
        if not self.forgotten:
            return None
        kind = type(event)
        if kind is not Fill and kind not in _STATUS_FLAG:
            return None
        cid: str = event.client_order_id  # type: ignore[attr-defined]
        return None if cid in self.orders else cid

    def recall(self, events: Iterable[Event]) -> OrderRecord | None:
        """Rebuild a retired order from its stored events (its intent, status updates and
        fills, in seq order) so that a late update for it is applied once: a fill whose
        trade id was already counted is then a duplicate. The order counts as the one that
        reached a terminal state last (it is retired again after ``keep_terminal`` others).
        Orders only: positions already counted these fills.

        Returns:
            The record, or None when ``events`` hold no intent (never our order: the update
            stays an orphan) or the book already holds the order.
        """
        events = list(events)
        intent = next((e for e in events if isinstance(e, OrderIntent)), None)
        if intent is None or intent.client_order_id in self.orders:
            return None
        self._apply_intent(intent)
        for ev in events:
            if ev is not intent:
                self.apply(ev)
        self.recalled += 1
        return self.orders.get(intent.client_order_id)

    def apply(self, event: Event) -> ApplyResult:
        """Apply one order event idempotently (any order, any number of times)."""
        kind = type(event)
        if kind is Fill:
            return self._apply_fill(event)  # type: ignore[arg-type]
        if kind is OrderIntent:
            return self._apply_intent(event)  # type: ignore[arg-type]
        flag = _STATUS_FLAG.get(kind)
        if flag is None:
            return ApplyResult.IGNORED
        rec = self.orders.get(event.client_order_id)  # type: ignore[attr-defined]
        if rec is None:
            return ApplyResult.IGNORED if kind is OrderCancelRequested else ApplyResult.ORPHAN
        changed = not getattr(rec, flag)
        setattr(rec, flag, True)
        if kind is OrderAccepted:
            rec.submitted = True
            vid = event.venue_order_id  # type: ignore[attr-defined]
            if vid and not rec.venue_order_id:
                rec.venue_order_id, changed = vid, True
        elif kind is OrderRejected and not rec.reject_reason:
            rec.reject_reason = event.reason  # type: ignore[attr-defined]
        if not changed:
            return ApplyResult.DUPLICATE
        if event.ts_event > rec.ts_last:
            rec.ts_last = event.ts_event
        self._rederive(rec)
        return ApplyResult.APPLIED

    def _apply_intent(self, intent: OrderIntent) -> ApplyResult:
        if intent.client_order_id in self.orders:
            return ApplyResult.DUPLICATE
        rec = OrderRecord.of(intent)
        self.orders[rec.cid] = rec
        for fill in self.orphan_fills.pop(rec.cid, []):
            self._apply_fill(fill, adopting=True)
        return ApplyResult.APPLIED

    def _apply_fill(self, fill: Fill, adopting: bool = False) -> ApplyResult:
        rec = self.orders.get(fill.client_order_id)
        if rec is None:
            key = (fill.client_order_id, fill.trade_id)
            if key in self._orphan_trade_ids:
                return ApplyResult.DUPLICATE
            self._orphan_trade_ids.add(key)
            self.orphan_fills.setdefault(fill.client_order_id, []).append(fill)
            return ApplyResult.ORPHAN
        if adopting:
            self._orphan_trade_ids.discard((fill.client_order_id, fill.trade_id))
        trades = rec.trades
        if fill.trade_id in trades:
            return ApplyResult.DUPLICATE
        trades[fill.trade_id] = None
        rec.filled_qty += fill.qty
        rec.filled_cost += fill.qty * fill.price
        if fill.venue_order_id and not rec.venue_order_id:
            rec.venue_order_id = fill.venue_order_id
        if fill.ts_event > rec.ts_last:
            rec.ts_last = fill.ts_event
        self._rederive(rec)
        return ApplyResult.APPLIED

    def open_orders(
        self, *, bot: str | None = None, account: str | None = None, symbol: str | None = None
    ) -> Iterator[OrderRecord]:
        """Orders not yet in a terminal state, optionally filtered."""
        for rec in self.orders.values():
            if rec.terminal:
                continue
            if bot is not None and rec.bot != bot:
                continue
            if account is not None and rec.account != account:
                continue
            if symbol is not None and rec.symbol != symbol:
                continue
            yield rec


_TERMINAL: Final = frozenset(s for s in OrderState if s.is_terminal)

# Order status events and the OrderRecord fact each one sets.
_STATUS_FLAG: Final[dict[type[Event], str]] = {
    OrderSubmitted: "submitted",
    OrderAccepted: "accepted",
    OrderRejected: "rejected",
    OrderCanceled: "canceled",
    OrderExpired: "expired",
    OrderCancelRequested: "cancel_requested",
}


class _CounterSource(Protocol):
    node: str
    incarnation: str

    async def last_cid_counter(self, bot: str) -> int: ...


class ClientOrderIds:
    """Hands out client_order_ids per bot; the counter survives restarts because every
    :class:`~qtd.events.OrderIntent` stores the counter it used, and the first call for a bot
    resumes from the latest stored intent.

    A counter taken but never written (the intent append failed) may be handed out again
    after a restart; that is safe because no broker saw an order without a stored intent.

    Args:
        store: the event store (anything with ``node``, ``incarnation`` and
            ``last_cid_counter(bot)``).
    """

    def __init__(self, store: _CounterSource) -> None:
        self._store = store
        self._counters: dict[str, int] = {}
        self._prefixes: dict[str, str] = {}  # bot -> its ids' prefix (client_order_id)

    async def next(self, bot: str) -> tuple[str, int]:
        """Return ``(client_order_id, counter)`` for the bot's next order.

        Raises:
            ConfigError: the counter passed 9,999,999,999 (see :func:`client_order_id`).
        """
        last = self._counters.get(bot)
        if last is None:
            last = await self._store.last_cid_counter(bot)
        n = last + 1
        prefix = self._prefixes.get(bot)
        if prefix is None or n > 9_999_999_999:  # once per bot (and the range error)
            cid = client_order_id(self._store.node, bot, self._store.incarnation, n)
            self._prefixes[bot] = cid[:cid.rindex(".")]
        else:  # the same id, its prefix cached
            cid = f"{prefix}.{n}"
        self._counters[bot] = n
        return cid, n
