"""Fleet-wide caps: evaluated on the fleet view (PnL, drawdown, exposure) and on the event
stream (error rate, order-rate spike, self-trade risk).

A cap that fires returns a :class:`Breach` once; it stays *tripped* (no repeat) until the
operator resumes (:meth:`FleetCaps.reset`). A standby leader keeps its caps *disarmed*
(:attr:`FleetCaps.armed` False): they measure and keep their books but never fire; on
takeover :meth:`FleetCaps.arm` fires what the events seen meanwhile call for.

Rates are counted in one-second buckets of event
time (``ts_event``) and read in windows ending *now* (leader clock), so a backlog consumed
after a leader restart lands in its own past seconds instead of looking like a spike.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from qtd.clock import Clock
from qtd.events import AnyEvent, BrokerError, OrderIntent, OrderRejected, Scope, Side
from qtd.leader.config import CapsConfig, SymbolExposureCap
from qtd.leader.snapshot import CapView
from qtd.leader.view import FleetView, Rollup

_NS = 1_000_000_000
_LEVELS = {"L1": Scope.GLOBAL, "L2": Scope.ACCOUNT, "L3": Scope.STRATEGY, "L4": Scope.SYMBOL}


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


class FleetCaps:
    """Evaluates the configured fleet caps.

    Args:
        cfg: the caps (absent ones are off).
        clock: leader clock (window ends).
    """

    def __init__(self, cfg: CapsConfig, clock: Clock) -> None:
        self.cfg = cfg
        self.clock = clock
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
        view.peak_equity = max(view.peak_equity, view.equity(r))
        views: list[CapView] = []
        breaches: list[Breach] = []
        for key, cap, breach in self._measure(view, r):
            if breach is not None:
                breaches += self._trip(key, breach)
            cap.tripped = key in self.tripped
            views.append(cap)
        view.caps = views
        return breaches

    def views(self, view: FleetView, r: Rollup) -> list[CapView]:
        """Every cap measured on the rollup ``r`` without firing: a snapshot's caps come
        from the same pass over the view as its totals (one figure, one moment)."""
        views = []
        for key, cap, _ in self._measure(view, r):
            cap.tripped = key in self.tripped
            views.append(cap)
        return views

    def _measure(self, view: FleetView, r: Rollup
                 ) -> Iterator[tuple[str, CapView, Breach | None]]:
        c = self.cfg
        if c.daily_loss is not None:
            loss = max(0.0, float(-r.totals.today))  # today's loss; a gain is no loss (0)
            yield self._simple("daily_loss", c.daily_loss.limit, loss, view.currency,
                               c.daily_loss.level, c.daily_loss.flatten, loss >= c.daily_loss.limit)
        if c.drawdown is not None:
            eq, peak = view.equity(r), view.peak_equity
            dd = float((peak - eq) / peak * 100) if peak > 0 else 0.0
            yield self._simple("drawdown", c.drawdown.limit_pct, dd, "%", c.drawdown.level,
                               c.drawdown.flatten, dd >= c.drawdown.limit_pct)
        if c.gross_exposure is not None:
            g = float(r.totals.gross)
            yield self._simple("gross_exposure", c.gross_exposure.limit, g, view.currency,
                               c.gross_exposure.level, c.gross_exposure.flatten,
                               g > c.gross_exposure.limit)
        if c.symbol_exposure is not None:
            yield from self._symbols(view, r, c.symbol_exposure)
        yield from self._rates()

    @staticmethod
    def _simple(name: str, limit: float, value: float, unit: str, level: str, flatten: bool,
                over: bool, key: str = "") -> tuple[str, CapView, Breach | None]:
        cap = CapView(name=name, limit=limit, value=value, unit=unit,
                      utilisation=max(value, 0.0) / limit, level=level, key=key)
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
            limit = cfg.per_symbol.get(sym, cfg.limit)
            value = float(abs(acc.net))
            key, cap, breach = self._simple("symbol_exposure", limit, value, view.currency,
                                            cfg.level, cfg.flatten, value > limit, key=sym)
            util[sym] = cap.utilisation
            if breach is not None:
                yield key, cap, breach
            elif worst is None or cap.utilisation > worst[1].utilisation:
                worst = (key, cap, None)
        view.symbol_utilisation = util
        if worst is not None:
            yield worst

    def _rates(self) -> Iterator[tuple[str, CapView, Breach | None]]:
        now = self.clock.now_ns() // _NS
        er, sp = self.cfg.error_rate, self.cfg.order_spike
        if er is not None:
            orders = _window(self.orders, now, er.window_s)
            errors = _window(self.errors, now, er.window_s)
            pct = 100.0 * errors / orders if orders else 0.0
            yield self._simple("error_rate", er.max_pct, pct, "%", er.level, er.flatten,
                               orders >= er.min_orders and pct > er.max_pct)
        if sp is not None:
            rate = _window(self.orders, now, sp.window_s) / sp.window_s
            older = _window(self.orders, now, sp.baseline_s) - rate * sp.window_s
            base = max(older / (sp.baseline_s - sp.window_s), sp.min_baseline_per_s)
            yield self._simple("order_spike", sp.factor, rate / base, "x normal", sp.level,
                               sp.flatten, rate > sp.factor * base)
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

