"""Agent telemetry and the leader fail-safe (pure logic; the daemon does the I/O).

* :func:`pnl_snapshots` — one :class:`~qtd.events.PnLSnapshot` per bot (realized net of fees,
  unrealized at the risk engine's last marks), published on ``<prefix>.pnl.<node>.<bot>``;
  given the bot slots it also carries each bot's stage, state and what sets it
  (:func:`state_why`: the scope and key, or its runner and why) and risk limits with their
  current use (:func:`bot_limits`), for the status page's state causes and cap bars.
* :class:`FailSafe` — watches the leader's heartbeat. When it has been silent longer than
  ``timeout_s`` the GLOBAL scope is escalated to the policy state (default REDUCING). Before
  any leader heartbeat was ever seen, the silence is counted from the agent's start, so an
  agent that never hears a leader applies the policy ``timeout_s`` after it started. ACTIVE is
  restored only when the leader is back, no kill is set, and GLOBAL is still exactly the
  state the fail-safe set (a kill or a breaker that escalated further is never lifted here).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import NamedTuple

from qtd.agent.supervisor import BotSlot
from qtd.events import LimitUsage, PnLSnapshot, Scope, TradingState, TradingStateChanged
from qtd.projections import Projections
from qtd.risk.config import Limits
from qtd.risk.engine import RiskEngine
from qtd.risk.exposure import Exposure
from qtd.risk.trading_states import TradingStates
from qtd.runner import BotState

ZERO = Decimal(0)
FAILSAFE_OPERATOR = "failsafe"
REASON_CHARS = 300  # a runner's reason on every PnL tick (a strategy's error message)
_RANK = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}
_POSITION = (("max_position_qty", "units"), ("max_position_notional", "currency"),
             ("max_position_pct_equity", "%"))
_FLOW = (("max_open_orders", "orders"), ("max_orders_per_s", "orders/s"),
         ("max_trades_per_day", "orders"))


def pnl_snapshots(proj: Projections, risk: RiskEngine, node: str, now_ns: int,
                  bots: Mapping[str, str], slots: Mapping[str, BotSlot] | None = None
                  ) -> list[PnLSnapshot]:
    """PnL per bot (quote currency), at the engine's last marks.

    Args:
        bots: bot name → account (bots without positions get a zero snapshot).
        slots: the agent's bot slots: adds ``stage``, ``state`` and ``limits`` to the
            snapshot of every bot found there.
    """
    acc: dict[str, list[Decimal]] = {b: [ZERO, ZERO, ZERO] for b in bots}
    currency: dict[str, str] = {}
    for p in proj.positions.values():
        row = acc.setdefault(p.bot, [ZERO, ZERO, ZERO])
        mark = risk.marks.get(p.symbol)
        row[0] += p.net_realized
        row[1] += p.unrealized(mark.price if mark is not None else None)
        row[2] += p.fees
        currency[p.bot] = p.currency
    day = proj.trading_day.label(now_ns)
    out = []
    for bot, (r, u, f) in sorted(acc.items()):
        account = bots.get(bot, "")
        slot = slots.get(bot) if slots is not None else None
        stage = ""
        why = StateWhy()
        limits: list[LimitUsage] = []
        if slot is not None:
            syms = slot.spec.symbols
            stage = slot.stage
            why = state_why(risk, bot, account, syms, slot.state, slot.reason, now_ns)
            limits = bot_limits(risk, bot, account, syms, now_ns)
        out.append(PnLSnapshot(node=node, bot=bot, ts_event=now_ns, ts_init=now_ns,
                               account=account, realized=r, unrealized=u, fees=f,
                               currency=currency.get(bot, "USD"), trading_day=day,
                               stage=stage, state=why.state, limits=limits,
                               state_scope=why.scope, state_key=why.key,
                               state_reason=why.reason))
    return out


class StateWhy(NamedTuple):
    """A bot's state and what sets it (see :class:`~qtd.events.PnLSnapshot`)."""

    state: str = ""
    scope: str = ""
    key: str = ""
    reason: str = ""


def bot_state(risk: RiskEngine, bot: str, account: str, symbols: Sequence[str],
              runner: BotState, now_ns: int) -> str:
    """The bot's state as an operator reads it (see :func:`state_why`)."""
    return state_why(risk, bot, account, symbols, runner, "", now_ns).state


