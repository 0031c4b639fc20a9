"""Agent telemetry and the leader fail-safe (pure logic; the daemon does the I/O).

* :func:`pnl_snapshots` — one :class:`~qtd.events.PnLSnapshot` per bot (realized net of fees,
  unrealized at the risk engine's last marks), published on ``<prefix>.pnl.<node>.<bot>``.
* :class:`FailSafe` — watches the leader's heartbeat. When it has been silent longer than
  ``timeout_s`` the GLOBAL scope is escalated to the policy state (default REDUCING). Before
  any leader heartbeat was ever seen, the silence is counted from the agent's start, so an
  agent that never hears a leader applies the policy ``timeout_s`` after it started. ACTIVE is
  restored only when the leader is back, no kill is set, and GLOBAL is still exactly the
  state the fail-safe set (a kill or a breaker that escalated further is never lifted here).
"""

from __future__ import annotations

from decimal import Decimal

from qtd.events import PnLSnapshot, Scope, TradingState, TradingStateChanged
from qtd.projections import Projections
from qtd.risk.engine import RiskEngine
from qtd.risk.states import TradingStates

ZERO = Decimal(0)
FAILSAFE_OPERATOR = "failsafe"


def pnl_snapshots(proj: Projections, risk: RiskEngine, node: str, now_ns: int,
                  bots: dict[str, str]) -> list[PnLSnapshot]:
    """PnL per bot (quote currency), at the engine's last marks.

    Args:
        bots: bot name → account (bots without positions get a zero snapshot).
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
    return [
        PnLSnapshot(node=node, bot=bot, ts_event=now_ns, ts_init=now_ns,
                    account=bots.get(bot, ""), realized=r, unrealized=u, fees=f,
                    currency=currency.get(bot, "USD"), trading_day=day)
        for bot, (r, u, f) in sorted(acc.items())
    ]


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
