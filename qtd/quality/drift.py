"""Drift / decay: a bot's live (or paper/shadow) performance against its own backtest over
the same bars, replayed through :func:`qtd.backtest.run_backtest` (the live code path with a
simulated clock).

Both sides are valued on the same grid, one point per bar the bot saw (the bar's close
time): starting capital + realized PnL net of fees + open positions at the bar's close.
Fills are applied to the first bar that closes at or after them, so the live store and the
bars must share one time base (true live and shadow trading, where bars are stamped in real
time, and a paper run on a simulated clock; not an accelerated replay on the wall clock).

Figures (per-bar simple returns ``r``, ``q`` bars per year from :func:`qtd.metrics.
periods_per_year`):

* **Sharpe** (live and backtest): :func:`qtd.metrics.sharpe` (mean/std × √q, zero rate).
* **Sharpe fraction** = live Sharpe / backtest Sharpe; the gate passes when it is at least
  ``gate`` (0.8 = "within 80 %"). Undefined (and failing) when the backtest Sharpe ≤ 0.
* **Tracking error** = std(r_live − r_backtest) × √q, annualised (the standard definition,
  e.g. Grinold and Kahn, *Active Portfolio Management*, 2nd ed., 2000, ch. 4), fraction.
* **Rolling Sharpe**: Sharpe of the live returns over the last ``window`` bars at each bar;
  **decay** when the latest one is below ``floor`` (default 0.5). A window whose returns do
  not vary (the bot sat flat) has no Sharpe (:func:`qtd.metrics.sharpe_ratio`'s
  zero-dispersion rule): it is None, is not judged, and ``rolling_min`` skips it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from qtd import metrics
from qtd.events import AnyEvent, Fill, OrderIntent
from qtd.feeds import Bar, available_ns
from qtd.projections import ZERO, Projections
from qtd.sweep import Job


class DriftConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Drift thresholds (module docstring)."""

    gate: Annotated[float, Meta(ge=0)] = 0.8
    window: Annotated[int, Meta(ge=3)] = 60
    floor: float = 0.5


class DriftReport(msgspec.Struct, kw_only=True):
    """Live vs backtest of one bot over ``bars`` bars (money in the quote currency;
    ratios as fractions; None when undefined)."""

    bot: str
    symbol: str
    bars: int
    start_ns: int
    end_ns: int
    live_fills: int
    backtest_fills: int
    live_pnl: float
    backtest_pnl: float
    live_sharpe: float
    backtest_sharpe: float
    sharpe_fraction: float | None
    tracking_error: float
    rolling_sharpe: float | None
    rolling_min: float | None
    gate: float
    gate_ok: bool
    floor: float
    decay: bool
    message: str
    note: str = ""


def equity_on_bars(fills: Sequence[Fill], bars: Sequence[Bar], capital: float) -> list[float]:
    """Equity at each bar's close (module docstring): fills with ``ts_event`` up to the
    bar's close time are applied before the bar is marked."""
    proj = Projections()
    todo = sorted(fills, key=lambda f: (f.ts_event, f.seq))
    i = 0
    out: list[float] = []
    for bar in bars:
        close_t = available_ns(bar)
        while i < len(todo) and todo[i].ts_event <= close_t:
            proj.apply(todo[i])
            i += 1
        total = ZERO
        for p in proj.positions.values():
            total += p.net_realized + (p.unrealized(bar.close) if p.symbol == bar.symbol
                                       else p.unrealized())
        out.append(capital + float(total))
    return out


def rolling_sharpe(equity: Sequence[float], window: int, ppy: float) -> list[float | None]:
    """Annualised Sharpe (:func:`qtd.metrics.sharpe_ratio`) of each trailing ``window`` of
    returns, one value per bar from the ``window``-th return on; None where the window's
    returns do not vary."""
    r = metrics.returns(equity)
    return [metrics.sharpe_ratio(r[end - window:end], ppy) for end in range(window, len(r) + 1)]


def compare(bot: str, bars: Sequence[Bar], live: Sequence[Fill], backtest: Sequence[Fill],
            capital: float, cfg: DriftConfig | None = None) -> DriftReport:
    """The drift report of ``live`` fills against ``backtest`` fills on ``bars``.

    Raises:
        ValueError: fewer than 3 bars (no Sharpe can be computed).
    """
    cfg = cfg or DriftConfig()
    if len(bars) < 3:
        raise ValueError(f"bars: {len(bars)} bars in range; need at least 3")
    ts = [available_ns(b) for b in bars]
    ppy = metrics.periods_per_year(ts)
    eq_l, eq_b = equity_on_bars(live, bars, capital), equity_on_bars(backtest, bars, capital)
    s_l, s_b = metrics.sharpe(eq_l, ppy), metrics.sharpe(eq_b, ppy)
    te = metrics.tracking_error(eq_l, eq_b, ppy)
    frac = s_l / s_b if s_b > 0 else None
    roll = rolling_sharpe(eq_l, cfg.window, ppy) if len(bars) > cfg.window else []
    last = roll[-1] if roll else None
    defined = [x for x in roll if x is not None]
    gate_ok = frac is not None and frac >= cfg.gate
    decay = last is not None and last < cfg.floor
    msg = (f"{bot}: live Sharpe {s_l:.2f} vs backtest {s_b:.2f} "
           f"({'n/a' if frac is None else f'{frac:.0%}'} of it; gate {cfg.gate:.0%} "
           f"{'ok' if gate_ok else 'FAILED'}), tracking error {te:.2%}/yr"
           + _rolling_text(roll, cfg, decay))
    return DriftReport(
        bot=bot, symbol=bars[0].symbol, bars=len(bars), start_ns=ts[0], end_ns=ts[-1],
        live_fills=len(live), backtest_fills=len(backtest), live_pnl=eq_l[-1] - capital,
        backtest_pnl=eq_b[-1] - capital, live_sharpe=s_l, backtest_sharpe=s_b,
        sharpe_fraction=frac, tracking_error=te, rolling_sharpe=last,
        rolling_min=min(defined) if defined else None, gate=cfg.gate, gate_ok=gate_ok,
        floor=cfg.floor, decay=decay, message=msg)