def state_why(risk: RiskEngine, bot: str, account: str, symbols: Sequence[str],
              runner: BotState, runner_reason: str, now_ns: int) -> StateWhy:
    """The bot's state and what sets it: ``HALTED`` or ``STOPPED`` by its ``RUNNER`` when
    the runner is (a strategy error beyond its restarts, or its feed ended; ``runner_reason``
    says which, cut to ``REASON_CHARS``), else the most restrictive trading state over its
    GLOBAL, ACCOUNT, STRATEGY and SYMBOL scopes (ACTIVE, REDUCING, HALTED) with the scope
    and key that set it (the widest one on a tie). A REDUCING cooldown that ran out expires
    here, as at the next order check, and its state change is stored with the engine's next
    events."""
    if runner in (BotState.HALTED, BotState.STOPPED):
        return StateWhy(runner.value, "RUNNER", bot, runner_reason[:REASON_CHARS])
    worst = (TradingState.ACTIVE, Scope.GLOBAL, "")
    for symbol in symbols or ("",):
        found = risk.states.effective(account, bot, symbol, now_ns)
        if _RANK[found[0]] > _RANK[worst[0]]:
            worst = found
    if worst[0] is TradingState.ACTIVE:
        return StateWhy(TradingState.ACTIVE.value)
    return StateWhy(worst[0].value, worst[1].value, worst[2])


def bot_limits(risk: RiskEngine, bot: str, account: str, symbols: Sequence[str],
               now_ns: int) -> list[LimitUsage]:
    """Every configured limit that binds the bot, with its current use (read-only: no
    exposure or counter is created).

    Position limits (``max_position_qty`` units, ``max_position_notional`` currency,
    ``max_position_pct_equity`` % of the account's equity) are measured on the worst-case
    position (filled plus open orders on the larger side, as the pre-trade check sees it) at
    the engine's last mark, in the bot's most used symbol: at STRATEGY scope the bot's own
    position, at ACCOUNT scope the account's, at SYMBOL scope the node's. At STRATEGY scope
    also ``max_gross_notional`` / ``max_net_notional`` (over the bot's symbols). Flow limits
    (``max_open_orders``, ``max_orders_per_s`` over the last second, ``max_trades_per_day``)
    at STRATEGY and ACCOUNT scope. Then each circuit breaker's own figures
    (:meth:`~qtd.risk.breakers.CircuitBreakers.usage`): ``max_daily_loss`` (currency) and
    ``max_daily_loss_pct`` (% of the day's opening equity) of the account's daily-loss
    breaker (its own limit, else ``[breakers.daily_loss]``); a gain counts as 0.
    """
    cfg = risk.cfg
    out: list[LimitUsage] = []
    equity = risk.breakers.equity_now(account)
    scfg = cfg.strategy(bot)
    acfg = cfg.accounts.get(account)
    if scfg is not None:
        own = [(s, risk.exposures.get(("B", bot, account, s))) for s in symbols]
        out += _position(risk, Scope.STRATEGY, bot, scfg, own, equity)
        out += _book(risk, bot, scfg, own)
        out += _flow(risk, Scope.STRATEGY, bot, scfg, now_ns)
    if acfg is not None:
        acct = [(s, risk.exposures.get(("A", account, s))) for s in symbols]
        out += _position(risk, Scope.ACCOUNT, account, acfg, acct, equity)
        out += _flow(risk, Scope.ACCOUNT, account, acfg, now_ns)
        out += risk.breakers.usage(bot, account, now_ns)  # each breaker's own figure
    for s in symbols:
        ycfg = cfg.symbols.get(s)
        if ycfg is not None:
            out += _position(risk, Scope.SYMBOL, s, ycfg, [(s, risk.exposures.get(("Y", s)))],
                             equity)
    return out


def _price(risk: RiskEngine, symbol: str) -> Decimal:
    mark = risk.marks.get(symbol)
    return mark.price if mark is not None and mark.price is not None else ZERO


