"""What one bot's row shows, computed once for the server-rendered page and the live frame
(so the two cannot disagree): position text, effective state and why, top deny reasons,
stage, and the labels and levels of its limit bars.

Levels of a utilisation (fraction of the limit): ``ok`` below 70 %, ``warm`` from 70 %,
``hot`` from 90 % (the bar turns red before the limit denies orders).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from qtd.fleetsnapshot import Agg, BotView, FleetSnapshot, LimitView, since_text, why_text

WARM = 0.7
HOT = 0.9
_SHORT = {
    "max_position_qty": "pos qty", "max_position_notional": "pos ntl",
    "max_position_pct_equity": "pos %eq", "max_gross_notional": "gross",
    "max_net_notional": "net", "max_open_orders": "open ord", "max_orders_per_s": "ord/s",
    "max_trades_per_day": "ord/day", "max_daily_loss": "day loss",
    "max_daily_loss_pct": "day loss%",
}
_WHERE = {"STRATEGY": "bot", "ACCOUNT": "acct"}
BotKey = tuple[str, str]


def level(frac: float) -> str:
    """``ok``, ``warm`` or ``hot`` (module docstring), on the whole percent the page shows
    (the browser colours live updates by the same rule)."""
    return _level(pct(frac))


def _level(p: int) -> str:
    return "hot" if p >= HOT * 100 else "warm" if p >= WARM * 100 else "ok"


def positions_by_bot(snap: FleetSnapshot) -> dict[BotKey, str]:
    """``"SPY +6 QQQ -5"`` per (node, bot) with open positions (others are flat)."""
    out: dict[BotKey, list[str]] = {}
    for p in snap.positions:
        out.setdefault((p.node, p.bot), []).append(f"{p.symbol} {p.qty:+g}")
    return {k: " ".join(v) for k, v in out.items()}


def bot_state(b: BotView) -> str:
    """The bot's effective state (:mod:`qtd.leader.why`: its own combined with its node's,
    its agent's scopes and the fleet's kills): ACTIVE, REDUCING, STOPPED, HALTED, UNKNOWN."""
    return b.effective_state or "UNKNOWN"


def bot_why(b: BotView, now_ns: int) -> str:
    """Why the bot is not ACTIVE and since when ("" when it is)::

        breaker consecutive_losses 1 vs limit 1 trades (STRATEGY momo on node-a) · since
        08:41:03 UTC (5m 12s)
    """
    text = why_text(b.causes, bot_state(b))
    since = since_text(b.since_ns, now_ns)
    return f"{text} · {since}" if text and since else text


def denials(b: BotView, n: int = 3) -> str:
    """The bot's top ``n`` deny reasons: ``max_position_qty 12, trading_state 3``."""
    return ", ".join(f"{d.check} {d.count}" for d in b.deny_reasons[:n])


def limit_label(lim: LimitView) -> str:
    """Short bar label: where (``bot``, ``acct`` or the symbol) and what, e.g. ``bot gross``."""
    return f"{_WHERE.get(lim.scope, lim.key)} {_SHORT.get(lim.name, lim.name)}"


def limit_title(lim: LimitView, currency: str) -> str:
    """Tooltip: ``STRATEGY momo max_gross_notional <= 40,000.00 USD`` (what the bar
    measures; the bar itself shows the live use in percent)."""
    unit = currency if lim.unit == "currency" else lim.unit
    return f"{lim.scope} {lim.key} {lim.name} <= {lim.limit:,.2f} {unit}"


class Bar(NamedTuple):
    """One limit bar of a bot's row: colour :func:`level`, tooltip (:func:`limit_title`),
    fill class (0, 5, ... 100: app.css ``.f0`` .. ``.f100``) and text (label and percent)."""

    level: str
    title: str
    fill: int
    text: str


def limit_bars(limits: Iterable[LimitView], currency: str) -> list[Bar]:
    """The bars of a bot's limits, in order (computed here, not per cell in the template:
    500 bots x 12 limits)."""
    out = []
    for x in limits:
        p = pct(x.utilisation)
        out.append(Bar(_level(p), limit_title(x, currency), _fill(p), f"{limit_label(x)} {p}%"))
    return out


def fill(frac: float) -> int:
    """The fill class of a utilisation bar: 0, 5, ... 100 (app.css ``.f0`` .. ``.f100``)."""
    return _fill(pct(frac))


def _fill(p: int) -> int:
    return round(min(p, 100) / 5) * 5


def layout(limits: Iterable[LimitView]) -> str:
    """The bar labels joined by ``|`` (the page rebuilds a row's bars when it changes)."""
    return "|".join(limit_label(x) for x in limits)


def pct(frac: float) -> int:
    """Utilisation in whole percent for the live frame (capped at 999)."""
    return min(999, max(0, round(frac * 100)))


def counts(a: Agg, n: int = 4) -> str:
    """``orders/fills/rejects/denials`` (the first ``n``; the fleet shows three, spaced)."""
    values = (a.orders, a.fills, a.rejects, a.denials)[:n]
    return (" / " if n == 3 else "/").join(str(v) for v in values)
