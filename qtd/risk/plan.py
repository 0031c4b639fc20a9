"""Check plans: the list of enabled checks for one (bot, account, symbol), built once.

Limits come from four scopes (GLOBAL ``[global]``, ACCOUNT ``[accounts.<a>]``, STRATEGY
``[strategies.<bot>]``, SYMBOL ``[symbols.<s>]``). Per-order limits (qty, notional, collar,
data age) depend only on the order, so only the tightest of them can bind: one check holds
it and names its scope. Position limits are merged per exposure they read (GLOBAL and SYMBOL
both read the symbol's total). Flow limits (open orders, rate, trades per day, cooldown) keep
one row per scope, since each scope counts different orders. Each family of controls is one
callable (per-order, reduce-only, position, book, flow, spike, duplicate: at most 7 calls
per order) that walks its rows in scope order, so a denial is the one the first failing
limit gives. Check objects hold their limits (converted to Decimal / ns once) and references
to the state cells they read, so the hot path does no config or dict lookups.
"""

from __future__ import annotations

from decimal import Decimal
from types import FunctionType
from typing import TYPE_CHECKING, Any, Protocol

from qtd.events import Scope
from qtd.risk import checks as C
from qtd.risk.exposure import (
    NS,
    Cell,
    Exposure,
    MarkCell,
    ScopeCounters,
    SpikeMeter,
    record_approval,
)
from qtd.risk.scope_limits import Limits

if TYPE_CHECKING:
    from qtd.risk.config import RiskConfig

Check = Any  # a callable (OrderRequest, OrderContext) -> Denial | None
ScopeRow = tuple[Scope, str, Limits, Exposure, ScopeCounters]


class AccountEquity(Protocol):
    """Where a plan reads an account's equity (the engine's circuit breakers)."""

    def equity(self, account: str) -> Cell:
        """The account's current equity cell, currency."""
        ...


class PlanSource(Protocol):
    """What :func:`build_plan` reads from the risk engine: its config and the state cells
    the checks hold (created on first use, never replaced)."""

    @property
    def cfg(self) -> RiskConfig:
        """The bound risk config."""
        ...

    @property
    def breakers(self) -> AccountEquity:
        """Account equity, for % of equity limits."""
        ...

    @property
    def books(self) -> dict[str, list[tuple[MarkCell, Exposure]]]:
        """Bot -> its (mark, exposure) pairs, for gross / net notional."""
        ...

    @property
    def spikes(self) -> dict[str, SpikeMeter]:
        """Bot -> its order-spike meter (build_plan adds a missing one)."""
        ...

    @property
    def duplicates(self) -> dict[C.DupKey, int]:
        """Recently approved orders -> approval time, ns (for the duplicate check)."""
        ...

    def mark(self, symbol: str) -> MarkCell:
        """The symbol's last-price cell."""
        ...

    def position_keys(self, bot: str, account: str, symbol: str) -> tuple[Exposure, ...]:
        """Exposures of (bot, account, symbol), (account, symbol) and (symbol)."""
        ...

    def order_counters(self, bot: str, account: str, symbol: str
                       ) -> tuple[ScopeCounters, ...]:
        """GLOBAL, ACCOUNT, STRATEGY and SYMBOL order counters of such an order."""
        ...


class Plan:
    """Enabled checks and state cells for one (bot, account, symbol).

    Attributes:
        checks: the checks, cheapest first.
        blocked: a denial every order gets (restricted symbol), or None.
        own: the bot's exposure in the symbol (for reduce-only and REDUCING).
        mark: the symbol's last-price cell.
        counters: GLOBAL, ACCOUNT, STRATEGY and SYMBOL order counters.
    """

    __slots__ = ("blocked", "checks", "counters", "mark", "own", "spike")

    def __init__(
        self, checks: list[Check], blocked: C.Denial | None, own: Exposure, mark: MarkCell,
        counters: tuple[ScopeCounters, ...], spike: SpikeMeter,
    ) -> None:
        # bound __call__ methods: calling them skips the slot lookup of calling an instance
        self.checks = [c if isinstance(c, FunctionType) else c.__call__ for c in checks]
        self.blocked, self.own, self.mark = blocked, own, mark
        self.counters, self.spike = counters, spike

    def record(self, now_ns: int, day: str) -> None:
        """Count an approval in every scope's counters and the spike meter."""
        record_approval(self.counters, now_ns, day)
        self.spike.add(now_ns)


def _dec(x: float) -> Decimal:
    return Decimal(repr(x))


