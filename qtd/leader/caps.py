"""Fleet-wide caps: evaluated on the fleet view (PnL, drawdown, exposure) and on the event
stream (error rate, order-rate spike, self-trade risk).

A cap that fires returns a :class:`Breach` once; it stays *tripped* (no repeat) until the
operator resumes (:meth:`FleetCaps.reset`). A resume of a kill a cap tripped is refused while
that cap is still over its limit (:meth:`FleetCaps.held`); an operator may raise a cap's
limit for the rest of the trading day (:mod:`qtd.leader.overrides`). A standby leader
keeps its caps *disarmed* (:attr:`FleetCaps.armed` False): they measure and keep their
books but never fire; on takeover :meth:`FleetCaps.arm` fires what the events seen
meanwhile call for.

Rates are counted in one-second buckets of event
time (``ts_event``) and read in windows ending *now* (leader clock), so a backlog consumed
after a leader restart lands in its own past seconds instead of looking like a spike.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from qtd.clock import Clock
from qtd.events import (
    AnyEvent,
    BrokerError,
    CapOverride,
    OrderIntent,
    OrderRejected,
    Scope,
    Side,
)
from qtd.fleetsnapshot import CapOverrideView, CapView
from qtd.leader.config import CapsConfig, SymbolExposureCap
from qtd.leader.fleetdb import LEADER_NODE
from qtd.leader.overrides import CapOverrides, check_raise
from qtd.leader.view import FleetView, Rollup
from qtd.projections import TradingDay

_NS = 1_000_000_000
_LEVELS = {"L1": Scope.GLOBAL, "L2": Scope.ACCOUNT, "L3": Scope.STRATEGY, "L4": Scope.SYMBOL}
_REMEDY = {
    "daily_loss": "wait for the trading-day rollover (today's loss counts until then)",
    "drawdown": "wait until equity is back within the limit of its peak",
    "gross_exposure": "reduce the fleet's positions below the limit",
    "symbol_exposure": "reduce the symbol's net position below the limit",
    "error_rate": "wait until the rate over its window falls",
    "order_spike": "wait until the rate over its window falls",
}


class Breach(msgspec.Struct, frozen=True, kw_only=True):
    """A fleet cap fired: ``value`` against ``limit`` in ``unit``; ``level`` is the kill
    level configured for the cap; the other fields name what it concerns."""

    cap: str
    limit: float
    value: float
    unit: str
    level: str
    flatten: bool = False
    node: str = ""
    bot: str = ""
    account: str = ""
    symbol: str = ""
    message: str = ""
    trip_key: str = ""

    def scope(self) -> tuple[Scope, str]:
        """The kill scope and key: the configured level, keyed by the breach's account,
        bot or symbol; GLOBAL when the breach has no key for that level (fail safe)."""
        scope = _LEVELS[self.level]
        key = {Scope.ACCOUNT: self.account, Scope.STRATEGY: self.bot,
               Scope.SYMBOL: self.symbol}.get(scope, "")
        return (scope, key) if key else (Scope.GLOBAL, "")

    def advice(self) -> str:
        """One line for an operator whose resume this breach refused: cap, value, limit,
        and what to do."""
        what = f"{self.cap} {self.symbol}" if self.cap == "symbol_exposure" else self.cap
        key = f" --key {self.symbol}" if self.cap == "symbol_exposure" else ""
        remedy = _REMEDY.get(self.cap, "wait until it is back under its limit")
        return (f"fleet cap {what} is still breached: {self.value:,.2f} {self.unit} against "
                f"limit {self.limit:,.2f} {self.unit}; {remedy}, or raise the cap for the rest "
                f"of the trading day with `qtd caps raise {self.cap}{key} --limit L "
                f"--operator NAME --reason WHY` (L above {self.value:.2f}), then resume again")


class FleetCaps:
    """Evaluates the configured fleet caps.

    Args:
        cfg: the caps (absent ones are off).
        clock: leader clock (window ends).
        trading_day: the fleet's trading day (operator overrides hold for one); default
            UTC midnight.
    """

    def __init__(self, cfg: CapsConfig, clock: Clock,
                 trading_day: TradingDay | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.overrides = CapOverrides(trading_day or TradingDay(), clock)
        self.orders: dict[int, int] = {}
        self.errors: dict[int, int] = {}
        self.intents: dict[tuple[str, str],
                           dict[tuple[str, str], tuple[Side, int, str, str]]] = {}
        self.tripped: set[str] = set()
        self.armed = True

    def arm(self, armed: bool) -> list[Breach]:
        """Arm (active leader) or disarm (standby). Arming returns the self-trade risks
        already in the book (seen while disarmed); the view-based caps fire at the next
        :meth:`evaluate`."""
        self.armed = armed
        if not armed or self.cfg.self_trade is None:
            return []
        out: list[Breach] = []
        now = self.clock.now_ns()
        for book in self.intents.values():
            for (node, bot), (side, ts, _, _) in list(book.items()):
                if now - ts <= int(self.cfg.self_trade.window_s * _NS):
                    out += self._check_book(book, (node, bot), side, ts)
        return out

    def reset(self) -> None:
        """Re-arm every cap (after an operator resumed the last active kill)."""
        self.tripped.clear()

    def rearm(self, trip_key: str) -> None:
        """Re-arm one cap (``Breach.trip_key``: its kill was released)."""
        self.tripped.discard(trip_key)

    def on_event(self, ev: AnyEvent, *, live: bool = True) -> list[Breach]:
        """Count orders and errors; check self-trade risk on each order intent (``live``
        False, for a rebuild at start, only counts)."""
        t = type(ev)
        if t is OrderIntent:
            sec = ev.ts_event // _NS
            self.orders[sec] = self.orders.get(sec, 0) + 1
            return self._self_trade(ev) if live else []  # type: ignore[arg-type]
        if t is OrderRejected or t is BrokerError:
            sec = ev.ts_event // _NS
            self.errors[sec] = self.errors.get(sec, 0) + 1
        return []

    def _self_trade(self, intent: OrderIntent) -> list[Breach]:
        cfg = self.cfg.self_trade
        if cfg is None or intent.reduce_only:
            return []
        window = int(cfg.window_s * _NS)
        if self.clock.now_ns() - intent.ts_event > max(window, 60 * _NS):
            return []  # history (a backlog): not a risk now
        book = self.intents.setdefault((intent.account, intent.symbol), {})
        me = (intent.node, intent.bot)
        book[me] = (intent.side, intent.ts_event, intent.account, intent.symbol)
        return self._check_book(book, me, intent.side, intent.ts_event)

    def _check_book(self, book: dict[tuple[str, str], tuple[Side, int, str, str]],
                    me: tuple[str, str], my_side: Side, my_ts: int) -> list[Breach]:
        cfg = self.cfg.self_trade
        assert cfg is not None
        window = int(cfg.window_s * _NS)
        for other, (side, ts, account, symbol) in list(book.items()):
            if abs(my_ts - ts) > window:
                del book[other]
            elif other != me and side is not my_side:
                return self._trip(f"self_trade:{account}:{symbol}", Breach(
                    cap="self_trade", limit=cfg.window_s, value=abs(my_ts - ts) / _NS,
                    unit="s apart", level=cfg.level, flatten=cfg.flatten, node=me[0],
                    bot=me[1], account=account, symbol=symbol,
                    message=f"{other[0]}/{other[1]} {side} and {me[0]}/{me[1]} {my_side} "
                    f"{symbol} on account {account}"))
        return []

    def _trip(self, key: str, breach: Breach) -> list[Breach]:
        if key in self.tripped or not self.armed:
            return []
        self.tripped.add(key)
        return [msgspec.structs.replace(breach, trip_key=key)]

    def evaluate(self, view: FleetView) -> list[Breach]:
        """Measure every cap on the view; publish the utilisation on ``view.caps``.

        Returns:
            Caps newly over their limit (each fires once until :meth:`reset`).
        """
        r = view.rollup()
        view.note_peak(view.equity(r))
        views: list[CapView] = []
        breaches: list[Breach] = []
        for key, cap, breach in self._measure(view, r):
            if breach is not None:
                breaches += self._trip(key, breach)
            cap.tripped = key in self.tripped
            views.append(cap)
        view.show_caps(views)
        return breaches

    def views(self, view: FleetView, r: Rollup) -> list[CapView]:
        """Every cap measured on the rollup ``r`` without firing: a snapshot's caps come
        from the same pass over the view as its totals (one figure, one moment)."""
        views = []
        for key, cap, _ in self._measure(view, r):
            cap.tripped = key in self.tripped
            views.append(cap)
        return views
    def held(self, trip_keys: set[str], view: FleetView) -> list[Breach]:
        """The caps among ``trip_keys`` (``Breach.trip_key``) over their limit in force on
        the view now; nothing trips. A cap measured on events (self-trade) is never held."""
        if not trip_keys:
            return []
        return [msgspec.structs.replace(b, trip_key=k)
                for k, _, b in self._measure(view, view.rollup())
                if b is not None and k in trip_keys]

    def configured_limit(self, cap: str, key: str = "") -> float | None:
        """The configured limit of ``cap`` (``key``: the symbol of ``symbol_exposure``);
        None when the cap is off or has no limit."""
        c = self.cfg
        if cap == "symbol_exposure" and c.symbol_exposure is not None:
            return c.symbol_exposure.per_symbol.get(key, c.symbol_exposure.limit)
        limits = {
            "daily_loss": None if c.daily_loss is None else c.daily_loss.limit,
            "drawdown": None if c.drawdown is None else c.drawdown.limit_pct,
            "gross_exposure": None if c.gross_exposure is None else c.gross_exposure.limit,
            "error_rate": None if c.error_rate is None else c.error_rate.max_pct,
            "order_spike": None if c.order_spike is None else c.order_spike.factor}
        return limits.get(cap)

    def raise_limit(self, view: FleetView, cap: str, key: str, limit: float | None,
                    operator: str, reason: str) -> CapOverride:
        """The audited override raising ``cap`` (``key``: its symbol) to ``limit`` for the
        rest of today's trading day; the caller stores it, then :meth:`apply_override`.

        Raises:
            ConfigError: see :func:`qtd.leader.overrides.check_raise`.
        """
        configured = self.configured_limit(cap, key)
        in_force = (None if configured is None
                    else self.overrides.limit(cap, key, configured))
        new = check_raise(cap, key, limit, in_force, operator, reason)
        assert in_force is not None
        now = self.clock.now_ns()
        unit = {"drawdown": "%", "error_rate": "%", "order_spike": "x normal"}.get(
            cap, view.currency)
        return CapOverride(node=LEADER_NODE, ts_event=now, ts_init=now, cap=cap, cap_key=key,
                           old_limit=in_force, new_limit=new, unit=unit,
                           trading_day=self.overrides.today(), operator=operator,
                           reason=reason)

    def apply_override(self, ev: CapOverride) -> None:
        """Put a stored override in force: just stored, or read back from fleet.db at start
        (see :mod:`qtd.leader.overrides`; one not written by the leader is ignored)."""
        self.overrides.apply(ev)

    def _measure(self, view: FleetView, r: Rollup
                 ) -> Iterator[tuple[str, CapView, Breach | None]]:
        c, cur = self.cfg, view.currency
        if c.daily_loss is not None:
            loss = max(0.0, float(-r.totals.today))  # today's loss; a gain is no loss (0)
            yield self._cap("daily_loss", c.daily_loss.limit, loss, cur, c.daily_loss.level,
                            c.daily_loss.flatten, at=True)
        if c.drawdown is not None:
            eq, peak = view.equity(r), view.peak_equity
            dd = float((peak - eq) / peak * 100) if peak > 0 else 0.0
            yield self._cap("drawdown", c.drawdown.limit_pct, dd, "%", c.drawdown.level,
                            c.drawdown.flatten, at=True)
        if c.gross_exposure is not None:
            yield self._cap("gross_exposure", c.gross_exposure.limit, float(r.totals.gross),
                            cur, c.gross_exposure.level, c.gross_exposure.flatten)
        if c.symbol_exposure is not None:
            yield from self._symbols(view, r, c.symbol_exposure)
        yield from self._rates()

    def _cap(self, name: str, configured: float, value: float, unit: str, level: str,
             flatten: bool, *, at: bool = False, gate: bool = True,
             key: str = "") -> tuple[str, CapView, Breach | None]:
        """One cap measured against its limit in force (``at``: the limit itself is a
        breach; ``gate`` False: not judged yet)."""
        ov = self.overrides.current(name, key)
        limit = configured if ov is None else ov.new_limit
        over = gate and (value >= limit if at else value > limit)
        cap = CapView(name=name, limit=limit, value=value, unit=unit,
                      utilisation=max(value, 0.0) / limit, level=level, key=key,
                      override=None if ov is None else CapOverrideView(
                          operator=ov.operator, reason=ov.reason, old_limit=ov.old_limit,
                          configured_limit=configured, trading_day=ov.trading_day,
                          ts_ns=ov.ts_event))
        breach = None
        if over:
            breach = Breach(cap=name, limit=limit, value=value, unit=unit, level=level,
                            flatten=flatten, symbol=key,
                            message=f"{name} {value:.2f} {unit} against limit {limit:g}")
        return (f"{name}:{key}" if key else name), cap, breach

    def _symbols(self, view: FleetView, r: Rollup, cfg: SymbolExposureCap
                 ) -> Iterator[tuple[str, CapView, Breach | None]]:
        util: dict[str, float] = {}
        worst: tuple[str, CapView, Breach | None] | None = None
        for sym, acc in r.symbols.items():
            if not sym:
                continue
            key, cap, breach = self._cap(
                "symbol_exposure", cfg.per_symbol.get(sym, cfg.limit), float(abs(acc.net)),
                view.currency, cfg.level, cfg.flatten, key=sym)
            util[sym] = cap.utilisation
            if breach is not None:
                yield key, cap, breach
            elif worst is None or cap.utilisation > worst[1].utilisation:
                worst = (key, cap, None)
        view.show_symbol_utilisation(util)
        if worst is not None:
            yield worst

    def _rates(self) -> Iterator[tuple[str, CapView, Breach | None]]:
        now = self.clock.now_ns() // _NS
        er, sp = self.cfg.error_rate, self.cfg.order_spike
        if er is not None:
            orders = _window(self.orders, now, er.window_s)
            errors = _window(self.errors, now, er.window_s)
            pct = 100.0 * errors / orders if orders else 0.0
            yield self._cap("error_rate", er.max_pct, pct, "%", er.level, er.flatten,
                            gate=orders >= er.min_orders)
        if sp is not None:
            rate = _window(self.orders, now, sp.window_s) / sp.window_s
            older = _window(self.orders, now, sp.baseline_s) - rate * sp.window_s
            base = max(older / (sp.baseline_s - sp.window_s), sp.min_baseline_per_s)
            yield self._cap("order_spike", sp.factor, rate / base, "x normal", sp.level,
                            sp.flatten)
        self._prune(now)

    def _prune(self, now: int) -> None:
        keep = max(self.cfg.error_rate.window_s if self.cfg.error_rate else 0,
                   self.cfg.order_spike.baseline_s if self.cfg.order_spike else 0) + 2
        for buckets in (self.orders, self.errors):
            if len(buckets) > keep:
                for sec in [s for s in buckets if s < now - keep]:
                    del buckets[sec]


def _window(buckets: dict[int, int], now_s: int, window_s: float) -> int:
    """Events in the last ``window_s`` whole seconds ending at ``now_s`` (inclusive)."""
    start = now_s - int(window_s) + 1
    return sum(n for sec, n in buckets.items() if start <= sec <= now_s)

