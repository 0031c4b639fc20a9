"""The live terminal summary of ``qtd up``: the leader's fleet view, once per second.

On a terminal it is a :mod:`rich` table redrawn in place (:func:`rich_view`); otherwise
(a pipe, a log file, CI) the same figures as plain text lines (:func:`render`).

Figures come from the leader (``<prefix>.ctl.leader.status``: what reached the leader).
A bot's state is its effective state in that snapshot (its own combined with its node's,
its agent's scopes and the fleet's kills, with why: :mod:`qtd.leader.why`), the same as on
the status page; before the leader knows it, the state from its agent's ``status`` reply at
start-up, then from the agents' ``TradingStateChanged`` events as they are published.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from rich.console import Group
from rich.table import Table
from rich.text import Text

from qtd.events import DECODE_ERRORS, Scope, TradingStateChanged
from qtd.fleetsnapshot import BotView, Cause, FleetSnapshot, describe, since_text, why_text

_state_decoder = msgspec.json.Decoder(TradingStateChanged)


class FleetWatch:
    """Reads the fleet over NATS for the summary.

    Args:
        nc: a connected client.
        prefix: subject prefix.
        nodes: node → its bot names.
    """

    def __init__(self, nc: Client, prefix: str, nodes: dict[str, list[str]]) -> None:
        self.nc, self.prefix, self.nodes = nc, prefix, nodes
        self.states: dict[tuple[str, str], str] = {}
        self.snapshot: FleetSnapshot | None = None

    async def start(self) -> None:
        """Subscribe to the agents' trading-state changes."""
        await self.nc.subscribe(f"{self.prefix}.evt.*.*.TradingStateChanged", cb=self._on_state)

    async def _on_state(self, msg: Msg) -> None:
        with contextlib.suppress(*DECODE_ERRORS):
            ev = _state_decoder.decode(msg.data)
            if ev.scope is Scope.STRATEGY:
                self.states[(ev.node, ev.scope_key)] = ev.new.value

    async def _request(self, subject: str, timeout: float) -> dict[str, Any] | None:
        try:
            msg = await self.nc.request(subject, b"{}", timeout=timeout)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return None
        reply: dict[str, Any] = msgspec.json.decode(msg.data)
        return reply

    async def agent_states(self, node: str, timeout: float = 2.0) -> bool:
        """Ask ``node`` for its bots' states (it audits each request); True once it
        answered with every one of its bots running or refused."""
        reply = await self._request(f"{self.prefix}.ctl.{node}.status", timeout)
        if reply is None or not reply.get("ok"):
            return False
        data = reply.get("data", {})
        risk = {s["key"]: s["state"] for s in data.get("states", []) if s["scope"] == "STRATEGY"}
        for bot in data.get("refused", []):
            self.states[(node, str(bot))] = "REFUSED"
        for bot, info in data.get("bots", {}).items():
            slot = str(info.get("state", "?"))
            if slot == "CREATED":
                continue
            self.states[(node, bot)] = risk.get(bot, "ACTIVE") if slot == "RUNNING" else slot
        return all((node, bot) in self.states for bot in self.nodes.get(node, []))

    async def poll(self, timeout: float = 1.0) -> FleetSnapshot | None:
        """The leader's current snapshot (kept in :attr:`snapshot`), or None if it is silent."""
        reply = await self._request(f"{self.prefix}.ctl.leader.status", timeout)
        if reply is not None and reply.get("ok"):
            self.snapshot = msgspec.convert(reply["snapshot"], FleetSnapshot)
            return self.snapshot
        return None


def _money(x: float | None) -> str:
    return "-" if x is None else f"{x:,.2f}"


Row = tuple[str, str, str, int, int, float | None, float | None, str]
"""node, bot (``(node)`` for a node's total), state, orders, fills, realized, pnl today,
why (what imposes the state, and since when; "" when ACTIVE)."""


def _bot_state(watch: FleetWatch, b: BotView | None, node: str, bot: str
               ) -> tuple[str, str]:
    """State and why of one bot: the snapshot's effective state once the leader knows it,
    else what its agent said (module docstring)."""
    own = watch.states.get((node, bot), "?")
    if b is None or b.effective_state in ("", "UNKNOWN") or own == "REFUSED":
        return own, ""
    now = watch.snapshot.ts_ns if watch.snapshot else 0
    text = why_text(b.causes, b.effective_state)
    since = since_text(b.since_ns, now)
    return b.effective_state, f"{text} · {since}" if text and since else text


def _node_why(bots: list[BotView], state: str) -> str:
    """What holds a node: the first node-wide cause (its GLOBAL scope, a fleet kill) among
    its bots' causes imposing ``state``."""
    causes: list[Cause] = [c for b in bots for c in b.causes
                           if c.scope in ("NODE", "GLOBAL") and c.state == state]
    return describe(causes[0]) if causes else ""


