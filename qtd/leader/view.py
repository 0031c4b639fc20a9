"""FleetView: live aggregates of every agent's events, per node, bot, account and symbol.

Positions and realized PnL come from one :class:`qtd.projections.Projections` per node (the
same average-cost code the agents run; bot names may repeat across nodes). The view adds
what only the fleet knows: the last mark per symbol (last fill price, or a
``PositionSnapshot``'s mark), order/fill/reject/error counts, today's realized PnL per
position (the realized delta of each fill, labelled by the fill's trading day), agents'
heartbeats and PnL ticks, and the latest cap, kill and alert state for the status page.

**Today's PnL** of a position is its net realized PnL on today's trading day plus its whole
unrealized PnL at the mark (no start-of-day mark is kept, so a position carried overnight
counts its full open PnL: conservative for the daily-loss cap).

**Unrealized PnL** of a bot is the one its agent last reported (``PnLSnapshot`` on core
``<prefix>.pnl.<node>.<bot>`` about every second, marked at the agent's own market data)
while that tick is fresh: received less than ``pnl_stale_s`` ago and no fill of that bot is
newer than it (the tick would not contain the fill). Otherwise the leader marks the bot's
positions itself at the last fill price (or ``PositionSnapshot`` mark) it saw for the symbol.
The reported figure replaces the bot's fill-marked sum at the fleet, node, bot and account
level, and at the symbol level and in the position row when the bot has a single open
position (a per-bot tick cannot be split across several). Exposure stays at fill marks.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from qtd.clock import Clock
from qtd.events import (
    AnyEvent,
    BrokerError,
    Fill,
    Heartbeat,
    LimitUsage,
    OrderDenied,
    OrderIntent,
    OrderRejected,
    PnLSnapshot,
    PositionSnapshot,
    PositionTransfer,
    RiskBreach,
    TradingStateChanged,
)
from qtd.fleetsnapshot import (
    UNKNOWN_VERSION,
    AccountView,
    Agg,
    AlertView,
    BotView,
    CapView,
    FleetSnapshot,
    KillView,
    LimitView,
    NodeView,
    PositionView,
    SymbolView,
    version_skew,
)
from qtd.leader import why
from qtd.orders import ApplyResult
from qtd.projections import ZERO, Position, Projections, TradingDay

_NS = 1_000_000_000
Key4 = tuple[str, str, str, str]  # node, bot, account, symbol


class _Acc:
    """Mutable accumulator behind :class:`Agg` (Decimal money, exact sums)."""

    __slots__ = ("counts", "gross", "net", "open", "realized", "today", "unrealized")

    def __init__(self) -> None:
        self.realized = self.unrealized = self.today = self.gross = self.net = ZERO
        self.counts = [0, 0, 0, 0, 0]  # orders, fills, rejects, errors, denials
        self.open = 0

    def agg(self) -> Agg:
        o, f, r, e, d = self.counts
        return Agg(realized=float(self.realized), unrealized=float(self.unrealized),
                   pnl_today=float(self.today), gross_exposure=float(self.gross),
                   net_exposure=float(self.net), orders=o, fills=f, rejects=r, errors=e,
                   denials=d, open_positions=self.open)


class Rollup:
    """One pass over every position and counter: the aggregates at every level.

    Attributes:
        totals: the fleet.
        nodes, bots, accounts, symbols: per key (bots by ``(node, bot)``).
        positions: per-position rows.
        symbol_qty: net quantity per symbol.
    """

    def __init__(self) -> None:
        self.totals = _Acc()
        self.nodes: dict[str, _Acc] = {}
        self.bots: dict[tuple[str, str], _Acc] = {}
        self.accounts: dict[str, _Acc] = {}
        self.symbols: dict[str, _Acc] = {}
        self.positions: list[PositionView] = []
        self.symbol_qty: dict[str, Decimal] = {}
        self.bot_accounts: dict[tuple[str, str], set[str]] = {}
        self.bot_symbols: dict[tuple[str, str], set[str]] = {}
        self.bot_unreal: dict[tuple[str, str], Decimal] = {}  # fill-marked, per bot
        self.bot_open: dict[tuple[str, str], list[tuple[Key4, int]]] = {}  # k4, row index
        self.reported_bots: set[tuple[str, str]] = set()  # unrealized from the agent

    def accs(self, k: Key4) -> tuple[_Acc, ...]:
        node, bot, account, symbol = k
        self.bot_accounts.setdefault((node, bot), set()).add(account)
        self.bot_symbols.setdefault((node, bot), set()).add(symbol)
        return (self.totals, self.nodes.setdefault(node, _Acc()),
                self.bots.setdefault((node, bot), _Acc()),
                self.accounts.setdefault(account, _Acc()), self.symbols.setdefault(symbol, _Acc()))


class FleetView:
    """Live fleet aggregates, fed by the ingest loop (:meth:`apply`) and core NATS ticks.

    Args:
        trading_day: the fleet's trading-day boundary.
        capital: fleet starting equity, currency (drawdown base).
        currency: the fleet currency (labels only; no FX).
        clock: leader clock (ages, today's label).
        heartbeat_timeout_s: a node whose heartbeat is older is shown not alive.
        keep_terminal_orders: per node, how many orders that reached a terminal state are
            kept (the most recent; :class:`~qtd.orders.OrderBook`); ``None`` keeps all.
    """

    def __init__(self, *, trading_day: TradingDay, capital: Decimal, currency: str,
                 clock: Clock, heartbeat_timeout_s: float = 5.0,
                 pnl_stale_s: float = 5.0, keep_terminal_orders: int | None = None) -> None:
        self.trading_day = trading_day
        self.keep_terminal_orders = keep_terminal_orders
        self.pnl_stale_ns = int(pnl_stale_s * _NS)
        self.live_pnl: dict[tuple[str, str], tuple[PnLSnapshot, int]] = {}  # tick, seen ns
        self.last_fill_ts: dict[tuple[str, str], int] = {}  # newest fill ts_event per bot
        self.capital = capital
        self.currency = currency
        self.clock = clock
        self.heartbeat_timeout_ns = int(heartbeat_timeout_s * _NS)
        self.projections: dict[str, Projections] = {}
        self.marks: dict[str, Decimal] = {}
        self.counts: dict[Key4, list[int]] = {}
        self.day_realized: dict[tuple[str, str, str, str, str], Decimal] = {}
        self.activity: dict[tuple[str, str], int] = {}
        self.reported: dict[tuple[str, str], PnLSnapshot] = {}
        self.heartbeats: dict[str, tuple[Heartbeat, int]] = {}
        self.peak_equity = capital
        self.applied = 0
        self.caps: list[CapView] = []
        self.symbol_utilisation: dict[str, float] = {}
        self.kill = KillView()
        self.why = why.WhyBook()

    # --- what the leader's parts show on it ---------------------------------------------

    def show_kill(self, kill: KillView) -> None:
        """The kill switch's state now (:class:`~qtd.leader.kill_switch.KillSwitchController`)."""
        self.kill = kill

    def show_caps(self, caps: list[CapView]) -> None:
        """The caps as last evaluated (:meth:`~qtd.leader.caps.FleetCaps.evaluate`)."""
        self.caps = caps

    def show_symbol_utilisation(self, util: dict[str, float]) -> None:
        """Per symbol, the share of its exposure cap in use (0..1+)."""
        self.symbol_utilisation = util

    def note_peak(self, equity: Decimal) -> None:
        """Raise the peak equity to ``equity`` (currency) if higher."""
        self.peak_equity = max(self.peak_equity, equity)

    # --- feeding -------------------------------------------------------------------------

    def apply(self, ev: AnyEvent) -> None:
        """Apply one consumed event (idempotent for order events, like the projections)."""
        proj = self.projections.get(ev.node)
        if proj is None:
            proj = self.projections[ev.node] = Projections(
                self.trading_day, keep_terminal=self.keep_terminal_orders)
        self.applied += 1
        t = type(ev)
        if t is Fill:
            self._apply_fill(proj, ev)  # type: ignore[arg-type]
        elif t is PositionTransfer:
            self._apply_transfer(proj, ev)  # type: ignore[arg-type]
        else:
            result = proj.apply(ev)
            if result is not ApplyResult.DUPLICATE:
                self._count(proj, ev)
        if t is PositionSnapshot and ev.mark_price is not None:  # type: ignore[union-attr]
            self.marks[ev.symbol] = ev.mark_price  # type: ignore[union-attr]
        elif t is PnLSnapshot:
            self.reported[(ev.node, ev.bot)] = ev  # type: ignore[assignment]
        elif t is TradingStateChanged or t is RiskBreach:
            self.why.on_event(ev)  # type: ignore[arg-type]
        if ev.bot:
            self.activity[(ev.node, ev.bot)] = self.clock.now_ns()

    def _apply_fill(self, proj: Projections, fill: Fill) -> None:
        pos = proj.positions.get((fill.bot, fill.account, fill.symbol))
        before = pos.net_realized if pos is not None else ZERO
        if proj.apply(fill) is ApplyResult.DUPLICATE:
            return
        pos = proj.positions[(fill.bot, fill.account, fill.symbol)]
        day = self.trading_day.label(fill.ts_event)
        dkey = (day, fill.node, fill.bot, fill.account, fill.symbol)
        self.day_realized[dkey] = self.day_realized.get(dkey, ZERO) + pos.net_realized - before
        self.marks[fill.symbol] = fill.price
        bk = (fill.node, fill.bot)
        if fill.ts_event > self.last_fill_ts.get(bk, 0):
            self.last_fill_ts[bk] = fill.ts_event
        self._bump((fill.node, fill.bot, fill.account, fill.symbol), 1)

    def _apply_transfer(self, proj: Projections, tr: PositionTransfer) -> None:
        """A canary's share moved between two bot ids without an order: positions follow
        (the projections); the receiver's day realized PnL takes what netting realized
        (nothing unless it held the opposite side); both bots' earlier PnL ticks are stale,
        as after a fill."""
        key = (tr.to_bot, tr.account, tr.symbol)
        pos = proj.positions.get(key)
        before = pos.net_realized if pos is not None else ZERO
        if proj.apply(tr) is not ApplyResult.APPLIED:
            return
        pos = proj.positions[key]
        if pos.net_realized != before:
            dkey = (self.trading_day.label(tr.ts_event), tr.node, tr.to_bot, tr.account,
                    tr.symbol)
            self.day_realized[dkey] = self.day_realized.get(dkey, ZERO) + pos.net_realized \
                - before
        for b in (tr.from_bot, tr.to_bot):
            if tr.ts_event > self.last_fill_ts.get((tr.node, b), 0):
                self.last_fill_ts[(tr.node, b)] = tr.ts_event

    def _count(self, proj: Projections, ev: AnyEvent) -> None:
        t = type(ev)
        if t is OrderIntent or t is OrderDenied:
            k4 = (ev.node, ev.bot, ev.account, ev.symbol)  # type: ignore[union-attr]
            self._bump(k4, 0 if t is OrderIntent else 4)
            if t is OrderDenied:
                self.why.on_denied(ev)  # type: ignore[arg-type]
        elif t is OrderRejected or t is BrokerError:
            rec = proj.orders.get(ev.client_order_id)  # type: ignore[union-attr]
            account, symbol = (rec.account, rec.symbol) if rec is not None else ("", "")
            self._bump((ev.node, ev.bot, account, symbol), 2 if t is OrderRejected else 3)

    def _bump(self, k4: Key4, i: int) -> None:
        c = self.counts.get(k4)
        if c is None:
            c = self.counts[k4] = [0, 0, 0, 0, 0]
        c[i] += 1

    def on_pnl(self, snap: PnLSnapshot) -> None:
        """An agent's PnL tick (core NATS): the bot is alive and reporting; a bot-level
        tick (``symbol == ""``) is its unrealized PnL while fresh (module docstring)."""
        now = self.clock.now_ns()
        self.reported[(snap.node, snap.bot)] = snap
        self.activity[(snap.node, snap.bot)] = now
        if not snap.symbol:
            self.live_pnl[(snap.node, snap.bot)] = (snap, now)

    def fresh_pnl(self, node: str, bot: str) -> PnLSnapshot | None:
        """The bot's last PnL tick if it is still the source of its unrealized PnL."""
        seen = self.live_pnl.get((node, bot))
        if seen is None or self.clock.now_ns() - seen[1] > self.pnl_stale_ns:
            return None
        if self.last_fill_ts.get((node, bot), 0) > seen[0].ts_event:
            return None  # a fill the tick does not contain
        return seen[0]

    def on_heartbeat(self, hb: Heartbeat) -> None:
        """An agent's heartbeat (core NATS)."""
        self.heartbeats[hb.node] = (hb, self.clock.now_ns())

    def on_agent_page(self, breach: RiskBreach) -> None:
        """An agent's storage page (core NATS; :meth:`qtd.leader.why.WhyBook.on_page`)."""
        self.why.on_page(breach)

    def heartbeat_age_s(self, node: str) -> float | None:
        """Seconds since the node's last heartbeat (None: never seen)."""
        seen = self.heartbeats.get(node)
        return None if seen is None else (self.clock.now_ns() - seen[1]) / _NS

    # --- reading -------------------------------------------------------------------------

    def mark(self, pos: Position) -> Decimal | None:
        """The symbol's last fleet mark, else the position's last fill price."""
        return self.marks.get(pos.symbol, pos.last_price)

    def rollup(self) -> Rollup:
        """Aggregate every position and counter (one pass; O(positions + counters))."""
        r = Rollup()
        today = self.trading_day.label(self.clock.now_ns())
        for node, proj in self.projections.items():
            for pos in proj.positions.values():
                self._roll_position(r, node, pos, today)
        for node, bot in self.live_pnl:
            rep = self.fresh_pnl(node, bot)
            if rep is not None:
                self._roll_reported(r, (node, bot), rep)
        for k4, counts in self.counts.items():
            for acc in r.accs(k4):
                for i, n in enumerate(counts):
                    acc.counts[i] += n
        return r

    def _roll_position(self, r: Rollup, node: str, pos: Position, today: str) -> None:
        mark = self.mark(pos)
        notional = pos.qty * mark if mark is not None else ZERO
        unreal = pos.unrealized(mark)
        k4 = (node, pos.bot, pos.account, pos.symbol)
        today_pnl = self.day_realized.get((today, *k4), ZERO) + unreal
        for acc in r.accs(k4):
            acc.realized += pos.net_realized
            acc.unrealized += unreal
            acc.today += today_pnl
            acc.gross += abs(notional)
            acc.net += notional
            acc.open += 1 if pos.qty else 0
        r.symbol_qty[pos.symbol] = r.symbol_qty.get(pos.symbol, ZERO) + pos.qty
        bk = (node, pos.bot)
        r.bot_unreal[bk] = r.bot_unreal.get(bk, ZERO) + unreal
        if pos.qty:
            r.bot_open.setdefault(bk, []).append((k4, len(r.positions)))
            r.positions.append(PositionView(
                node=node, bot=pos.bot, account=pos.account, symbol=pos.symbol,
                qty=float(pos.qty), avg_price=float(pos.avg_price),
                mark=None if mark is None else float(mark), notional=float(notional),
                realized=float(pos.net_realized), unrealized=float(unreal)))

    def _roll_reported(self, r: Rollup, key: tuple[str, str], rep: PnLSnapshot) -> None:
        """Replace the bot's fill-marked unrealized PnL by its agent's (module docstring)."""
        r.reported_bots.add(key)
        delta = rep.unrealized - r.bot_unreal.get(key, ZERO)
        opens = r.bot_open.get(key, [])
        accounts = {k4[2] for k4, _ in opens}
        account = rep.account or (next(iter(accounts)) if len(accounts) == 1 else "")
        accs = [r.totals, r.nodes.setdefault(key[0], _Acc()), r.bots.setdefault(key, _Acc()),
                r.accounts.setdefault(account, _Acc())]
        r.bot_accounts.setdefault(key, set()).add(account)
        if len(opens) == 1:
            (k4, row) = opens[0]
            accs.append(r.symbols.setdefault(k4[3], _Acc()))
            r.positions[row].unrealized = float(rep.unrealized)
        for acc in accs:
            acc.unrealized += delta
            acc.today += delta

    def equity(self, r: Rollup) -> Decimal:
        """Fleet equity: capital + realized (net) + unrealized, currency."""
        return self.capital + r.totals.realized + r.totals.unrealized

    def snapshot(self, *, measure_caps: Callable[[Rollup], list[CapView]] | None = None,
                 alerts: Callable[[], list[AlertView]] = list,
                 ingest_stats: Callable[[], dict[str, int]] = dict) -> FleetSnapshot:
        """Everything the status page needs, msgspec-serialisable (see
        :mod:`qtd.fleetsnapshot` for the shape and units).

        Args:
            measure_caps: the caps measured on this pass's rollup (default: the last
                ``caps`` set on the view).
            alerts: the open alerts. ingest_stats: the ingest counters.
        The leader passes its own (:class:`qtd.leader.status.FleetStatus`).
        """
        r = self.rollup()
        now = self.clock.now_ns()
        equity = self.equity(r)
        peak = max(self.peak_equity, equity)
        dd = float((peak - equity) / peak * 100) if peak > 0 else 0.0
        caps = list(self.caps) if measure_caps is None else measure_caps(r)
        nodes = self._nodes(r)
        node_states = {n.node: n.state for n in nodes if n.alive}
        return FleetSnapshot(
            ts_ns=now, trading_day=self.trading_day.label(now),
            currency=self.currency, capital=float(self.capital), equity=float(equity),
            peak_equity=float(peak), drawdown_pct=dd, totals=r.totals.agg(),
            nodes=nodes, bots=self._bots(r, node_states),
            accounts=[AccountView(account=k, agg=a.agg()) for k, a in sorted(r.accounts.items())],
            symbols=self._symbols(r), positions=r.positions, caps=caps,
            kill=self.kill, alerts=alerts(), ingest=ingest_stats(),
            states=self.why.states(self.kill.kills, node_states),
            qtd_versions=version_skew(nodes),
        )

    def _nodes(self, r: Rollup) -> list[NodeView]:
        out = []
        for node in sorted(set(r.nodes) | set(self.heartbeats)):
            hb = self.heartbeats.get(node)
            age = self.heartbeat_age_s(node)
            out.append(NodeView(
                node=node, alive=age is not None and age * _NS <= self.heartbeat_timeout_ns,
                heartbeat_age_s=age, state=hb[0].state.value if hb else "UNKNOWN",
                bots_running=hb[0].bots_running if hb else 0,
                agg=r.nodes.get(node, _Acc()).agg(),
                version=hb[0].version if hb and hb[0].version else UNKNOWN_VERSION))
        return out

    def _bots(self, r: Rollup, node_states: dict[str, str]) -> list[BotView]:
        now = self.clock.now_ns()
        out = []
        for key in sorted(set(r.bots) | set(self.activity)):
            seen = self.activity.get(key)
            rep = self.reported.get(key)
            accounts = sorted(r.bot_accounts.get(key, set()) - {""})
            state, causes, since = why.explain(
                self.why, self.kill.kills, key, accounts, r.bot_symbols.get(key, set()), rep,
                node_states.get(key[0], ""))
            out.append(BotView(
                node=key[0], bot=key[1], accounts=accounts,
                last_activity_age_s=None if seen is None else (now - seen) / _NS,
                reported_pnl=None if rep is None else float(rep.realized + rep.unrealized),
                agg=r.bots.get(key, _Acc()).agg(),
                stage="" if rep is None else rep.stage, state="" if rep is None else rep.state,
                limits=[] if rep is None else limit_views(rep.limits),
                effective_state=state, causes=causes, since_ns=since,
                deny_reasons=self.why.deny_reasons(key)))
        return out

    def _symbols(self, r: Rollup) -> list[SymbolView]:
        util = self.symbol_utilisation
        out = []
        for sym, acc in sorted(r.symbols.items()):
            if not sym:
                continue
            mark = self.marks.get(sym)
            out.append(SymbolView(
                symbol=sym, net_qty=float(r.symbol_qty.get(sym, ZERO)),
                mark=None if mark is None else float(mark), cap_utilisation=util.get(sym),
                agg=acc.agg()))
        return out

    def bot_pnl_today(self, node: str, bot: str) -> Decimal:
        """Today's PnL of one bot, currency (see the module docstring)."""
        r = self.rollup()
        acc = r.bots.get((node, bot))
        return acc.today if acc is not None else ZERO


def limit_views(limits: list[LimitUsage]) -> list[LimitView]:
    """An agent's reported limits with their utilisation (``used / limit``; 0 for a limit
    that is not positive)."""
    return [LimitView(name=u.name, scope=u.scope.value, key=u.key, limit=u.limit, used=u.used,
                      unit=u.unit, utilisation=u.used / u.limit if u.limit > 0 else 0.0)
            for u in limits]
