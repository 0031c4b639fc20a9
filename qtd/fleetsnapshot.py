"""The fleet snapshot: what :meth:`qtd.leader.FleetView.snapshot` returns (msgspec Structs),
and how a bot's state reads (:func:`why_text`, :func:`since_text`) wherever it is shown
(status page, ``qtd up``). A low module: the leader builds snapshots, readers (the status
page's :class:`~qtd.web.protocol.FleetSource`, ``qtd up``) import only this.

Encode with ``msgspec.json.encode(snapshot)``. Money is in the fleet currency as ``float``
(display values; the exact Decimals stay in the projections), quantities in instrument
units, times in UTC ns, ages in seconds, utilisation as a fraction of the limit (1.0 = at
the limit).
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

RANK = {"ACTIVE": 0, "REDUCING": 1, "STOPPED": 2, "HALTED": 3}
"""Restrictiveness of a state; also ``qtd_bot_trading_state``'s value (UNKNOWN is -1)."""
_NS = 1_000_000_000


class Agg(msgspec.Struct, kw_only=True):
    """Aggregates of one node, bot, account or symbol (and of the fleet).

    Attributes:
        realized: realized PnL net of fees in the quote currency, all time.
        unrealized: open positions at the last mark.
        pnl_today: today's net realized PnL plus the open positions' unrealized PnL.
        gross_exposure: sum of |qty × mark|.
        net_exposure: sum of qty × mark (signed).
        orders: order intents sent; fills, rejects, errors (broker errors), denials
            (risk engine refusals): event counts.
        open_positions: non-flat positions.
    """

    realized: float = 0.0
    unrealized: float = 0.0
    pnl_today: float = 0.0
    gross_exposure: float = 0.0
    net_exposure: float = 0.0
    orders: int = 0
    fills: int = 0
    rejects: int = 0
    errors: int = 0
    denials: int = 0
    open_positions: int = 0


UNKNOWN_VERSION = "unknown"
"""The qtd version of a node whose heartbeats carry none (older than the field) or that
never sent one."""


class NodeView(msgspec.Struct, kw_only=True):
    """One agent: heartbeat age (None before the first), its reported state, aggregates,
    and the qtd ``version`` of its last heartbeat (:data:`UNKNOWN_VERSION` without one)."""

    node: str
    alive: bool
    heartbeat_age_s: float | None
    state: str
    bots_running: int
    agg: Agg
    version: str = UNKNOWN_VERSION


class VersionSkew(msgspec.Struct, kw_only=True):
    """The qtd versions the live agents run (:func:`version_skew`).

    Attributes:
        skew: more than one version among the live agents, or one of them reports none.
        nodes: each version (sorted) to the live agents running it (sorted);
            :data:`UNKNOWN_VERSION` for those whose heartbeats carry none.
        warning: the line the status page shows, naming who runs what ("" without skew).
    """

    skew: bool = False
    nodes: dict[str, list[str]] = {}
    warning: str = ""


def version_skew(nodes: list[NodeView]) -> VersionSkew:
    """Which qtd version each live agent of ``nodes`` runs, and whether they differ."""
    by_version: dict[str, list[str]] = {}
    for n in sorted(nodes, key=lambda n: n.node):
        if n.alive:
            by_version.setdefault(n.version, []).append(n.node)
    ordered = dict(sorted(by_version.items()))
    skew = len(ordered) > 1 or UNKNOWN_VERSION in ordered
    warning = "qtd version skew: " + "; ".join(
        f"{v} on {', '.join(ns)}" for v, ns in ordered.items()) if skew else ""
    return VersionSkew(skew=skew, nodes=ordered, warning=warning)


class LimitView(msgspec.Struct, kw_only=True):
    """One risk limit of a bot as its agent last reported it: ``used`` against ``limit`` in
    ``unit``, where ``scope``/``key`` configure it (see :class:`qtd.events.LimitUsage`)."""

    name: str
    scope: str
    key: str
    limit: float
    used: float
    unit: str
    utilisation: float