def rows(watch: FleetWatch) -> list[Row]:
    """One row per bot and per node (after its bots), from the last snapshot and states."""
    snap = watch.snapshot
    bots = {(b.node, b.bot): b for b in snap.bots} if snap else {}
    nodes = {n.node: n for n in snap.nodes} if snap else {}
    out: list[Row] = []
    for node, names in watch.nodes.items():
        for bot in names:
            b = bots.get((node, bot))
            state, why = _bot_state(watch, b, node, bot)
            out.append((node, bot, state, b.agg.orders if b else 0, b.agg.fills if b else 0,
                        b.agg.realized if b else None, b.agg.pnl_today if b else None, why))
        n = nodes.get(node)
        alive = "down" if n is None or not n.alive else n.state
        mine = [b for (bn, _), b in bots.items() if bn == node]
        out.append((node, "(node)", alive, n.agg.orders if n else 0, n.agg.fills if n else 0,
                    n.agg.realized if n else None, n.agg.pnl_today if n else None,
                    _node_why(mine, alive)))
    return out


def _title(watch: FleetWatch, started: float) -> str:
    return (f"qtd up  {time.strftime('%H:%M:%S')}  up {time.monotonic() - started:,.0f} s"
            + ("" if watch.snapshot else "  (waiting for the leader)"))


def _footer(snap: FleetSnapshot) -> str:
    kill = ", ".join(f"KILL {k.scope} {k.key}".strip() for k in snap.kill.kills) or "none"
    return (f"equity {_money(snap.equity)} {snap.currency}  drawdown "
            f"{snap.drawdown_pct:.2f} %  kill switch: {kill}  open alerts: {len(snap.alerts)}")


def render(watch: FleetWatch, *, started: float, extra: Iterable[str] = ()) -> str:
    """The summary table as plain text (one line per bot, per node, and the fleet): what
    ``qtd up`` prints when its output is not a terminal (logs, CI, the e2e test)."""
    snap = watch.snapshot
    lines = [_title(watch, started), *extra]
    head = f"{'node':<8} {'bot':<16} {'state':<9} {'orders':>6} {'fills':>6} {'realized':>12} " \
           f"{'pnl today':>12}  why"
    lines += ["", head, "-" * len(head)]
    for node, bot, state, orders, fills, realized, today, why in rows(watch):
        lines.append(f"{node:<8} {bot:<16} {state:<9} {orders:>6} {fills:>6} "
                     f"{_money(realized):>12} {_money(today):>12}  {why}".rstrip())
    if snap:
        t = snap.totals
        lines += ["-" * len(head),
                  f"{'fleet':<8} {'':<16} {'':<9} {t.orders:>6} {t.fills:>6} "
                  f"{_money(t.realized):>12} {_money(t.pnl_today):>12}",
                  _footer(snap)]
    return "\n".join(lines)


_STATE_STYLE = {"ACTIVE": "green", "REDUCING": "yellow", "HALTED": "bold red",
                "REFUSED": "bold red", "down": "bold red", "STOPPED": "dim"}


def _pnl(x: float | None) -> Text:
    if x is None:
        return Text("-", style="dim")
    return Text(_money(x), style="green" if x > 0 else "red" if x < 0 else "")


def rich_view(watch: FleetWatch, *, started: float, extra: Iterable[str] = ()) -> Group:
    """The same summary as a :mod:`rich` renderable (a colored table redrawn in place by
    ``rich.live.Live`` when ``qtd up`` writes to a terminal)."""
    snap = watch.snapshot
    table = Table(title=_title(watch, started), title_justify="left", expand=False,
                  show_footer=snap is not None)
    t = snap.totals if snap else None
    table.add_column("node", footer="fleet")
    table.add_column("bot")
    table.add_column("state")
    table.add_column("orders", justify="right", footer=str(t.orders) if t else "")
    table.add_column("fills", justify="right", footer=str(t.fills) if t else "")
    table.add_column("realized", justify="right", footer=_pnl(t.realized) if t else "")
    table.add_column("pnl today", justify="right", footer=_pnl(t.pnl_today) if t else "")
    table.add_column("why", overflow="fold")
    for node, bot, state, orders, fills, realized, today, why in rows(watch):
        is_node = bot == "(node)"
        table.add_row(node, bot, Text(state, style=_STATE_STYLE.get(state, "")), str(orders),
                      str(fills), _pnl(realized), _pnl(today), Text(why, style="red"),
                      style="bold" if is_node else None, end_section=is_node)
    parts: list[Any] = [Text(line, style="dim") for line in extra]
    parts.append(table)
    if snap:
        parts.append(Text(_footer(snap), style="bold red" if snap.kill.active else ""))
    return Group(*parts)
