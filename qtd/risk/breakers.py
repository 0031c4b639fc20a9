"""Circuit breakers on realised + unrealised PnL, trade outcomes and broker health.

Each breaker watches the engine's inputs (fills, marks, broker request results) and, when its
threshold is crossed, moves its scope to the trading state its config names (escalation
only), emitting a :class:`~qtd.events.RiskBreach` and a
:class:`~qtd.events.TradingStateChanged`:

=====================  ==================================================  ================
breaker                observed value                                      default trip
=====================  ==================================================  ================
daily_loss             day-open equity − equity (currency and %)           HALTED account
drawdown               (peak equity − equity) / peak (%), GLOBAL/ACCOUNT   HALTED global
consecutive_losses     losing closing trades in a row, per strategy        HALTED strategy
win_streak             winning closing trades in a row, per strategy       REDUCING for
                                                                           ``cooldown_s``
sharpe                 mean / std of the last N trades' PnL, per strategy  REDUCING strategy
                       (:func:`qtd.metrics.sharpe_ratio`; undefined at zero
                       dispersion: no trip, unless every trade lost the
                       same amount)
broker_errors          failed / all broker requests in a window, account   REDUCING account
execution_throttle     fills of a strategy within a window                 HALTED strategy
=====================  ==================================================  ================

Equity of an account = configured ``equity`` + Σ over its positions of (realised − fees +
unrealised at the last mark), from :class:`qtd.projections.Projections`. A *trade* is a fill
that realises PnL (it closes some of a position); its PnL is the realised amount net of the
fill's fee in the position currency.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from decimal import Decimal

from qtd.events import Event, Fill, RiskBreach, Scope, TradingState
from qtd.metrics import sharpe_ratio
from qtd.projections import Position, Projections, TradingDay
from qtd.risk.config import RiskConfig
from qtd.risk.state import NS, ZERO, Cell, MarkCell
from qtd.risk.states import TradingStates, severity_for

PosKey = tuple[str, str, str]


class _AccountBook:
    """One account's equity, kept as ``base + unreal_total``: ``base`` = configured equity
    + Σ net realized of its positions (changes only on fills and transfers: re-derived then),
    ``unreal`` = Σ unrealized of its open positions per symbol at the last marks (a mark of
    one symbol re-values that symbol only)."""

    __slots__ = ("base", "day", "day_open", "equity", "loss_limit", "loss_pct", "peak",
                 "positions", "start", "unreal", "unreal_total")

    def __init__(self, start: Decimal, loss_limit: float | None, loss_pct: float | None
                 ) -> None:
        self.start = start
        self.equity = Cell(start)
        self.positions: list[Position] = []
        self.base = start
        self.unreal: dict[str, Decimal] = {}
        self.unreal_total = ZERO
        self.day = ""
        self.day_open = start
        self.peak = start
        self.loss_limit, self.loss_pct = loss_limit, loss_pct  # daily loss: account or default


class _StrategyBook:
    __slots__ = ("fills", "losses", "trades", "wins")

    def __init__(self, window: int) -> None:
        self.losses = 0
        self.wins = 0
        self.trades: deque[float] = deque(maxlen=window)
        self.fills: deque[int] = deque()


class _RequestWindow:
    """One account's broker request outcomes within the error-rate window."""

    __slots__ = ("errors", "results")

    def __init__(self) -> None:
        self.results: deque[tuple[int, bool]] = deque()  # (UTC ns, ok), oldest first
        self.errors = 0  # results that are not ok


