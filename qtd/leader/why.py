"""Why is a bot halted: its effective state and the causes, from what reached the leader.

The leader learns what holds each agent's scopes from the agents' stored events (ingested
in order, and replayed from fleet.db at start), in :class:`WhyBook`:

* a :class:`~qtd.events.TradingStateChanged` says a scope of an agent (GLOBAL, ACCOUNT,
  STRATEGY, SYMBOL) entered a state, since ``ts_event``, with its reason and operator;
* a :class:`~qtd.events.RiskBreach` whose action is not ``deny`` says what tripped it
  (``check``, ``value`` against ``limit`` in ``unit``): every agent stores the breach just
  before the state change it causes, so the last one on a scope since it was ACTIVE is the
  cause of the scope's state;
* a store-fault or store-behind page (a RiskBreach on the agent's heartbeat subject: its
  store cannot carry it) holds the agent's GLOBAL scope until that scope is ACTIVE again.

A bot's **effective state** is the most restrictive (ACTIVE < REDUCING < STOPPED < HALTED)
of: each of the leader's active kills that covers it (GLOBAL; STRATEGY its name; ACCOUNT
one of its accounts; SYMBOL one of its symbols), each of its agent's scopes that covers it
(the node's GLOBAL scope, shown as ``NODE``/node, and the ACCOUNT, STRATEGY and SYMBOL
scopes), its agent's storage page, the state its agent last reported for it (with the scope
that sets it, or its runner), and the state its node's heartbeat reports. A state that only
the agent reports, whose cause has not reached the leader yet, has kind ``agent``.
"""

from __future__ import annotations

from collections.abc import Iterable

from qtd.events import (
    OrderDenied,
    PnLSnapshot,
    RiskBreach,
    Scope,
    TradingState,
    TradingStateChanged,
)
from qtd.fleetsnapshot import RANK, ActiveKill, Cause, DenyCount, ScopeState
from qtd.risk.kill_file import in_scope

_KIND_ORDER = ("kill", "storage", "breaker", "operator", "failsafe", "runner", "agent")
_STORAGE = frozenset({"store_fault", "store_behind"})
ScopeKey = tuple[str, str, str]  # node, scope, key


class _Held:
    """A scope of one agent that is not ACTIVE, and what put it there."""

    __slots__ = ("breach", "change")

    def __init__(self, change: TradingStateChanged, breach: RiskBreach | None) -> None:
        self.change, self.breach = change, breach


class WhyBook:
    """What holds each agent's scopes (module docstring), fed every ingested event."""

    def __init__(self) -> None:
        self.held: dict[ScopeKey, _Held] = {}
        self.breaches: dict[ScopeKey, RiskBreach] = {}  # not yet followed by its change
        self.pages: dict[str, RiskBreach] = {}  # node -> storage page
        self.denied: dict[tuple[str, str], dict[str, int]] = {}  # (node, bot) -> check -> n

    def on_event(self, ev: TradingStateChanged | RiskBreach) -> None:
        """Apply one agent event (other event types are the caller's to skip)."""
        key = (ev.node, ev.scope.value, ev.scope_key)
        if isinstance(ev, RiskBreach):
            if ev.action != "deny":
                self.breaches[key] = ev
            return
        breach = self.breaches.pop(key, None)
        if ev.new is TradingState.ACTIVE:
            self.held.pop(key, None)
            if ev.scope is Scope.GLOBAL:
                self.pages.pop(ev.node, None)
        else:
            self.held[key] = _Held(ev, breach)

    def on_page(self, breach: RiskBreach) -> None:
        """An agent's storage page (core NATS, on its heartbeat subject: its store cannot
        write, or is behind the stream): its GLOBAL scope is held until ACTIVE again."""
        if breach.check in _STORAGE:
            self.pages[breach.node] = breach

    def on_denied(self, ev: OrderDenied) -> None:
        """Count one denial of the bot by its check."""
        checks = self.denied.setdefault((ev.node, ev.bot), {})
        checks[ev.check] = checks.get(ev.check, 0) + 1

    def deny_reasons(self, bot_key: tuple[str, str]) -> list[DenyCount]:
        """The bot's denials by check, most frequent first."""
        return [DenyCount(check=c, count=n) for c, n in sorted(
            self.denied.get(bot_key, {}).items(), key=lambda x: (-x[1], x[0]))]

    def scope_causes(self, node: str, scopes: Iterable[tuple[Scope, str]]) -> list[Cause]:
        """Causes held on ``node`` for these agent scopes, and its storage page."""
        out = [_held_cause(node, h) for sk in scopes
               if (h := self.held.get((node, sk[0].value, sk[1]))) is not None]
        page = self.pages.get(node)
        if page is not None:
            out.append(Cause(kind="storage", state="HALTED", scope="NODE", key=node, node=node,
                             check=page.check, value=page.value, limit=page.limit,
                             unit=page.unit, reason=page.message, since_ns=page.ts_event))
        return out

    def states(self, kills: list[ActiveKill], node_states: dict[str, str]) -> list[ScopeState]:
        """The most restrictive state per scope over the fleet (``ScopeState``)."""
        worst: dict[tuple[str, str], str] = {("GLOBAL", ""): "ACTIVE"}

        def put(scope: str, key: str, state: str) -> None:
            if RANK.get(state, 0) > RANK.get(worst.get((scope, key), "ACTIVE"), 0):
                worst[(scope, key)] = state

        for k in kills:
            put(k.scope, k.key, "HALTED")
        for (node, scope, key), h in self.held.items():
            put(*(("NODE", node) if scope == "GLOBAL" else (scope, key)), h.change.new.value)
        for node in self.pages:
            put("NODE", node, "HALTED")
        for node, state in node_states.items():
            put("NODE", node, state)
        return [ScopeState(scope=s, key=k, state=v) for (s, k), v in sorted(worst.items())]