def _position(risk: RiskEngine, scope: Scope, key: str, lim: Limits,
              exps: Iterable[tuple[str, Exposure | None]], equity: Decimal) -> list[LimitUsage]:
    qty = {s: e.gross() for s, e in exps if e is not None}
    notional = {s: q * _price(risk, s) for s, q in qty.items()}
    out = []
    for field, unit in _POSITION:
        limit = getattr(lim, field)
        if limit is None:
            continue
        values = qty if field == "max_position_qty" else notional
        worst = max(values, key=values.__getitem__, default="")
        used = values.get(worst, ZERO)
        if field == "max_position_pct_equity":
            used = used * 100 / equity if equity > 0 else ZERO
        out.append(LimitUsage(name=field, scope=scope,
                              key=worst or key if scope is Scope.SYMBOL else key,
                              limit=float(limit), used=float(used), unit=unit))
    return out


def _book(risk: RiskEngine, bot: str, lim: Limits, exps: list[tuple[str, Exposure | None]]
          ) -> list[LimitUsage]:
    gross = buy = sell = ZERO
    for s, e in exps:
        if e is not None:
            px = _price(risk, s)
            gross += e.gross() * px
            buy += e.worst(True) * px
            sell += e.worst(False) * px
    out = []
    for field, used in (("max_gross_notional", gross),
                        ("max_net_notional", max(abs(buy), abs(sell)))):
        limit = getattr(lim, field, None)
        if limit is not None:
            out.append(LimitUsage(name=field, scope=Scope.STRATEGY, key=bot,
                                  limit=float(limit), used=float(used), unit="currency"))
    return out


def _flow(risk: RiskEngine, scope: Scope, key: str, lim: Limits, now_ns: int
          ) -> list[LimitUsage]:
    c = risk.counters.get((scope, key))
    day = risk.day.label(now_ns)
    out = []
    for field, unit in _FLOW:
        limit = getattr(lim, field)
        if limit is None:
            continue
        used = 0 if c is None else (c.open_orders if field == "max_open_orders" else
                                    c.in_last_second(now_ns) if field == "max_orders_per_s"
                                    else c.today(day))
        out.append(LimitUsage(name=field, scope=scope, key=key, limit=float(limit),
                              used=float(used), unit=unit))
    return out


class FailSafe:
    """Leader-absence policy (module docstring).

    Args:
        policy: ``"REDUCING"``, ``"HALTED"`` or ``"NONE"`` (only report).
        timeout_s: leader silence that counts as absence, seconds.
        states: the risk engine's trading states.
        started: monotonic time (s) the agent started.
    """

    def __init__(self, policy: str, timeout_s: float, states: TradingStates,
                 started: float) -> None:
        self.policy = None if policy == "NONE" else TradingState(policy)
        self.timeout_s, self.states, self.started = timeout_s, states, started
        self.seen_at: float | None = None
        self.owned = False
        self.absent = False

    def adopt(self, last_global: TradingStateChanged | None) -> None:
        """After a restart: own the restored GLOBAL state if the fail-safe set it."""
        self.owned = (self.policy is not None and last_global is not None
                      and last_global.operator == FAILSAFE_OPERATOR
                      and last_global.new is self.policy
                      and self.states.get(Scope.GLOBAL) is self.policy)

    def on_leader_heartbeat(self, mono: float) -> None:
        self.seen_at = mono

    def silence_s(self, mono: float) -> float:
        """Seconds since the last leader heartbeat (since start if none yet)."""
        return mono - (self.seen_at if self.seen_at is not None else self.started)

    def evaluate(self, mono: float, now_ns: int, kill_active: bool
                 ) -> TradingStateChanged | None:
        """Apply or lift the policy; returns the state change to store, if any."""
        self.absent = self.silence_s(mono) > self.timeout_s
        if self.policy is None:
            return None
        if self.absent and not self.owned:
            change = self.states.escalate(
                Scope.GLOBAL, "", self.policy,
                f"failsafe: no leader heartbeat for {self.silence_s(mono):.1f} s "
                f"(leader_timeout_s={self.timeout_s})", now_ns, operator=FAILSAFE_OPERATOR)
            self.owned = change is not None
            return change
        if self.absent or not self.owned or kill_active:
            return None
        if self.states.get(Scope.GLOBAL) is not self.policy:
            self.owned = False  # something else changed GLOBAL since: not ours to lift
            return None
        self.owned = False
        return self.states.resume(Scope.GLOBAL, "", FAILSAFE_OPERATOR,
                                  "failsafe: leader heartbeat back", now_ns)