def build_plan(engine: PlanSource, bot: str, account: str, symbol: str) -> Plan | C.Denial:
    """Build the plan, or the denial for an unknown symbol, account or strategy."""
    cfg = engine.cfg
    ycfg = cfg.symbols.get(symbol)
    if ycfg is None:
        return C.unknown("symbol", symbol, "not on the allow-list (no [symbols.<name>] table)")
    acfg = cfg.accounts.get(account)
    if acfg is None:
        return C.unknown("account", account, "no [accounts.<name>] table")
    scfg = cfg.strategy(bot)
    if scfg is None:
        return C.unknown("bot", bot, "no [strategies.<bot>] table and no [strategy_defaults]")
    own, acct_exp, sym_exp = engine.position_keys(bot, account, symbol)
    mark = engine.mark(symbol)
    cnt = engine.order_counters(bot, account, symbol)
    scopes: list[ScopeRow] = [
        (Scope.GLOBAL, "", cfg.global_, sym_exp, cnt[0]),
        (Scope.ACCOUNT, account, acfg, acct_exp, cnt[1]),
        (Scope.STRATEGY, bot, scfg, own, cnt[2]),
        (Scope.SYMBOL, symbol, ycfg, sym_exp, cnt[3]),
    ]
    checks: list[Check] = [*_per_order(scopes), *_exposure(engine, account, scopes)]
    checks.extend(_book(engine, bot, scfg, own))
    g = cfg.global_
    spike = engine.spikes.get(bot)
    if spike is None:
        spike = engine.spikes[bot] = SpikeMeter(g.order_spike_halflife_s)
    flow = [row for row in (_flow(*sc) for sc in scopes) if row is not None]
    if flow:
        checks.append(C.FlowLimits(flow))
    if g.order_spike_factor > 0:
        checks.append(C.OrderSpike(bot, g.order_spike_factor, spike,
                                   g.order_spike_min_baseline))
    if g.duplicate_window_s > 0:
        checks.append(C.DuplicateOrder(int(g.duplicate_window_s * NS), engine.duplicates))
    blocked = None
    if symbol in g.restricted_symbols:
        blocked = C.Denial(
            check="restricted_symbol", scope=Scope.SYMBOL, scope_key=symbol, limit=0.0,
            value=0.0, unit="", field="symbol", message=f"{symbol} is on the restricted list",
        )
    return Plan(checks, blocked, own, mark, cnt, spike)


def _tightest(
    scopes: list[ScopeRow], field: str
) -> tuple[float, Scope, str] | None:
    """The smallest value of ``field`` over the scopes (and the scope it comes from)."""
    found = [(getattr(lim, field), scope, key) for scope, key, lim, _, _ in scopes
             if getattr(lim, field) is not None]
    return min(found, key=lambda f: f[0]) if found else None


def _per_order(scopes: list[ScopeRow]) -> list[Check]:
    """Per-order limits: only the tightest scope's limit can bind, so one check each."""
    age = _tightest(scopes, "max_data_age_s")
    limits = C.OrderLimits(
        _bound(scopes, "max_order_qty"), _bound(scopes, "max_order_notional"),
        _bound(scopes, "price_collar_bps"),
        None if age is None else (age[1], age[2], int(age[0] * NS)),
    )
    if (limits.qty, limits.notional, limits.collar, limits.max_age) == (None,) * 4:
        return [C.reduce_only]
    return [limits, C.reduce_only]


def _bound(rows: list[ScopeRow], field: str) -> C.Bound | None:
    t = _tightest(rows, field)
    return None if t is None else (t[1], t[2], _dec(t[0]))


def _exposure(engine: PlanSource, account: str, scopes: list[ScopeRow]) -> list[Check]:
    """Position limits, once per distinct exposure (GLOBAL and SYMBOL share the symbol's)."""
    groups: dict[int, list[ScopeRow]] = {}
    for row in scopes:
        groups.setdefault(id(row[3]), []).append(row)
    rows: list[C.PositionRow] = []
    for group in groups.values():
        qty, notional = _bound(group, "max_position_qty"), _bound(group, "max_position_notional")
        pct = _bound(group, "max_position_pct_equity")
        if (qty, notional, pct) != (None, None, None):
            rows.append((group[0][3], qty, notional, pct))
    if not rows:
        return []
    # only a plan with a % check holds the account's equity cell (kept per mark)
    with_pct = any(row[3] is not None for row in rows)
    return [C.PositionLimits(rows, engine.breakers.equity(account) if with_pct else None)]


def _book(engine: PlanSource, bot: str, scfg: Any, own: Exposure) -> list[Check]:
    book = engine.books[bot]
    gross = net = None
    if scfg.max_gross_notional is not None:
        gross = (Scope.STRATEGY, bot, _dec(scfg.max_gross_notional))
    if scfg.max_net_notional is not None:
        net = (Scope.STRATEGY, bot, _dec(scfg.max_net_notional))
    return [] if gross is None and net is None else [C.BookLimits(book, own, gross, net)]


def _flow(
    scope: Scope, key: str, lim: Limits, exp: Exposure, cnt: ScopeCounters
) -> C.FlowRow | None:
    cooldown = lim.trade_cooldown_s
    row = (scope, key, cnt, lim.max_open_orders, lim.max_orders_per_s, lim.max_trades_per_day,
           int(cooldown * NS) if cooldown is not None and cooldown > 0 else None)
    return None if row[3:] == (None,) * 4 else row