def _held_cause(node: str, h: _Held) -> Cause:
    c, b = h.change, h.breach
    scope, key = ("NODE", node) if c.scope is Scope.GLOBAL else (c.scope.value, c.scope_key)
    kind = ("operator" if c.operator and c.operator != "failsafe" else
            "failsafe" if c.operator == "failsafe" else "agent") if b is None else \
        "kill" if b.check == "kill_switch" else "storage" if b.check in _STORAGE else "breaker"
    return Cause(kind=kind, state=c.new.value, scope=scope, key=key, node=node,
                 check="" if b is None else b.check,
                 value=None if b is None or kind == "kill" else b.value,
                 limit=None if b is None or kind == "kill" else b.limit,
                 unit="" if b is None else b.unit, operator=c.operator, reason=c.reason,
                 since_ns=c.ts_event)


def covers(kill: ActiveKill, bot: str, accounts: Iterable[str], symbols: Iterable[str]
           ) -> bool:
    """Whether one of the leader's kills covers the bot (:func:`qtd.risk.kill_file.in_scope` on
    each of its accounts and symbols; a scope this leader does not know covers it: when
    unsure, say halted)."""
    try:
        scope = Scope(kill.scope)
    except ValueError:
        return True
    return any(in_scope(scope, kill.key, bot, a, s)
               for a in (list(accounts) or [""]) for s in (list(symbols) or [""]))


def kill_cause(k: ActiveKill) -> Cause:
    """A cause for one active kill of the leader's set."""
    return Cause(kind="kill", state="HALTED", scope=k.scope, key=k.key, kill_id=k.kill_id,
                 operator=k.operator or k.source, reason=k.reason, since_ns=k.ts_ns)


def reported_cause(rep: PnLSnapshot, found: list[Cause]) -> Cause | None:
    """A cause for the state the bot's agent reports, unless ``found`` already explains it
    (a cause imposing that state on the scope the agent names, or on any scope when the
    agent does not name one)."""
    state = rep.state
    if RANK.get(state, 0) == 0:
        return None
    if rep.state_scope == "RUNNER":
        return Cause(kind="runner", state=state, scope="RUNNER", key=rep.bot, node=rep.node,
                     reason=rep.state_reason)
    scope = "NODE" if rep.state_scope == "GLOBAL" else rep.state_scope
    key = rep.node if scope == "NODE" else rep.state_key
    for c in found:
        if c.state == state and (not scope or (c.scope, c.key) == (scope, key)
                                 or (scope == "NODE" and c.scope == "GLOBAL")):
            return None
    return Cause(kind="agent", state=state, scope=scope, key=key, node=rep.node,
                 reason=f"its agent reports {state}" + (f" by {scope} {key}" if scope else "")
                 + "; the cause has not reached the leader yet")


def node_cause(node: str, state: str, found: list[Cause]) -> Cause | None:
    """A cause for the state the node's heartbeat reports, unless ``found`` explains it."""
    if RANK.get(state, 0) == 0 or any(c.scope in ("NODE", "GLOBAL") and c.state == state
                                      for c in found):
        return None
    return Cause(kind="agent", state=state, scope="NODE", key=node, node=node,
                 reason=f"node {node} reports {state}; the cause has not reached the leader yet")


def explain(book: WhyBook, kills: list[ActiveKill], bot_key: tuple[str, str],
            accounts: list[str], symbols: set[str], rep: PnLSnapshot | None, node_state: str
            ) -> tuple[str, list[Cause], int]:
    """A bot's effective state, causes and since (:func:`effective`) from every source of
    the module docstring; ``node_state`` is its node's heartbeat state ("" when down)."""
    node, bot = bot_key
    symbols = symbols - {""}
    if rep is not None and rep.state_scope == "SYMBOL":
        symbols.add(rep.state_key)
    causes = [kill_cause(k) for k in kills if covers(k, bot, accounts, symbols)]
    causes += book.scope_causes(node, [
        (Scope.GLOBAL, ""), (Scope.STRATEGY, bot), *((Scope.ACCOUNT, a) for a in accounts),
        *((Scope.SYMBOL, s) for s in sorted(symbols))])
    extra = [reported_cause(rep, causes) if rep is not None else None,
             node_cause(node, node_state, causes)]
    causes += [c for c in extra if c is not None]
    return effective(causes, (rep.state if rep is not None else "") or node_state)


def effective(causes: list[Cause], reported: str) -> tuple[str, list[Cause], int]:
    """The effective state, the causes (those imposing it first, by kind then age) and
    since when (the oldest of those, UTC ns; 0 when unknown or ACTIVE). Agent causes that
    only repeat a kill of the leader's set (same scope and key) are dropped."""
    kills = {(c.scope, c.key) for c in causes if c.kind == "kill" and not c.node}
    causes = [c for c in causes if not (c.kind == "kill" and c.node and (
        ("GLOBAL", "") if c.scope == "NODE" else (c.scope, c.key)) in kills)]
    state = max([reported or "UNKNOWN", *(c.state for c in causes)],
                key=lambda s: RANK.get(s, -1))
    if not causes and state == "UNKNOWN":
        return state, [], 0
    causes.sort(key=lambda c: (c.state != state, -RANK.get(c.state, 0),
                               _KIND_ORDER.index(c.kind) if c.kind in _KIND_ORDER else 99,
                               c.since_ns))
    since = min((c.since_ns for c in causes if c.state == state and c.since_ns), default=0)
    return state, causes, since
