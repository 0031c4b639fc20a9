"""The pre-trade risk engine: the only way an order request becomes an order intent.

:meth:`RiskEngine.check` runs, cheapest first: input validation; the allow-list (a
``[symbols.<name>]`` table), known account and strategy; the restricted list; the trading
state of the order's four scopes (GLOBAL, ACCOUNT, STRATEGY, SYMBOL — REDUCING admits only
exposure-reducing orders, HALTED nothing); then every configured check of
:mod:`qtd.risk.checks` at every scope that configures it. A pass returns :class:`Approved`,
whose :meth:`Approved.bind` reserves the order's exposure and mints the single-use
:class:`~qtd.risk.tokens.SubmitToken` a broker adapter demands. A failure returns
:class:`Denied` carrying a :class:`~qtd.risk.checks.Denial` (risk says no with an event, not
an exception; :class:`qtd.execution.OrderRouter` stores it).

The engine keeps its own incremental state from events: call :meth:`RiskEngine.on_event`
with every order event and fill *after* applying it to the shared
:class:`~qtd.projections.Projections` (positions and PnL come from there), and
:meth:`RiskEngine.on_market_data` with every price. State changes and breaker trips are
queued as events; :meth:`RiskEngine.drain_events` hands them to the caller to store.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Final

from qtd.clock import Clock
from qtd.events import (
    Event,
    Fill,
    KillSwitch,
    OrderAccepted,
    OrderIntent,
    OrderSubmitted,
    OrderType,
    PositionTransfer,
    RiskBreach,
    Scope,
    Severity,
    Side,
    TradingState,
    TradingStateChanged,
)
from qtd.orders import OrderRequest
from qtd.projections import ZERO, Projections, TradingDay
from qtd.risk import checks as C
from qtd.risk.breakers import CircuitBreakers
from qtd.risk.config import RiskConfig
from qtd.risk.exposure import Exposure, MarkCell, OpenOrder, ScopeCounters, SpikeMeter
from qtd.risk.kill_file import in_scope
from qtd.risk.load import bind_profiles, validate_config
from qtd.risk.plan import Plan, build_plan
from qtd.risk.tokens import SubmitToken, TokenError, mint_cancel, mint_submit
from qtd.risk.trading_states import HALTED, REDUCING, TradingStates

FlattenKey = tuple[str, str, str, Side, Decimal]
_DUP_PRUNE_AT = 4096  # remembered (bot, account, symbol, side, qty) keys before pruning
# enum members bound once: reading ``Side.BUY`` goes through the enum's class attribute
# lookup on every evaluation (~0.1 µs on CPython 3.11), a module global does not
_BUY: Final = Side.BUY
_LIMIT: Final = OrderType.LIMIT
LEVEL_NAMES = {Scope.GLOBAL: "L1", Scope.ACCOUNT: "L2", Scope.STRATEGY: "L3", Scope.SYMBOL: "L4"}


class Approved:
    """A passed check. Call :meth:`bind` once with the order intent built from the request
    (``register`` is the engine's reservation of the intent's exposure, passed in by it)."""

    __slots__ = ("_bound", "_plan", "_register", "flatten", "request")
    approved = True

    def __init__(
        self, register: Callable[[OrderIntent, Plan | None], None], request: OrderRequest,
        plan: Plan, flatten: bool = False,
    ) -> None:
        self._register, self.request, self._plan, self._bound = register, request, plan, False
        self.flatten = flatten

    def bind(self, intent: OrderIntent) -> SubmitToken:
        """Reserve the order's exposure under ``intent.client_order_id`` and mint its token.

        Raises:
            TokenError: called twice, or ``intent`` differs from the approved request.
        """
        r = self.request
        if self._bound:
            raise TokenError("approval already bound to an intent", cid=intent.client_order_id)
        if (intent.bot, intent.account, intent.symbol, intent.side, intent.qty,
                intent.order_type, intent.limit_price, intent.reduce_only) != (
                r.bot, r.account, r.symbol, r.side, r.qty, r.order_type, r.limit_price,
                r.reduce_only):
            raise TokenError("intent differs from the approved request",
                             cid=intent.client_order_id)
        self._bound = True
        self._register(intent, self._plan)
        return mint_submit(intent)


class Denied:
    """A refused request: ``denial`` says which check, scope, limit and observed value."""

    __slots__ = ("denial", "now_ns", "request")
    approved = False

    def __init__(self, request: OrderRequest, denial: C.Denial, now_ns: int) -> None:
        self.request, self.denial, self.now_ns = request, denial, now_ns


class RiskEngine:
    """Pre-trade checks, trading states, circuit breakers and kill-switch state of one node.

    Args:
        cfg: validated risk config (re-validated here; see
            :func:`qtd.risk.load.validate_config`).
        projections: the shared orders/positions/PnL projections (read only here).
        clock: time for event-driven state (breaker windows, event timestamps), UTC ns.
        node: node name stamped on emitted events.

    Raises:
        ConfigError: the config breaks a field or cross-field rule.
    """

    def __init__(
        self, cfg: RiskConfig, projections: Projections, clock: Clock, node: str
    ) -> None:
        self.cfg = validate_config(cfg)
        self.proj, self.clock, self.node = projections, clock, node
        self.states = TradingStates(node)
        self.marks: dict[str, MarkCell] = {}
        self.exposures: dict[tuple[str, ...], Exposure] = {}
        self.books: dict[str, list[tuple[MarkCell, Exposure]]] = {}
        self.counters: dict[tuple[Scope, str], ScopeCounters] = {}
        self._position_keys: dict[tuple[str, str, str], tuple[Exposure, ...]] = {}
        self._order_counters: dict[tuple[str, str, str], tuple[ScopeCounters, ...]] = {}
        self.spikes: dict[str, SpikeMeter] = {}
        self.duplicates: dict[C.DupKey, int] = {}
        self.open: dict[str, OpenOrder] = {}
        self.day = TradingDay(cfg.trading_day_tz, cfg.trading_day_rollover)
        self._plans: dict[tuple[str, str, str], Plan] = {}
        self._flatten: Counter[FlattenKey] = Counter()
        self._events: list[Event] = []
        self._orders = projections.orders.orders  # client_order_id -> record (read only)
        self._handlers: dict[type[Event], Callable[[Any], None]] = {}  # see on_event
        self._bind = self._register  # bound once: each Approved reserves through it
        self.breakers = CircuitBreakers(
            self.cfg, self.states, projections, self.marks, self._events.append, node
        )

    def bind_profiles(self, profiles: Mapping[str, str]) -> None:
        """Give each bot (``bot -> risk profile``) its profile's ``[strategies.<profile>]``
        limits, as admission checked them (:func:`qtd.risk.load.bind_profiles`). Call it
        before the bots send orders; cached check plans are rebuilt."""
        self.cfg = validate_config(bind_profiles(self.cfg, profiles))
        self._plans.clear()

    # --- the check ------------------------------------------------------------------------

    def check(self, request: OrderRequest, now_ns: int) -> Approved | Denied:
        """Run every pre-trade check on ``request`` at ``now_ns`` (UTC ns).

        Returns:
            :class:`Approved` (rate, day and duplicate counters already count it) or
            :class:`Denied` (nothing recorded, except a trip the denial names).
        """
        bad = C.validate_request(request)
        if bad is not None:
            return self._deny(request, bad, now_ns)
        plan = self._plans.get((request.bot, request.account, request.symbol))
        if plan is None:
            built = build_plan(self, request.bot, request.account, request.symbol)
            if isinstance(built, C.Denial):
                return self._deny(request, built, now_ns)
            plan = self._plans[(request.bot, request.account, request.symbol)] = built
        buy = request.side is _BUY
        if self._flatten and self._take_flatten(request):
            return self._check_flatten(request, plan, buy, now_ns)
        if plan.blocked is not None:
            return self._deny(request, plan.blocked, now_ns)
        reducing = plan.own.reduces(buy, request.qty)
        if self.states:
            denial = self._state_denial(request, reducing, now_ns)
            if denial is not None:
                return self._deny(request, denial, now_ns)
        mark = plan.mark
        price = request.limit_price if request.order_type is _LIMIT else mark.price
        if price is None:
            return self._deny(request, _no_data(request.symbol), now_ns)
        ctx = C.OrderContext(now_ns, buy, price, request.qty * price, reducing, mark,
                             self.day.label(now_ns))
        for chk in plan.checks:
            denial = chk(request, ctx)
            if denial is not None:
                return self._deny(request, denial, now_ns)
        plan.record(now_ns, ctx.day)
        dups = self.duplicates
        dups[(request.bot, request.account, request.symbol, buy, request.qty)] = now_ns
        if len(dups) > _DUP_PRUNE_AT:
            self._prune_duplicates(now_ns)
        return Approved(self._bind, request, plan)

    def _prune_duplicates(self, now_ns: int) -> None:
        floor = now_ns - int(self.cfg.global_.duplicate_window_s * 1_000_000_000)
        for key in [k for k, t in self.duplicates.items() if t < floor]:
            del self.duplicates[key]

    def _state_denial(self, req: OrderRequest, reducing: bool, now_ns: int) -> C.Denial | None:
        st, scope, key = self.states.effective(req.account, req.bot, req.symbol, now_ns)
        self._events.extend(self.states.take_expired())
        if st is HALTED or (st is REDUCING and not reducing):
            return C.Denial(
                check="trading_state", scope=scope, scope_key=key, limit=0.0, value=0.0,
                unit="", message=f"{scope.value}:{key} is {st.value}"
                + ("" if st is HALTED else "; only exposure-reducing orders are accepted"),
            )
        return None

    def _deny(self, req: OrderRequest, denial: C.Denial, now_ns: int) -> Denied:
        if denial.trip is not None:
            change = self.states.escalate(denial.scope, denial.scope_key, denial.trip,
                                          denial.message, now_ns)
            if change is not None:
                self._events.append(change)
        return Denied(req, denial, now_ns)

    def last_look(self, intent: OrderIntent, flatten: bool = False) -> C.Denial | None:
        """Re-check, just before the broker call, that no scope of an approved order was
        HALTED since its check (a kill switch while its intent was being stored). Kill-switch
        flatten orders are exempt."""
        if flatten or not self.states:
            return None
        st, scope, key = self.states.effective(intent.account, intent.bot, intent.symbol,
                                               self.clock.now_ns())
        if st is not HALTED:
            return None
        return C.Denial(check="trading_state", scope=scope, scope_key=key, limit=0.0,
                        value=0.0, unit="", message=f"{scope.value}:{key} HALTED before send")

    # --- flatten (kill switch) ------------------------------------------------------------

    def allow_flatten(self, request: OrderRequest) -> None:
        """Let one kill-switch flatten order through HALTED states and flow limits: it must
        still be a valid reduce-only MARKET order that only reduces the bot's position
        (orders already asked to cancel not counted)."""
        self._flatten[_fkey(request)] += 1

    def _take_flatten(self, req: OrderRequest) -> bool:
        key = _fkey(req)
        if not self._flatten.get(key):
            return False
        self._flatten[key] -= 1
        if not self._flatten[key]:
            del self._flatten[key]
        return True

    def _check_flatten(
        self, req: OrderRequest, plan: Plan, buy: bool, now_ns: int
    ) -> Approved | Denied:
        ok = (req.reduce_only and req.order_type is OrderType.MARKET
              and plan.own.reduces(buy, req.qty, ignore_canceling=True))
        if not ok:
            return self._deny(req, C.Denial(
                check="reduce_only", scope=Scope.STRATEGY, scope_key=req.bot, limit=0.0,
                value=float(req.qty), unit="units", field="reduce_only",
                message="a flatten must be a reduce-only MARKET order that only reduces",
            ), now_ns)
        plan.record(now_ns, self.day.label(now_ns))
        return Approved(self._bind, req, plan, flatten=True)

    # --- state from events ----------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Update engine state from an event already applied to the projections."""
        kind = type(event)
        handler = self._handlers.get(kind)
        if handler is None:
            handler = self._handlers[kind] = self._handler_for(kind)
        handler(event)

    def _handler_for(self, kind: type[Event]) -> Callable[[Any], None]:
        """What :meth:`on_event` does with events of class ``kind`` (resolved once per
        class: a table, not a chain of checks per event)."""
        if issubclass(kind, Fill):
            return self._on_fill
        if issubclass(kind, PositionTransfer):
            return self._on_transfer
        if issubclass(kind, OrderIntent):
            return self._on_intent
        if issubclass(kind, _NO_CHANGE):
            return _ignore
        if "client_order_id" in kind.__struct_fields__:
            return self._on_order_update
        return _ignore

    def _on_transfer(self, event: PositionTransfer) -> None:
        # a share of a position moved between two bot ids (no order): the bots'
        # exposures follow; the account's and the symbol's do not change
        self.exposures_of(event.from_bot, event.account, event.symbol).qty -= event.qty
        self.exposures_of(event.to_bot, event.account, event.symbol).qty += event.qty
        self.breakers.on_transfer(event.account, self.clock.now_ns())

    def _on_intent(self, event: OrderIntent) -> None:
        if event.client_order_id not in self.open:
            self._register(event, None)
        self._sync(event.client_order_id)

    def _on_order_update(self, event: Any) -> None:
        if event.client_order_id in self.open:
            self._sync(event.client_order_id)

    def restore(self, event: Event) -> None:
        """Rebuild engine state from one stored event on restart (replay, after the
        projections applied it): trading states (a HALTED scope stays HALTED across a
        restart), open orders and exposures, and the order counters behind the rate, per-day
        and cooldown checks (each intent counted at its ``ts_event``). Emits nothing."""
        if isinstance(event, TradingStateChanged):
            self.states.restore(event)
            return
        if isinstance(event, OrderIntent) and event.client_order_id not in self.open:
            day = self.day.label(event.ts_event)
            for c in self.order_counters(event.bot, event.account, event.symbol):
                c.record(event.ts_event, day)
        self.on_event(event)

    def on_market_data(self, symbol: str, price: Decimal, ts_ns: int) -> None:
        """New last trade or mid for ``symbol`` (quote currency) at ``ts_ns`` (UTC ns).
        Non-finite or non-positive prices and out-of-order ticks are ignored."""
        if not price.is_finite() or price <= 0:
            return
        mark = self.marks.get(symbol)
        if mark is None:
            mark = self.mark(symbol)
        if ts_ns < mark.ts_ns:
            return
        mark.price, mark.ts_ns = price, ts_ns
        self.breakers.on_mark(symbol, self.clock.now_ns())

    def on_broker_result(self, account: str, ok: bool) -> None:
        """Record one broker request outcome (for the broker error-rate breaker)."""
        self.breakers.on_broker_result(account, ok, self.clock.now_ns())

    def _on_fill(self, fill: Fill) -> None:
        mark = self.mark(fill.symbol)
        if fill.ts_event >= mark.ts_ns:
            mark.price, mark.ts_ns = fill.price, fill.ts_event
        dq = fill.qty if fill.side is _BUY else -fill.qty
        for exp in self.position_keys(fill.bot, fill.account, fill.symbol):
            exp.qty += dq
        self._sync(fill.client_order_id)
        self.breakers.on_fill(fill, self.clock.now_ns())

    def _register(self, intent: OrderIntent, plan: Plan | None) -> None:
        exps = self.position_keys(intent.bot, intent.account, intent.symbol)
        cnts = self.order_counters(intent.bot, intent.account, intent.symbol)
        o = OpenOrder(intent.bot, intent.account, intent.symbol, intent.side is _BUY,
                      intent.qty, exps, cnts)
        for e in exps:
            e.add_open(o.buy, o.leaves, False)
        for c in cnts:
            c.open_orders += 1
        self.open[intent.client_order_id] = o

    def _sync(self, cid: str) -> None:
        o = self.open.get(cid)
        if o is None:
            return
        rec = self._orders.get(cid)
        # The projections apply every event before the engine, so an order they no longer
        # hold was retired from memory: it is terminal (qtd.orders, keep_terminal). On a
        # restart that is every done order beyond the bound.
        if rec is None:
            done, leaves, canceling = True, ZERO, False
        else:
            done, canceling = rec.terminal, rec.cancel_requested
            leaves = ZERO if done else rec.intent.qty - rec.filled_qty
        if canceling == o.canceling:
            if leaves != o.leaves:  # e.g. a fill: one step per exposure by the difference
                delta = leaves - o.leaves
                for e in o.exposures:
                    e.add_open(o.buy, delta, canceling)
                o.leaves = leaves
        else:  # asked to cancel: the leaves move between the open and the canceling sums
            for e in o.exposures:
                e.add_open(o.buy, -o.leaves, o.canceling)
                e.add_open(o.buy, leaves, canceling)
            o.leaves, o.canceling = leaves, canceling
        if done:
            del self.open[cid]
            for c in o.counters:
                c.open_orders -= 1

    # --- state cells (shared with plans) --------------------------------------------------

    def mark(self, symbol: str) -> MarkCell:
        """The symbol's last-price cell (created empty on first use)."""
        cell = self.marks.get(symbol)
        if cell is None:
            cell = self.marks[symbol] = MarkCell()
        return cell

    def position_keys(self, bot: str, account: str, symbol: str) -> tuple[Exposure, ...]:
        """Exposures of (bot, account, symbol), (account, symbol) and (symbol)."""
        cached = self._position_keys.get((bot, account, symbol))
        if cached is not None:  # cells are created once and never replaced
            return cached
        out = []
        for key in (("B", bot, account, symbol), ("A", account, symbol), ("Y", symbol)):
            exp = self.exposures.get(key)
            if exp is None:
                exp = self.exposures[key] = Exposure()
                if key[0] == "B":
                    self.books.setdefault(bot, []).append((self.mark(symbol), exp))
            out.append(exp)
        cells = self._position_keys[(bot, account, symbol)] = tuple(out)
        return cells

    def order_counters(self, bot: str, account: str, symbol: str
                       ) -> tuple[ScopeCounters, ...]:
        """Order counters an order of (bot, account, symbol) counts in: GLOBAL, its account,
        strategy and symbol (created on first use)."""
        cached = self._order_counters.get((bot, account, symbol))
        if cached is None:
            cached = self._order_counters[(bot, account, symbol)] = tuple(
                self.counter(s, k) for s, k in ((Scope.GLOBAL, ""), (Scope.ACCOUNT, account),
                                                (Scope.STRATEGY, bot), (Scope.SYMBOL, symbol)))
        return cached

    def exposures_of(self, bot: str, account: str, symbol: str) -> Exposure:
        """The (bot, account, symbol) exposure (created with its siblings on first use)."""
        return self.position_keys(bot, account, symbol)[0]

    def counter(self, scope: Scope, key: str) -> ScopeCounters:
        """Order counters of one scope key (created on first use)."""
        c = self.counters.get((scope, key))
        if c is None:
            c = self.counters[(scope, key)] = ScopeCounters()
        return c

    # --- operator actions and outputs -----------------------------------------------------

    def trip(
        self, scope: Scope, key: str, state: TradingState, reason: str, *, check: str,
        severity: Severity, value: float = 1.0,
    ) -> None:
        """Move a scope to ``state`` because of an operational fault (e.g. a venue ban):
        emits a RiskBreach (``check``, ``severity``) and the TradingStateChanged. Like every
        HALTED state, only an operator resumes it."""
        now = self.clock.now_ns()
        change = self.states.escalate(scope, key, state, reason, now)
        self._events.append(RiskBreach(
            node=self.node, ts_event=now, ts_init=now, check=check, scope=scope,
            scope_key=key, limit=0.0, value=value, unit="", severity=severity,
            action=state.value.lower(), message=reason,
        ))
        if change is not None:
            self._events.append(change)

    def halt(
        self, scope: Scope, key: str, reason: str, *, operator: str = "", source: str = "cli",
        flatten: bool = False,
    ) -> list[str]:
        """Kill switch: move the scope to HALTED now and return the client_order_ids of its
        open orders (the caller cancels them). Emits KillSwitch, a P1 RiskBreach and
        TradingStateChanged."""
        now = self.clock.now_ns()
        change = self.states.escalate(scope, key, HALTED, f"kill switch: {reason}", now,
                                      operator=operator)
        self._events.append(KillSwitch(
            node=self.node, ts_event=now, ts_init=now, scope=scope, scope_key=key, active=True,
            reason=reason, flatten=flatten, operator=operator, source=source,
        ))
        self._events.append(RiskBreach(
            node=self.node, bot=key if scope is Scope.STRATEGY else "", ts_event=now,
            ts_init=now, check="kill_switch", scope=scope, scope_key=key, limit=0.0, value=1.0,
            unit="", severity=Severity.P1, action="halted",
            message=f"kill switch {LEVEL_NAMES[scope]} {scope.value}:{key} by "
                    f"{operator or source}: {reason}",
        ))
        if change is not None:
            self._events.append(change)
        return [cid for cid, o in self.open.items()
                if in_scope(scope, key, o.bot, o.account, o.symbol)]

    def resume(
        self, scope: Scope, key: str, operator: str, reason: str,
        state: TradingState = TradingState.ACTIVE,
    ) -> TradingStateChanged | None:
        """Operator action: lift a scope to ``state`` (default ACTIVE).

        Raises:
            ConfigError: empty operator or reason.
        """
        change = self.states.resume(scope, key, operator, reason, self.clock.now_ns(), state)
        if change is not None:
            self._events.append(change)
        return change

    def cancel_token(self, cid: str) -> SubmitToken:
        """Mint a cancel token (cancels only reduce risk, so every cancel is allowed)."""
        return mint_cancel(cid)

    def has_events(self) -> bool:
        """Whether :meth:`drain_events` would return anything (a cheap check, no copy)."""
        return bool(self._events) or self.states.has_expired()

    def drain_events(self) -> list[Event]:
        """State changes, breaker breaches and kill-switch events queued since the last call."""
        events = self._events  # the same list object always: the breakers hold its append
        expired = self.states.take_expired()
        if expired:
            events.extend(expired)
        elif not events:
            return []
        out = events[:]
        events.clear()
        return out


# A submission's record and its venue ack never change an order's leaves, its terminal
# state or its cancel request (qtd.orders derives those from fills, rejects, cancels and
# expiries): the engine has nothing to update for them.
_NO_CHANGE: Final = (OrderSubmitted, OrderAccepted)


def _ignore(event: Event) -> None:
    """An event that changes no engine state."""


def _fkey(req: OrderRequest) -> FlattenKey:
    return (req.bot, req.account, req.symbol, req.side, req.qty)


def _no_data(symbol: str) -> C.Denial:
    return C.Denial(
        check="stale_data", scope=Scope.SYMBOL, scope_key=symbol, limit=0.0,
        value=float("inf"), unit="s", message=f"no market data for {symbol}: no reference price",
    )