class Cause(msgspec.Struct, kw_only=True):
    """Why a bot is not ACTIVE (one of what holds it; see :mod:`qtd.leader.why`).

    Attributes:
        kind: ``kill`` (a kill switch), ``breaker`` (a circuit breaker or a pre-trade check
            that trips), ``storage`` (store fault or store behind the stream), ``operator``
            (a halt command), ``failsafe`` (no leader heartbeat), ``runner`` (the bot's
            runner: strategy error beyond its restarts, feed ended), ``agent`` (its agent
            reports the state; the cause has not reached the leader yet).
        state: what it imposes: ``REDUCING``, ``HALTED`` or ``STOPPED``.
        scope, key: where: ``GLOBAL``/"" (fleet-wide), ``NODE``/node (an agent's own GLOBAL
            scope), ``ACCOUNT``, ``STRATEGY``, ``SYMBOL`` with their key, ``RUNNER``/bot.
        node: the agent that holds it ("" for a kill of the leader's set).
        check, value, limit, unit: the breaker or check and its reading (``value`` against
            ``limit`` in ``unit``; None when it has none).
        kill_id, operator, reason: the kill's id, who, and why (reason also for the others).
        since_ns: when it started holding, UTC ns (0: unknown).
    """

    kind: str
    state: str
    scope: str
    key: str = ""
    node: str = ""
    check: str = ""
    value: float | None = None
    limit: float | None = None
    unit: str = ""
    kill_id: str = ""
    operator: str = ""
    reason: str = ""
    since_ns: int = 0


class DenyCount(msgspec.Struct, kw_only=True):
    """Orders of a bot the risk engine denied for one ``check`` (``OrderDenied.check``)."""

    check: str
    count: int


class BotView(msgspec.Struct, kw_only=True):
    """One bot on one node; ``last_activity_age_s`` since its last event or PnL tick;
    ``reported_pnl`` is the agent's own last PnL tick (realized + unrealized), if any.
    ``stage``, ``state`` and ``limits`` come from that tick ("" and [] before one).

    ``effective_state`` combines that state with the node's, the fleet's kills and every
    scope of its agent that covers the bot (ACTIVE, REDUCING, STOPPED, HALTED, or UNKNOWN
    before anything was heard); ``causes`` say why (the ones imposing the effective state
    first, see :class:`Cause`), ``since_ns`` since when (UTC ns, 0 when ACTIVE or unknown).
    ``deny_reasons``: denial counts by check, most frequent first."""

    node: str
    bot: str
    accounts: list[str]
    last_activity_age_s: float | None
    reported_pnl: float | None
    agg: Agg
    stage: str = ""
    state: str = ""
    limits: list[LimitView] = []
    effective_state: str = ""
    causes: list[Cause] = []
    since_ns: int = 0
    deny_reasons: list[DenyCount] = []


class AccountView(msgspec.Struct, kw_only=True):
    account: str
    agg: Agg


class SymbolView(msgspec.Struct, kw_only=True):
    """A symbol across the fleet: net quantity, last mark, and the per-symbol cap's
    utilisation (None when that cap is off)."""

    symbol: str
    net_qty: float
    mark: float | None
    cap_utilisation: float | None
    agg: Agg


class PositionView(msgspec.Struct, kw_only=True):
    node: str
    bot: str
    account: str
    symbol: str
    qty: float
    avg_price: float
    mark: float | None
    notional: float
    realized: float
    unrealized: float


class CapOverrideView(msgspec.Struct, kw_only=True):
    """An operator's raise of a cap for one trading day (:class:`qtd.events.CapOverride`):
    who and why, the limit before it and the configured one, the day it holds, when it was
    raised (UTC ns)."""

    operator: str
    reason: str
    old_limit: float
    configured_limit: float
    trading_day: str
    ts_ns: int


class CapView(msgspec.Struct, kw_only=True):
    """One fleet cap: ``value`` against ``limit`` (same ``unit``), the limit in force;
    ``key`` names the worst symbol or account for keyed caps; ``tripped`` once it fired a
    kill (until resume); ``override`` when an operator raised ``limit`` for today."""

    name: str
    limit: float
    value: float
    unit: str
    utilisation: float
    level: str
    key: str = ""
    tripped: bool = False
    override: CapOverrideView | None = None