class CircuitBreakers:
    """Every circuit breaker of one engine.

    Args:
        cfg: the risk config (thresholds and trip states).
        states: the engine's trading states (breakers escalate them).
        projections: positions and realised PnL (read only).
        marks: the engine's last prices by symbol.
        emit: receives the RiskBreach / TradingStateChanged events to store.
        node: node name for the events.
    """

    def __init__(
        self, cfg: RiskConfig, states: TradingStates, projections: Projections,
        marks: dict[str, MarkCell], emit: Callable[[Event], None], node: str,
    ) -> None:
        self.cfg, self.states, self.proj, self.marks = cfg, states, projections, marks
        self._emit, self.node = emit, node
        self.day = TradingDay(cfg.trading_day_tz, cfg.trading_day_rollover)
        dl = cfg.breakers.daily_loss
        self.accounts = {name: _AccountBook(
            Decimal(str(a.equity)),
            a.max_daily_loss if a.max_daily_loss is not None else dl.max_loss,
            a.max_daily_loss_pct if a.max_daily_loss_pct is not None else dl.max_loss_pct)
            for name, a in cfg.accounts.items()}
        self._strategies: dict[str, _StrategyBook] = {}
        self._realized: dict[PosKey, Decimal] = {}
        # symbol -> account -> that account's positions in the symbol (projection objects)
        self._by_symbol: dict[str, dict[str, list[Position]]] = {}
        self._requests: dict[str, _RequestWindow] = {}
        self._global_peak = sum((b.start for b in self.accounts.values()), ZERO)

    def equity(self, account: str) -> Cell:
        """The account's current equity (currency), a cell updated on fills and marks."""
        book = self.accounts.get(account)
        return book.equity if book is not None else Cell(ZERO)

    # --- inputs ---------------------------------------------------------------------------

    def on_fill(self, fill: Fill, now_ns: int) -> None:
        """A fill was applied to the projections: update trade stats and PnL breakers."""
        key = (fill.bot, fill.account, fill.symbol)
        pos = self.proj.positions.get(key)
        if pos is None:
            return
        book = self.accounts.get(fill.account)
        if key not in self._realized and book is not None:
            book.positions.append(pos)
            self._by_symbol.setdefault(fill.symbol, {}).setdefault(fill.account, []).append(pos)
        before = self._realized.get(key, ZERO)
        self._realized[key] = pos.realized
        fee = fill.commission if fill.commission_currency == fill.currency else ZERO
        if pos.realized != before:
            self._on_trade(fill.bot, float(pos.realized - before - fee), now_ns)
        self._count_fill(fill.bot, now_ns)
        self._update_account(fill.account, now_ns)

    def on_mark(self, symbol: str, now_ns: int) -> None:
        """The symbol's mark moved: re-value the accounts' positions in it (O(positions in
        the symbol), not O(the account's positions)). An account flat in the symbol is
        skipped unless its trading day rolled over: its equity did not change, so neither
        did any breaker's reading."""
        held = self._by_symbol.get(symbol)
        if not held:
            return
        cell = self.marks.get(symbol)
        price = cell.price if cell is not None else None
        accounts = self.accounts
        for account, positions in held.items():
            book = accounts[account]  # positions are indexed only for configured accounts
            now = ZERO
            for pos in positions:
                if pos.qty:
                    now += pos.unrealized(price)
            before = book.unreal.get(symbol)
            if before is not None or now:
                if now:
                    book.unreal[symbol] = now
                else:
                    del book.unreal[symbol]
                book.unreal_total += now - (before or ZERO)
                self._check_account(account, book, now_ns)
            elif book.day != self.day.label(now_ns):
                self._check_account(account, book, now_ns)

    def on_broker_result(self, account: str, ok: bool, now_ns: int) -> None:
        """Record one broker request outcome (submit / cancel) for the error-rate breaker."""
        cfg = self.cfg.breakers.broker_errors
        if cfg.max_error_rate is None:
            return
        window = self._requests.get(account)
        if window is None:
            window = self._requests[account] = _RequestWindow()
        results = window.results
        results.append((now_ns, ok))
        window.errors += not ok
        floor = now_ns - int(cfg.window_s * NS)
        while results and results[0][0] <= floor:
            window.errors -= not results.popleft()[1]
        errors = window.errors
        if len(results) >= cfg.min_requests and errors / len(results) > cfg.max_error_rate:
            self._trip("broker_error_rate", Scope.ACCOUNT, account, cfg.trip,
                       cfg.max_error_rate, errors / len(results), "ratio", now_ns)

    # --- strategy breakers ----------------------------------------------------------------

    def _strategy(self, bot: str) -> _StrategyBook:
        book = self._strategies.get(bot)
        if book is None:
            book = self._strategies[bot] = _StrategyBook(self.cfg.breakers.sharpe.window_trades)
        return book

    def _on_trade(self, bot: str, pnl: float, now_ns: int) -> None:
        b, br = self._strategy(bot), self.cfg.breakers
        b.trades.append(pnl)
        if pnl < 0:
            b.losses, b.wins = b.losses + 1, 0
        elif pnl > 0:
            b.losses, b.wins = 0, b.wins + 1
        cl, ws, sh = br.consecutive_losses, br.win_streak, br.sharpe
        if cl.max_losses is not None and b.losses >= cl.max_losses:
            self._trip("consecutive_losses", Scope.STRATEGY, bot, cl.trip, cl.max_losses,
                       b.losses, "trades", now_ns)
        if ws.max_wins is not None and b.wins >= ws.max_wins:
            until = now_ns + int(ws.cooldown_s * NS)
            if self._trip("win_streak", Scope.STRATEGY, bot, ws.trip, ws.max_wins, b.wins,
                          "trades", now_ns, until_ns=until):
                b.wins = 0
        if sh.min_sharpe is not None and len(b.trades) >= sh.window_trades:
            value = sharpe_ratio(b.trades)
            if value is not None and value < sh.min_sharpe:
                self._trip("min_sharpe", Scope.STRATEGY, bot, sh.trip, sh.min_sharpe, value,
                           "sharpe", now_ns)
            elif value is None and b.trades[0] < 0:
                self._trip("min_sharpe", Scope.STRATEGY, bot, sh.trip, 0.0, b.trades[0],
                           "currency", now_ns, reason=(
                               f"circuit breaker min_sharpe: each of the last {len(b.trades)}"
                               f" trades lost {-b.trades[0]:g} currency (no dispersion: "
                               f"Sharpe undefined, below any floor)"))

    def _count_fill(self, bot: str, now_ns: int) -> None:
        cfg = self.cfg.breakers.execution_throttle
        if cfg.max_fills is None:
            return
        fills = self._strategy(bot).fills
        fills.append(now_ns)
        floor = now_ns - int(cfg.window_s * NS)
        while fills and fills[0] <= floor:
            fills.popleft()
        if len(fills) > cfg.max_fills:
            self._trip("repeated_execution", Scope.STRATEGY, bot, cfg.trip, cfg.max_fills,
                       len(fills), "fills", now_ns)

    # --- account breakers -----------------------------------------------------------------

    def on_transfer(self, account: str, now_ns: int) -> None:
        """A position transfer moved cost (and may have realized PnL) between two bot ids of
        ``account``: re-derive its equity."""
        self._update_account(account, now_ns)

    def _update_account(self, account: str, now_ns: int) -> None:
        """Re-derive the account's equity from its positions (after a fill or transfer)."""
        book = self.accounts.get(account)
        if book is None:
            return
        base = book.start
        unreal: dict[str, Decimal] = {}
        marks = self.marks
        for pos in book.positions:
            base += pos.net_realized
            if pos.qty:
                mark = marks.get(pos.symbol)
                sym = pos.symbol
                unreal[sym] = unreal.get(sym, ZERO) + pos.unrealized(
                    mark.price if mark is not None else None)
        book.base, book.unreal = base, unreal
        book.unreal_total = sum(unreal.values(), ZERO)
        self._check_account(account, book, now_ns)

    def _check_account(self, account: str, book: _AccountBook, now_ns: int) -> None:
        """Publish the account's equity (``base + unreal_total``) and run its PnL breakers."""
        eq = book.base + book.unreal_total
        book.equity.value = eq
        day = self.day.label(now_ns)
        if day != book.day:
            book.day, book.day_open = day, eq
        if eq > book.peak:
            book.peak = eq
        if book.loss_limit is not None or book.loss_pct is not None:
            self._check_daily_loss(account, book, now_ns)
        if self.cfg.breakers.drawdown.max_drawdown_pct is not None:
            self._check_drawdown(account, book, now_ns)

    def _check_daily_loss(self, account: str, book: _AccountBook, now_ns: int) -> None:
        br = self.cfg.breakers.daily_loss
        limit, pct = book.loss_limit, book.loss_pct
        loss = float(book.day_open - book.equity.value)
        if limit is not None and loss > limit:
            self._trip("daily_loss", Scope.ACCOUNT, account, br.trip, limit, loss, "currency",
                       now_ns)
        if pct is not None and book.day_open > 0 and loss / float(book.day_open) * 100 > pct:
            self._trip("daily_loss_pct", Scope.ACCOUNT, account, br.trip, pct,
                       loss / float(book.day_open) * 100, "%", now_ns)

    def _check_drawdown(self, account: str, book: _AccountBook, now_ns: int) -> None:
        br = self.cfg.breakers.drawdown
        if br.max_drawdown_pct is None:
            return
        if br.scope == "ACCOUNT":
            peak, eq, scope, key = book.peak, book.equity.value, Scope.ACCOUNT, account
        else:
            eq = sum((b.equity.value for b in self.accounts.values()), ZERO)
            self._global_peak = peak = max(self._global_peak, eq)
            scope, key = Scope.GLOBAL, ""
        dd = float((peak - eq) / peak * 100) if peak > 0 else 0.0
        if dd > br.max_drawdown_pct:
            self._trip("drawdown", scope, key, br.trip, br.max_drawdown_pct, dd, "%", now_ns)

    # --- tripping -------------------------------------------------------------------------

    def _trip(
        self, check: str, scope: Scope, key: str, state: str, limit: float, value: float,
        unit: str, now_ns: int, *, until_ns: int | None = None, reason: str = "",
    ) -> bool:
        new = TradingState(state)
        reason = reason or f"circuit breaker {check}: {value:g} {unit} vs limit {limit:g} {unit}"
        change = self.states.escalate(scope, key, new, reason, now_ns, until_ns=until_ns)
        if change is None:
            return False
        self._emit(RiskBreach(
            node=self.node, bot=key if scope is Scope.STRATEGY else "", ts_event=now_ns,
            ts_init=now_ns, check=check, scope=scope, scope_key=key, limit=float(limit),
            value=float(value), unit=unit, severity=severity_for(scope, new),
            action=new.value.lower(), message=reason,
        ))
        self._emit(change)
        return True