def _rolling_text(roll: list[float | None], cfg: DriftConfig, decay: bool) -> str:
    if not roll:
        return ""
    if roll[-1] is None:
        return f", rolling {cfg.window}-bar Sharpe n/a (returns did not vary: not judged)"
    return (f", rolling {cfg.window}-bar Sharpe {roll[-1]:.2f} "
            f"{'< floor' if decay else '>= floor'} {cfg.floor:g}")


def bars_seen(bars: Sequence[Bar], since_ns: int | None, until_ns: int | None) -> list[Bar]:
    """The bars whose close time is in ``[since_ns, until_ns)`` (either bound optional)."""
    return [b for b in bars if (since_ns is None or available_ns(b) >= since_ns)
            and (until_ns is None or available_ns(b) < until_ns)]


class Aligned(msgspec.Struct, frozen=True, kw_only=True):
    """Live fills placed on the bars they were decided on (:func:`align_fills`)."""

    fills: list[Fill]
    bars: list[Bar]
    unmatched: int
    passes: int


def same_time_base(fills: Sequence[Fill], bars: Sequence[Bar]) -> bool:
    """Whether any fill falls inside the bars' time range (module docstring): False for an
    accelerated replay on the wall clock, such as ``qtd up``."""
    if not fills or not bars:
        return True
    lo, hi = bars[0].ts_ns, available_ns(bars[-1])
    return any(lo <= f.ts_event <= hi for f in fills)


def align_fills(fills: Sequence[Fill], intents: Sequence[OrderIntent],
                bars: Sequence[Bar]) -> Aligned:
    """For a store whose clock is not the bars' (an accelerated replay: ``qtd up``), place
    each live fill on the bar its order was decided on: the first bar, from the previous
    fill's bar on, whose close equals the order's ``decision_price`` (the price the strategy
    saw; the replay fills a market order at it plus slippage). The fill is re-stamped at that
    bar's close time. A replay that started over (``loop``, or ``qtd up`` run again) shows
    as a match before the previous one: only the last pass is kept (``passes`` counts them).
    Fills without a matching bar are left out (``unmatched``). The bars returned are the
    data's from its first bar to the last fill's bar."""
    decided = {i.client_order_id: i.decision_price for i in intents}
    closes = [b.close for b in bars]
    out: list[Fill] = []
    unmatched, passes, at = 0, 1, 0
    for f in sorted(fills, key=lambda x: (x.ts_event, x.seq)):
        price = decided.get(f.client_order_id)
        j = _find(closes, price, at) if price is not None else None
        if j is None and price is not None:
            j = _find(closes, price, 0)
            if j is not None:
                passes, out = passes + 1, []  # the replay started over
        if j is None:
            unmatched += 1
            continue
        at = j
        out.append(msgspec.structs.replace(f, ts_event=available_ns(bars[j])))
    return Aligned(fills=out, bars=list(bars[:at + 1]), unmatched=unmatched, passes=passes)


def _find(closes: list[Decimal], price: Decimal, start: int) -> int | None:
    try:
        return closes.index(price, start)
    except ValueError:
        return None


def live_fills(events: Sequence[AnyEvent], bot: str) -> list[Fill]:
    """The bot's fills among ``events``."""
    return [e for e in events if isinstance(e, Fill) and e.bot == bot]


async def replay_backtest(job: Job, bars: Sequence[Bar]) -> tuple[str, list[Fill]]:
    """Backtest ``job`` (a :class:`~qtd.sweep.Job`: the bot config, broker costs, risk
    file) on exactly ``bars`` through :func:`qtd.sweep.run_job` (the backtest command's own
    path); returns the bot's name and its fills.

    Raises:
        ConfigError: the bot cannot be resolved or failed to run (the error is named).
    """
    from qtd.errors import ConfigError
    from qtd.store import EventStore
    from qtd.sweep import run_job

    with tempfile.TemporaryDirectory(prefix="qtd-drift-") as tmp:
        db = Path(tmp) / "replay.db"
        res = await run_job(msgspec.structs.replace(job, db=str(db)), list(bars))
        if res.error:
            raise ConfigError(f"{job.target}: backtest replay failed: {res.error}",
                              source=job.target)
        async with await EventStore.open(db, readonly=True) as store:
            fills = await store.query(kind="Fill")
    return res.bot, [f for f in fills if isinstance(f, Fill)]