class ActiveKill(msgspec.Struct, kw_only=True):
    """One active kill of the set; ``pending`` are agents not yet acknowledged,
    ``ack_latency_ms`` per acknowledging node (from the kill decision)."""

    kill_id: str = ""
    scope: str = ""
    key: str = ""
    reason: str = ""
    operator: str = ""
    source: str = ""
    ts_ns: int = 0
    acked: list[str] = []
    pending: list[str] = []
    ack_latency_ms: dict[str, float] = {}


class KillView(ActiveKill, kw_only=True):
    """The kill switch as the leader knows it: ``kills`` is every active kill (oldest
    first; each is released on its own); the inherited fields repeat the newest of them
    (or, when none is active, say who released the last one)."""

    active: bool = False
    kills: list[ActiveKill] = []


class AlertView(msgspec.Struct, kw_only=True):
    alert_id: str
    key: str
    severity: str
    status: str
    title: str
    node: str
    bot: str
    opened_ns: int
    limit: float | None = None
    value: float | None = None
    unit: str = ""
    operator: str = ""


class ScopeState(msgspec.Struct, kw_only=True):
    """The most restrictive state of one scope across the fleet: the leader's kills and
    every agent's scopes (``NODE``/node is an agent's own GLOBAL scope). Only scopes that
    are not ACTIVE are listed, besides ``GLOBAL``/"" which always is."""

    scope: str
    key: str
    state: str


class FleetSnapshot(msgspec.Struct, kw_only=True):
    """Everything the status page shows, at ``ts_ns``: every figure of it (totals, caps,
    bots) from one pass over the fleet view."""

    ts_ns: int
    trading_day: str
    currency: str
    capital: float
    equity: float
    peak_equity: float
    drawdown_pct: float
    totals: Agg
    nodes: list[NodeView]
    bots: list[BotView]
    accounts: list[AccountView]
    symbols: list[SymbolView]
    positions: list[PositionView]
    caps: list[CapView]
    kill: KillView
    alerts: list[AlertView]
    ingest: dict[str, int]
    states: list[ScopeState] = []
    qtd_versions: VersionSkew = msgspec.field(default_factory=VersionSkew)


def describe(c: Cause) -> str:
    """One line for an operator: ``breaker consecutive_losses 3 >= 3 trades (STRATEGY momo
    on node-a)``, ``kill k-1f2e GLOBAL by alice: test``, ``storage store_fault: ...``."""
    where = f"{c.scope} {c.key}".strip() + (f" on {c.node}" if c.node and c.scope != "NODE"
                                            else "")
    if c.kind == "kill":
        kid = f" {c.kill_id}" if c.kill_id else ""
        return f"kill{kid} {where} by {c.operator or '?'}: {c.reason}"
    if c.kind in ("breaker", "storage") and c.check:
        reading = "" if c.value is None or c.limit is None else \
            f" {c.value:g} vs limit {c.limit:g} {c.unit}".rstrip()
        return f"{c.kind} {c.check}{reading} ({where})"
    who = f" by {c.operator}" if c.operator else ""
    return f"{c.kind} {where}{who}: {c.reason}"


def since_text(since_ns: int, now_ns: int) -> str:
    """``since 08:41:03 UTC (5m 12s)``; "" when unknown."""
    if not since_ns:
        return ""
    age = max(0, (now_ns - since_ns) // _NS)
    h, rem = divmod(age, 3600)
    span = f"{h}h {rem // 60}m" if h else f"{rem // 60}m {rem % 60}s" if rem >= 60 else \
        f"{rem}s"
    at = datetime.fromtimestamp(since_ns / _NS, UTC).strftime("%H:%M:%S")
    return f"since {at} UTC ({span})"


def why_text(causes: list[Cause], state: str) -> str:
    """What the page and the table print beside a state: the causes imposing it, joined
    by `` · `` ("" when ACTIVE)."""
    return " · ".join(describe(c) for c in causes if c.state == state and state != "ACTIVE")
