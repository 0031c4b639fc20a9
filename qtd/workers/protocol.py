"""The messages between the agent and a strategy worker process (msgpack, length-prefixed).

The agent (parent) sends one request at a time and reads one :class:`Reply` per request; a
worker never speaks first. Every frame is a 4-byte big-endian length followed by a msgpack
body of at most :data:`MAX_FRAME` bytes.

* :class:`Load` — import an admitted strategy file for one bot (the worker checks the file
  still has the admitted bytes, :class:`StrategyRef`).
* :class:`Call` — run one hook (``__init__``, ``on_start``, ``on_bar``, ``on_trade``,
  ``on_fill``, ``on_stop``) with the bot's context state when it changed since the last call
  (:class:`CtxState`: the agent's context is the truth; the worker's is a replica).
* :class:`Swap` — new admitted params at a bar boundary (hot reload).
* :class:`Drop` — forget a bot (its runner ended).

Money amounts, prices and quantities travel as :class:`~decimal.Decimal` (msgpack strings),
so a worker's order requests are exact. Time is UTC integer nanoseconds.
"""

from __future__ import annotations

import struct
from decimal import Decimal
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta

from qtd.events import Fill
from qtd.feeds.bars import Bar, Trade
from qtd.orders import OrderRequest
from qtd.strategy import CancelAll

MAX_FRAME: Final = 64 * 1024 * 1024
"""Largest frame either side accepts, bytes (a bigger one is a protocol error)."""
HEADER: Final = struct.Struct(">I")
HOOKS: Final = ("__init__", "on_start", "on_bar", "on_trade", "on_fill", "on_stop")
MEMORY_EXIT: Final = 86
"""Exit status of a worker that ran out of its memory limit outside a hook."""


class StrategyRef(msgspec.Struct, frozen=True, kw_only=True):
    """An admitted strategy by reference: what a worker needs to import it, and to check
    that it imports what admission accepted. The agent never imports strategy code.

    Attributes:
        file: the strategy file (absolute path).
        source_hash: sha256 hex of the bytes admission read.
        strategy: the Strategy subclass name.
        params: the admitted params as JSON-able builtins (defaults filled in).
        content_hash: sha256 hex of source + canonical params JSON (``qtd.admit.rules``).
    """

    file: str
    source_hash: str
    strategy: str
    params: dict[str, Any]
    content_hash: str

    def same_code(self, other: StrategyRef) -> bool:
        """Same source bytes and class: a change of params only (swapped at a bar
        boundary, no restart)."""
        return self.source_hash == other.source_hash and self.strategy == other.strategy


class WorkerLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the agent runs strategy workers (agent config ``[workers]``).

    Attributes:
        group: ``"bot"`` (default: one worker process per bot — a stuck or killed worker
            halts that bot alone) or ``"account"`` (one per trading account: fewer
            processes; a worker killed for one bot halts every bot of that account, each with
            the reason).
        memory_mb: memory each worker may add to its address space beyond what it started
            with, MiB (RLIMIT_AS): past it allocations fail with ``MemoryError`` and the bot
            is halted with a ``StrategyError`` naming the limit.
        kill_grace_s: seconds between SIGTERM and SIGKILL for a worker being stopped.
        import_budget_s: wall-time budget of importing a strategy file in a worker, seconds.
        nice: CPU priority below the agent's (``man 2 nice``): a strategy busy on every core
            never starves the agent's risk engine, router or kill switch.
        preload: modules the worker template imports once (``numpy``, ``pandas``): every
            worker forked from it shares their memory pages instead of importing them again.
    """

    group: Literal["bot", "account"] = "bot"
    memory_mb: Annotated[int, Meta(ge=16)] = 1024
    kill_grace_s: Annotated[float, Meta(gt=0, le=10)] = 0.05
    import_budget_s: Annotated[float, Meta(gt=0, le=600)] = 5.0
    nice: Annotated[int, Meta(ge=0, le=19)] = 5
    preload: tuple[str, ...] = ()


class Spawn(msgspec.Struct, frozen=True, kw_only=True):
    """How the template starts one worker (JSON on the template's socket).

    Attributes:
        memory_mb / nice: as :class:`WorkerLimits`.
        protected: paths no strategy may open (the store, the kill file, credentials).
        isolate_network: move the worker into its own empty network namespace.
    """

    memory_mb: int
    nice: int = 0
    protected: tuple[str, ...] = ()
    isolate_network: bool = True


class PositionState(msgspec.Struct, frozen=True, array_like=True):
    """One position of the bot's context, as the agent's projections hold it."""

    symbol: str
    currency: str
    qty: Decimal
    cost: Decimal
    realized: Decimal
    fees: Decimal
    other_fees: dict[str, Decimal]
    last_price: Decimal | None
    fills: int


class CtxState(msgspec.Struct, frozen=True, array_like=True):
    """The bot's context state owned by the agent: positions, in-flight quantities (signed
    units), the canary share and lot, and marks (quote currency)."""

    positions: tuple[PositionState, ...]
    inflight: dict[str, Decimal]
    share: Decimal
    lot: Decimal
    marks: dict[str, Decimal]


class Load(msgspec.Struct, frozen=True, tag=True):
    """Import ``ref`` for one runner; ``handle`` names it in later requests."""

    handle: str
    bot: str
    account: str
    venue: str
    symbols: tuple[str, ...]
    currency: str
    ref: StrategyRef


class Call(msgspec.Struct, frozen=True, tag=True):
    handle: str
    hook: str
    now_ns: int
    state: CtxState | None = None
    bar: Bar | None = None
    trade: Trade | None = None
    fill: Fill | None = None


class Swap(msgspec.Struct, frozen=True, tag=True):
    handle: str
    params: dict[str, Any]


class Drop(msgspec.Struct, frozen=True, tag=True):
    handle: str


Request = Load | Call | Swap | Drop


class Out(msgspec.Struct, frozen=True, array_like=True):
    """One queued request of a hook, in order: an order request or a cancel."""

    order: OrderRequest | None = None
    cancel: CancelAll | None = None


class Failure(msgspec.Struct, frozen=True, array_like=True):
    """A hook that raised: hook name, exception type name, message, traceback text."""

    hook: str
    error_type: str
    message: str
    traceback: str = ""


class Reply(msgspec.Struct, frozen=True):
    """The answer to one request. ``outbox``/``inflight``/``targets`` are the context after
    the hook (a :class:`Call`); ``has_on_fill`` and ``sandbox`` (the limits the worker
    achieved, e.g. ``"nice +5; memory cap +1024 MiB; ..."``) answer a :class:`Load`."""

    outbox: list[Out] = []
    inflight: dict[str, Decimal] = {}
    targets: dict[str, Decimal] = {}
    failure: Failure | None = None
    has_on_fill: bool = True
    sandbox: str = ""


def frame(body: bytes) -> bytes:
    """``body`` with its 4-byte big-endian length in front."""
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    """The body length a header announces.

    Raises:
        ValueError: the length is over :data:`MAX_FRAME`.
    """
    n: int = HEADER.unpack(header)[0]
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes: over the {MAX_FRAME}-byte limit")
    return n
