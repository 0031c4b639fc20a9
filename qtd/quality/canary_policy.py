"""Canary rollout of a params change: the new admitted params version takes a growing share
of the bot's allocation (10 % → 25 % → 50 % → 100 % by default), each step only after it ran
its scheduled time with enough observations and its live metrics held; a rolling Sharpe
below the floor (0.5) or a drawdown beyond the limit rolls it back to the old version at
once, with a P2 page.

Self-contained and I/O-free: the caller owns the clock, the equity feed, the storage of
:class:`CanaryState` and the effects. The agent runs ``qtd deploy --canary`` versions this
way in :mod:`qtd.agent.canary_ramps` (settings: :class:`CanaryConfig`, ``[canary]`` of the agent
config). The calling pattern::

    plan = CanaryPlan()                                    # or from [canary] in its config
    ramp = CanaryRollout.start(plan, bot="momo", old_hash=old, new_hash=new, now_ns=now)
    apply_split(ramp.allocation)                           # 0.10 of the bot's allocation
    ...                                                    # runs old and new side by side
    on every bar of the canary slice (its own equity, quote currency):
        ramp.observe(bar_close_ns, canary_equity)
    on a timer (e.g. every minute) or after each observation:
        d = ramp.decide(now_ns)
        if d is not None:
            store ParamsChanged(old_hash, new_hash, accepted=d.action != "rollback",
                                reason=d.reason)          # the audit trail
            if d.action in ("advance", "promote"): apply_split(d.fraction)
            if d.action == "rollback": apply_split(0.0); notifier.notify(rollback_page(ramp))
    persist ramp.state (a msgspec Struct: JSON/KV) and resume with CanaryRollout(plan, state)

The Sharpe is :func:`qtd.metrics.sharpe_ratio` of the returns of the last ``window``
observations of the canary slice's equity (annualised with ``periods_per_year``, or inferred
from the observation times by :func:`qtd.metrics.periods_per_year`); undefined (None) when
they do not vary.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from qtd import metrics
from qtd.events import Severity
from qtd.notify import Page

Action = Literal["start", "advance", "hold", "rollback", "promote"]
Status = Literal["running", "promoted", "rolled_back"]


def _check_steps(steps: tuple[float, ...]) -> tuple[float, ...]:
    if not steps or steps[-1] != 1.0 or any(not 0 < s <= 1 for s in steps) or any(
            b <= a for a, b in pairwise(steps)):
        raise ValueError(f"steps = {steps!r}: must rise strictly within (0, 1] and end at 1.0")
    return steps


class CanaryPlan(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ramp schedule and the rules a step must pass.

    Attributes:
        steps: allocation fractions of the new version, rising, ending at 1.0.
        step_s: time each step runs before it may advance, seconds.
        min_observations: equity observations a step needs before it may advance (and
            before the Sharpe rule can roll it back).
        window: observations in the rolling Sharpe.
        rollback_sharpe: roll back when the rolling Sharpe is below this.
        max_drawdown: roll back when the canary slice's drawdown from its peak exceeds this
            fraction (0.10 = 10 %).
        periods_per_year: observations per year for the Sharpe (0: infer from times).
    """

    steps: tuple[float, ...] = (0.10, 0.25, 0.50, 1.0)
    step_s: Annotated[float, Meta(gt=0)] = 86_400.0
    min_observations: Annotated[int, Meta(ge=3)] = 20
    window: Annotated[int, Meta(ge=3)] = 20
    rollback_sharpe: float = 0.5
    max_drawdown: Annotated[float, Meta(gt=0, le=1)] = 0.10
    periods_per_year: Annotated[float, Meta(ge=0)] = 0.0

    def __post_init__(self) -> None:
        _check_steps(self.steps)


