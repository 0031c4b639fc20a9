"""Canary rollout ramp (qtd.quality.canary_policy): schedule, holds, rollback with a page, resume
from stored state, and the rules checked on a real paper run's equity (GOOG daily bars)."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import pytest

from qtd import metrics
from qtd.events import Severity
from qtd.quality.canary_policy import CanaryPlan, CanaryRollout, CanaryState, rollback_page
from qtd.sweep import Job, run_job

ROOT = Path(__file__).resolve().parents[2]
H = 3600 * 1_000_000_000  # one hour in ns
T0 = 1_764_000_000_000_000_000
PLAN = CanaryPlan(step_s=20 * 3600, min_observations=20, window=20, periods_per_year=252 * 7)


def _healthy(t: int) -> float:
    return 100_000.0 * (1 + 0.001 * t + 0.0004 * math.sin(t))


def _run(ramp: CanaryRollout, curve: list[float], start: int = 0) -> list[tuple[int, str, float]]:
    out = []
    for i, eq in enumerate(curve, start):
        now = T0 + i * H
        ramp.observe(now, eq)
        d = ramp.decide(now)
        if d is not None:
            out.append((i, d.action, d.fraction))
    return out


def test_healthy_canary_ramps_10_25_50_100_then_promotes() -> None:
    ramp = CanaryRollout.start(PLAN, bot="momo", old_hash="a" * 64, new_hash="b" * 64,
                               now_ns=T0)
    assert ramp.allocation == 0.10
    steps = _run(ramp, [_healthy(t) for t in range(1, 200)])
    assert [(a, f) for _, a, f in steps] == [("advance", 0.25), ("advance", 0.5),
                                             ("advance", 1.0), ("promote", 1.0)]
    # each step ran its 20 h (observations hourly, one per index)
    assert [i for i, _, _ in steps] == [20, 40, 60, 80]
    assert ramp.state.status == "promoted" and ramp.decide(T0 + 500 * H) is None
    assert ramp.state.decisions[0].action == "start"


def test_degrading_canary_is_rolled_back_and_paged() -> None:
    ramp = CanaryRollout.start(PLAN, bot="momo", old_hash="a" * 64, new_hash="b" * 64,
                               now_ns=T0)
    good = [_healthy(t) for t in range(1, 30)]
    bad = [good[-1] * (1 - 0.0008 * k + 0.0003 * math.sin(k)) for k in range(1, 60)]
    steps = _run(ramp, good + bad)
    assert steps[0][1:] == ("advance", 0.25)
    i, action, frac = steps[-1]
    assert (action, frac) == ("rollback", 0.0) and ramp.allocation == 0.0
    d = ramp.state.decisions[-1]
    assert d.sharpe is not None and d.sharpe < 0.5
    # the Sharpe it acted on is the window's Sharpe, recomputed here independently
    eq = (good + bad)[i - 20:i + 1]
    assert d.sharpe == pytest.approx(metrics.sharpe(eq, PLAN.periods_per_year))
    page = rollback_page(ramp)
    assert page.severity is Severity.P2 and page.bot == "momo"
    assert "back to aaaaaaaaaaaa" in page.title and "Sharpe" in page.message
    assert ramp.decide(T0 + 1000 * H) is None  # finished


def test_no_advance_without_enough_observations_and_drawdown_rollback() -> None:
    ramp = CanaryRollout.start(PLAN, bot="x", old_hash="o", new_hash="n", now_ns=T0)
    for t in range(1, 6):
        ramp.observe(T0 + t * H, _healthy(t))
    assert ramp.decide(T0 + 100 * H) is None and ramp.allocation == 0.10  # 5 < 20 obs
    ramp.observe(T0 + 101 * H, _healthy(5) * 0.85)  # -15 % from the peak
    d = ramp.decide(T0 + 101 * H)
    assert d is not None and d.action == "rollback" and "drawdown" in d.reason
    assert d.drawdown == pytest.approx(0.15, abs=1e-3)


def test_state_survives_a_restart_as_json() -> None:
    ramp = CanaryRollout.start(PLAN, bot="momo", old_hash="o", new_hash="n", now_ns=T0)
    curve = [_healthy(t) for t in range(1, 200)]
    first = _run(ramp, curve[:30])
    blob = msgspec.json.encode(ramp.state)
    resumed = CanaryRollout(PLAN, msgspec.json.decode(blob, type=CanaryState))
    rest = _run(resumed, curve[30:], start=30)
    uninterrupted = CanaryRollout.start(PLAN, bot="momo", old_hash="o", new_hash="n",
                                        now_ns=T0)
    assert first + rest == _run(uninterrupted, curve)


def test_bad_plan_is_rejected_naming_the_steps() -> None:
    with pytest.raises(msgspec.ValidationError, match="steps"):
        msgspec.convert({"steps": [0.1, 0.5, 0.4, 1.0]}, CanaryPlan)
    with pytest.raises(msgspec.ValidationError, match="steps"):
        msgspec.convert({"steps": [0.1, 0.5]}, CanaryPlan)


async def test_rules_hold_on_a_real_paper_runs_equity() -> None:
    """momo-goog's paper equity on GOOG daily bars as the canary slice: every advance was
    taken on a Sharpe at or above the floor, a rollback (if any) on one below it."""
    res = await run_job(Job(target=str(ROOT / "etc/bots/momo-goog.toml"), data="goog_1d"))
    assert res.report is not None and len(res.curve_equity) > 2000
    plan = CanaryPlan(step_s=30 * 86_400, min_observations=20, window=20, max_drawdown=0.5)
    ramp = CanaryRollout.start(plan, bot="momo-goog", old_hash="o", new_hash="n",
                               now_ns=res.curve_ts[0])
    for ts, eq in zip(res.curve_ts, res.curve_equity, strict=True):
        ramp.observe(ts, eq)
        ramp.decide(ts)
    acts = ramp.state.decisions[1:]
    assert acts, "the ramp never moved"
    ppy = metrics.periods_per_year(res.curve_ts)
    for d in acts:
        i = res.curve_ts.index(d.ts_ns)
        expected = metrics.sharpe(res.curve_equity[i - 20:i + 1], ppy)
        assert d.sharpe == pytest.approx(expected)
        assert (d.sharpe < 0.5) == (d.action == "rollback")
