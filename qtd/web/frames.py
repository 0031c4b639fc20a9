"""The live WebSocket frames of the status page, as named msgspec Structs.

``static/app.js`` reads every field by name (``f.bots[key].pnl``), so a field added here is
added there by name, never by position. Money in the fleet currency rounded to cents where
noted, utilisation in whole percent (:func:`qtd.web.botrow.pct`), times in ms since the
epoch. Encoded with ``msgspec.json``; the ``type`` field tells a :class:`Hello` from a
:class:`Tick`.
"""

from __future__ import annotations

import msgspec

Point = tuple[int, float]
"""A chart point: (ms since the epoch, PnL today)."""


class FleetFigures(msgspec.Struct, frozen=True, kw_only=True):
    """Fleet totals (``data-k="fleet.<name>"`` on the page; ``dd`` in percent)."""

    pnl: float
    realized: float
    unrealized: float
    equity: float
    gross: float
    dd: float


class BotFigures(msgspec.Struct, frozen=True, kw_only=True):
    """One bot's row (qtd.web.botrow computes the texts, as for the rendered page).

    Attributes:
        pnl, gross, total: PnL today, gross exposure, realized + unrealized (cents).
        pos: position text (``SPY +6 QQQ -5`` or ``flat``).
        stage, state: deploy stage; effective state (ACTIVE ... HALTED, UNKNOWN).
        layout: index into :attr:`Tick.layouts` (the labels of its limit bars).
        utils: utilisation of each limit, whole percent, in layout order.
        counts: ``orders/fills/rejects/denials``.
        why: why it is not ACTIVE and since when ("" when ACTIVE).
        denies: its top deny reasons.
    """

    pnl: float
    gross: float
    total: float
    pos: str
    stage: str
    state: str
    layout: int
    utils: list[int]
    counts: str
    why: str
    denies: str


class CapFigures(msgspec.Struct, frozen=True, kw_only=True):
    """A fleet cap, in the order of the page's rows: value (cents), use (%), its key."""

    value: float
    pct: int
    key: str


class NodeFigures(msgspec.Struct, frozen=True, kw_only=True):
    """An agent: heartbeat age (s, None: never), alive, state, bots running, PnL today."""

    age: float | None
    alive: bool
    state: str
    bots: int
    pnl: float


class SymbolFigures(msgspec.Struct, frozen=True, kw_only=True):
    """A symbol: net quantity, mark (None: none yet), net exposure (cents), cap use (%,
    None: no cap)."""

    qty: float
    mark: float | None
    net: float
    pct: int | None


class KillEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One active kill of the set (``who``: its operator, else its source)."""

    kill_id: str
    scope: str
    key: str
    reason: str
    who: str
    pending: list[str]


class KillFigures(msgspec.Struct, frozen=True, kw_only=True):
    """The kill state: the first kill's fields (as :class:`~qtd.fleetsnapshot.KillView`)
    and every active kill."""

    active: bool
    scope: str
    key: str
    reason: str
    operator: str
    pending: list[str]
    kills: list[KillEntry]


class AlertLine(msgspec.Struct, frozen=True, kw_only=True):
    """An open alert as the list shows it."""

    alert_id: str
    severity: str
    status: str
    title: str


class Tick(msgspec.Struct, frozen=True, kw_only=True, tag="tick", tag_field="type"):
    """Every figure of the overview from one snapshot (see :mod:`qtd.web.live`).

    Attributes:
        t: snapshot time, ms.
        fleet: fleet totals.
        counts: fleet ``orders / fills / rejects``.
        bots: per ``node/bot``.
        layouts: the limit bar labels of each distinct layout.
        caps: per fleet cap, in page order.
        nodes: per node.
        symbols: per symbol.
        kill: the kill state.
        alerts: open alerts.
    """

    t: int
    fleet: FleetFigures
    counts: str
    bots: dict[str, BotFigures]
    layouts: list[list[str]]
    caps: list[CapFigures]
    nodes: dict[str, NodeFigures]
    symbols: dict[str, SymbolFigures]
    kill: KillFigures
    alerts: list[AlertLine]


class Hello(msgspec.Struct, frozen=True, kw_only=True, tag="hello", tag_field="type"):
    """A connection's first frame: the pace, the fleet PnL history and (when the client
    asked with ``?bot=node/bot``) that bot's."""

    period_s: float
    fleet: list[Point]
    bot: str
    bot_history: list[Point]