class CanaryConfig(CanaryPlan, frozen=True, kw_only=True):
    """``[canary]`` of the agent config: the ramp (:class:`CanaryPlan` fields) plus how the
    agent runs it (:mod:`qtd.agent.canary_ramps`). Every key is optional::

        [canary]
        steps = [0.10, 0.25, 0.50, 1.0]   # candidate's share of the bot's allocation
        step_s = 86400.0                  # each step runs at least this long, seconds
        min_observations = 20             # equity observations per step before advancing
        window = 20                       # observations in the rolling Sharpe
        rollback_sharpe = 0.5
        max_drawdown = 0.10
        check_s = 60.0                    # seconds between two observations/decisions
        capital = 0.0                     # the bot's allocation, quote currency (0: below)
        lot = 1.0                         # instrument lot size, units (shares: 1)
        lots = { BTCUSDT = 0.00001 }      # per-symbol lot sizes

    Attributes:
        check_s: seconds between two observations of the candidate's equity (taken only
            when its symbols had new market data) and two decisions.
        capital: the bot's allocation in its quote currency; the candidate's slice returns
            are its PnL change over ``share × capital``. 0: the bot's risk profile's
            ``max_position_notional``, else the account's ``equity`` in the risk file.
        lot: default lot size of the bot's instruments, units: split quantities are
            rounded down to a multiple of it (never above the unsplit order).
        lots: lot size per symbol, units (overrides ``lot``; Binance symbols default to
            the venue's LOT_SIZE step when the broker has loaded it).
    """

    check_s: Annotated[float, Meta(gt=0)] = 60.0
    capital: Annotated[float, Meta(ge=0)] = 0.0
    lot: Annotated[float, Meta(gt=0)] = 1.0
    lots: dict[str, Annotated[float, Meta(gt=0)]] = {}

    def plan(self) -> CanaryPlan:
        """The ramp part, as a :class:`CanaryPlan`."""
        return CanaryPlan(**{f: getattr(self, f) for f in CanaryPlan.__struct_fields__})


class CanaryDecision(msgspec.Struct, frozen=True, kw_only=True):
    """One decision: ``fraction`` is the new version's allocation after it; ``sharpe`` and
    ``drawdown`` (fraction) are the figures it was based on (None: not enough data)."""

    ts_ns: int
    action: Action
    step: int
    fraction: float
    observations: int
    sharpe: float | None = None
    drawdown: float | None = None
    reason: str = ""


class CanaryState(msgspec.Struct, kw_only=True):
    """Everything needed to resume a rollout (store it as JSON or in a KV bucket)."""

    bot: str
    old_hash: str
    new_hash: str
    status: Status = "running"
    step: int = 0
    step_started_ns: int = 0
    step_obs: int = 0
    ts: list[int] = []
    equity: list[float] = []
    peak: float = 0.0
    decisions: list[CanaryDecision] = []


