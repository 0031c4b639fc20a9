"""What one bot's row shows, computed once for the server-rendered page and the live frame
(so the two cannot disagree): position text, state, stage, and the labels and levels of its
limit bars.

Levels of a utilisation (fraction of the limit): ``ok`` below 70 %, ``warm`` from 70 %,
``hot`` from 90 % (the bar turns red before the limit denies orders).
"""

from __future__ import annotations

from collections.abc import Iterable

from qtd.leader.snapshot import Agg, BotView, FleetSnapshot, KillView, LimitView

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
    p = pct(frac)
    return "hot" if p >= HOT * 100 else "warm" if p >= WARM * 100 else "ok"


def positions_by_bot(snap: FleetSnapshot) -> dict[BotKey, str]:
    """``"SPY +6 QQQ -5"`` per (node, bot) with open positions (others are flat)."""
    out: dict[BotKey, list[str]] = {}
    for p in snap.positions:
        out.setdefault((p.node, p.bot), []).append(f"{p.symbol} {p.qty:+g}")
    return {k: " ".join(v) for k, v in out.items()}


def bot_state(b: BotView, kill: KillView, node_state: dict[str, str]) -> str:
    """HALTED when one of the leader's active kills covers the bot; else the state its
    agent reported (ACTIVE, REDUCING, HALTED, STOPPED); else its node's reported state
    (UNKNOWN if none)."""
    for k in kill.kills:
        if (k.scope == "GLOBAL" or (k.scope == "STRATEGY" and k.key == b.bot)
                or (k.scope == "ACCOUNT" and k.key in b.accounts)):
            return "HALTED"
    return b.state or node_state.get(b.node, "UNKNOWN")


def limit_label(lim: LimitView) -> str:
    """Short bar label: where (``bot``, ``acct`` or the symbol) and what, e.g. ``bot gross``."""
    return f"{_WHERE.get(lim.scope, lim.key)} {_SHORT.get(lim.name, lim.name)}"


def limit_title(lim: LimitView, currency: str) -> str:
    """Tooltip: ``STRATEGY momo max_gross_notional <= 40,000.00 USD`` (what the bar
    measures; the bar itself shows the live use in percent)."""
    unit = currency if lim.unit == "currency" else lim.unit
    return f"{lim.scope} {lim.key} {lim.name} <= {lim.limit:,.2f} {unit}"


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
