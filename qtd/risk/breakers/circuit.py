"""The engine's circuit breakers: the account equity books and trade outcomes they watch,
kept from fills, marks and transfers, dispatched to the enabled breakers.

Equity of an account = configured ``equity`` + Σ over its positions of (realised − fees +
unrealised at the last mark), from :class:`qtd.projections.Projections`. A *trade* is a fill
that realises PnL (it closes some of a position); its PnL is the realised amount net of the
fill's fee in the position currency.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING

import msgspec

from qtd.events import Event, Fill, LimitUsage
from qtd.projections import Position, Projections, TradingDay
from qtd.risk.breakers.base import AccountBook, Breaker, BreakerConfig, BreakerContext, Tripper
from qtd.risk.exposure import ZERO, Cell, MarkCell
from qtd.risk.trading_states import TradingStates

if TYPE_CHECKING:
    from qtd.risk.config import RiskConfig

PosKey = tuple[str, str, str]


class CircuitBreakers:
    """Every enabled circuit breaker of one engine, and the books they read.

    Args:
        cfg: the risk config (``[breakers.<name>]`` tables and account equity).
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
        self.proj, self.marks = projections, marks
        self.day = TradingDay(cfg.trading_day_tz, cfg.trading_day_rollover)
        self._books = {name: AccountBook(Decimal(str(a.equity)))
                       for name, a in cfg.accounts.items()}
        ctx = BreakerContext(cfg.accounts, self._books, self.day, Tripper(states, emit, node))
        configs: dict[str, BreakerConfig] = msgspec.structs.asdict(cfg.breakers)
        self.enabled: dict[str, Breaker] = {}
        """Breaker name -> the breaker, for those its config enables (registry order)."""
        for name, bcfg in configs.items():
            breaker = bcfg.build(ctx)
            if breaker is not None:
                self.enabled[name] = breaker
        on = self.enabled.values()
        self._trade = [b for b in on if type(b).on_trade is not Breaker.on_trade]
        self._fill = [b for b in on if type(b).on_fill is not Breaker.on_fill]
        self._equity = [b for b in on if type(b).on_equity is not Breaker.on_equity]
        self._broker = [b for b in on if type(b).on_broker_result is not Breaker.on_broker_result]
        self._usage = [b for b in on if type(b).usage is not Breaker.usage]
        self._realized: dict[PosKey, Decimal] = {}
        # symbol -> account -> that account's positions in the symbol (projection objects),
        # for the accounts re-valued at every mark (:meth:`equity`)
        self._by_symbol: dict[str, dict[str, list[Position]]] = {}
        # accounts whose equity is kept at every mark: every account when a breaker watches
        # equity, else those whose cell a reader holds (see equity); the others' equity is
        # derived when read (equity_now): a mark re-values nobody's position for nothing
        self._tracked: set[str] = set(self._books) if self._equity else set()

    def equity(self, account: str) -> Cell:
        """The account's current equity (currency), a cell kept current on fills and marks
        from now on (a pre-trade check holds it: the account is re-valued at every mark)."""
        book = self._books.get(account)
        if book is None:
            return Cell(ZERO)
        if account not in self._tracked:
            self._tracked.add(account)
            for pos in book.positions:
                self._index(account, pos)
            self._revalue(book)
            book.equity.value = book.base + book.unreal_total
        return book.equity

    def equity_now(self, account: str) -> Decimal:
        """The account's equity at the last marks (currency), derived now: configured
        equity + Σ its positions' realised − fees + unrealised (0 for an unknown account).
        For occasional readers (telemetry): it does not make marks re-value the account."""
        book = self._books.get(account)
        if book is None:
            return ZERO
        if account in self._tracked:
            return book.equity.value
        total, marks = book.start, self.marks
        for pos in book.positions:
            total += pos.net_realized
            if pos.qty:
                mark = marks.get(pos.symbol)
                total += pos.unrealized(mark.price if mark is not None else None)
        return total

    def _index(self, account: str, pos: Position) -> None:
        self._by_symbol.setdefault(pos.symbol, {}).setdefault(account, []).append(pos)

    def usage(self, bot: str, account: str, now_ns: int) -> list[LimitUsage]:
        """Every enabled breaker's limits binding ``bot`` on ``account`` with their current
        use (each breaker's own figure, :meth:`Breaker.usage`), in registry order."""
        return [u for b in self._usage for u in b.usage(bot, account, now_ns)]

    # --- inputs ---------------------------------------------------------------------------

    def on_fill(self, fill: Fill, now_ns: int) -> None:
        """A fill was applied to the projections: update trade stats and PnL breakers."""
        key = (fill.bot, fill.account, fill.symbol)
        pos = self.proj.positions.get(key)
        if pos is None:
            return
        book = self._books.get(fill.account)
        if key not in self._realized and book is not None:
            book.positions.append(pos)
            if fill.account in self._tracked:
                self._index(fill.account, pos)
        before = self._realized.get(key, ZERO)
        self._realized[key] = pos.realized
        fee = fill.commission if fill.commission_currency == fill.currency else ZERO
        if pos.realized != before:
            pnl = float(pos.realized - before - fee)
            for b in self._trade:
                b.on_trade(fill.bot, pnl, now_ns)
        for b in self._fill:
            b.on_fill(fill.bot, now_ns)
        if fill.account in self._tracked:  # the others' equity is derived when read
            self._update_account(fill.account, now_ns)

    def on_mark(self, symbol: str, now_ns: int) -> None:
        """The symbol's mark moved: re-value the tracked accounts' positions in it (O(positions
        in the symbol), not O(the account's positions); see :meth:`equity` for which
        accounts are tracked: none when nothing reads equity). An account flat in the symbol is
        skipped unless its trading day rolled over: its equity did not change, so neither
        did any breaker's reading."""
        held = self._by_symbol.get(symbol)
        if not held:
            return
        cell = self.marks.get(symbol)
        price = cell.price if cell is not None else None
        books = self._books
        for account, positions in held.items():
            book = books[account]  # positions are indexed only for configured accounts
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
        for b in self._broker:
            b.on_broker_result(account, ok, now_ns)

    def on_transfer(self, account: str, now_ns: int) -> None:
        """A position transfer moved cost (and may have realized PnL) between two bot ids of
        ``account``: re-derive its equity."""
        self._update_account(account, now_ns)

    # --- account equity -------------------------------------------------------------------

    def _update_account(self, account: str, now_ns: int) -> None:
        """Re-derive the account's equity from its positions (after a fill or transfer)."""
        book = self._books.get(account)
        if book is None:
            return
        self._revalue(book)
        self._check_account(account, book, now_ns)

    def _revalue(self, book: AccountBook) -> None:
        """Re-derive ``book``'s base and unrealised PnL from its positions."""
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

    def _check_account(self, account: str, book: AccountBook, now_ns: int) -> None:
        """Publish the account's equity (``base + unreal_total``), roll its day open and
        peak, and run the breakers that watch equity."""
        eq = book.base + book.unreal_total
        book.equity.value = eq
        day = self.day.label(now_ns)
        if day != book.day:
            book.day, book.day_open = day, eq
        if eq > book.peak:
            book.peak = eq
        for b in self._equity:
            b.on_equity(account, book, now_ns)