class CanaryRollout:
    """One bot's ramp (module docstring for the calling pattern).

    Args:
        plan: schedule and rules.
        state: the rollout's state (new or loaded).
    """

    def __init__(self, plan: CanaryPlan, state: CanaryState) -> None:
        self.plan = plan
        self.state = state

    @classmethod
    def start(cls, plan: CanaryPlan, *, bot: str, old_hash: str, new_hash: str,
              now_ns: int) -> CanaryRollout:
        """A new rollout at the first step (its ``start`` decision recorded)."""
        st = CanaryState(bot=bot, old_hash=old_hash, new_hash=new_hash, step_started_ns=now_ns)
        ramp = cls(plan, st)
        ramp._record(now_ns, "start", f"canary {new_hash[:12]} of {bot} at "
                     f"{plan.steps[0]:.0%} (was {old_hash[:12]})")
        return ramp

    @property
    def allocation(self) -> float:
        """The new version's share of the bot's allocation now (0.0 after a rollback)."""
        if self.state.status == "rolled_back":
            return 0.0
        return self.plan.steps[self.state.step]

    def observe(self, ts_ns: int, equity: float) -> None:
        """One equity observation of the canary slice (quote currency), e.g. per bar."""
        st = self.state
        keep = max(self.plan.window, self.plan.min_observations) + 1
        st.ts = [*st.ts[-(keep - 1):], ts_ns]
        st.equity = [*st.equity[-(keep - 1):], equity]
        st.peak = max(st.peak, equity)
        st.step_obs += 1

    def figures(self) -> tuple[float | None, float | None]:
        """(rolling Sharpe, drawdown from peak as a fraction); None when undefined: fewer
        than ``window + 1`` observations, or returns that do not vary over the window (a
        slice that did not move is no evidence either way: it neither advances nor is
        rolled back on the Sharpe rule)."""
        st, w = self.state, self.plan.window
        dd = (st.peak - st.equity[-1]) / st.peak if st.equity and st.peak > 0 else None
        if len(st.equity) < w + 1:
            return None, dd
        eq, ts = st.equity[-(w + 1):], st.ts[-(w + 1):]
        ppy = self.plan.periods_per_year or metrics.periods_per_year(ts)
        return metrics.sharpe_ratio(metrics.returns(eq), ppy), dd

    def decide(self, now_ns: int) -> CanaryDecision | None:
        """Roll back, advance, promote, or nothing (None). Call it on a timer or after
        each observation; a finished rollout always answers None."""
        st, plan = self.state, self.plan
        if st.status != "running":
            return None
        sharpe, dd = self.figures()
        enough = st.step_obs >= plan.min_observations and sharpe is not None
        if dd is not None and dd > plan.max_drawdown:
            st.status = "rolled_back"
            return self._record(now_ns, "rollback", f"drawdown {dd:.1%} > "
                                f"{plan.max_drawdown:.1%}", sharpe, dd)
        if enough and sharpe is not None and sharpe < plan.rollback_sharpe:
            st.status = "rolled_back"
            return self._record(now_ns, "rollback", f"rolling Sharpe {sharpe:.2f} < "
                                f"{plan.rollback_sharpe:g} over {plan.window} observations",
                                sharpe, dd)
        if now_ns - st.step_started_ns < plan.step_s * 1e9 or not enough:
            return None
        if st.step + 1 >= len(plan.steps):
            st.status = "promoted"
            return self._record(now_ns, "promote", f"held at 100% for {plan.step_s:g} s: "
                                f"the new version is the bot's params", sharpe, dd)
        st.step += 1
        st.step_started_ns, st.step_obs = now_ns, 0
        return self._record(now_ns, "advance", f"step held (Sharpe {sharpe:.2f} >= "
                            f"{plan.rollback_sharpe:g}): {plan.steps[st.step - 1]:.0%} -> "
                            f"{plan.steps[st.step]:.0%}", sharpe, dd)

    def _record(self, now_ns: int, action: Action, reason: str, sharpe: float | None = None,
                dd: float | None = None) -> CanaryDecision:
        d = CanaryDecision(ts_ns=now_ns, action=action, step=self.state.step,
                           fraction=self.allocation, observations=self.state.step_obs,
                           sharpe=sharpe, drawdown=dd, reason=reason)
        self.state.decisions.append(d)
        return d


def rollback_page(ramp: CanaryRollout) -> Page:
    """The P2 page for a rolled-back canary (send it with :meth:`qtd.notify.Notifier.notify`).

    Raises:
        ValueError: the rollout was not rolled back.
    """
    st = ramp.state
    if st.status != "rolled_back" or not st.decisions:
        raise ValueError(f"canary of {st.bot}: status {st.status}, not rolled_back")
    d = st.decisions[-1]
    return Page(
        alert_id=f"canary-{st.new_hash[:8]}", key=f"canary:{st.bot}", severity=Severity.P2,
        title=f"canary rollback: {st.bot} back to {st.old_hash[:12]}",
        trigger="canary_rollback", limit=ramp.plan.rollback_sharpe, value=d.sharpe,
        unit="Sharpe", bot=st.bot, message=f"{d.reason}; new params {st.new_hash[:12]} had "
        f"{ramp.plan.steps[d.step]:.0%} of the allocation", ts_ns=d.ts_ns)
