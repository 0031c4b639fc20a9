"""The live terminal summary of ``qtd up``: the leader's fleet view, once per second.

Figures come from the leader (``<prefix>.ctl.leader.status``: what reached the leader);
bot states from each agent's ``status`` reply at start-up, then from the agents'
``TradingStateChanged`` events as they are published.
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

from qtd.events import Scope, TradingStateChanged
from qtd.leader.snapshot import FleetSnapshot

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
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
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


def render(watch: FleetWatch, *, started: float, extra: Iterable[str] = ()) -> str:
    """The summary table as text (one line per bot, per node, and the fleet)."""
    snap = watch.snapshot
    lines = [f"qtd up  {time.strftime('%H:%M:%S')}  up {time.monotonic() - started:,.0f} s"
             + ("" if snap else "  (waiting for the leader)")]
    lines += list(extra)
    head = f"{'node':<8} {'bot':<16} {'state':<9} {'orders':>6} {'fills':>6} {'realized':>12} " \
           f"{'pnl today':>12}"
    lines += ["", head, "-" * len(head)]
    bots = {(b.node, b.bot): b for b in snap.bots} if snap else {}
    nodes = {n.node: n for n in snap.nodes} if snap else {}
    for node, names in watch.nodes.items():
        for bot in names:
            b = bots.get((node, bot))
            lines.append(
                f"{node:<8} {bot:<16} {watch.states.get((node, bot), '?'):<9} "
                f"{b.agg.orders if b else 0:>6} {b.agg.fills if b else 0:>6} "
                f"{_money(b.agg.realized if b else None):>12} "
                f"{_money(b.agg.pnl_today if b else None):>12}")
        n = nodes.get(node)
        alive = "down" if n is None or not n.alive else n.state
        lines.append(f"{node:<8} {'(node)':<16} {alive:<9} {n.agg.orders if n else 0:>6} "
                     f"{n.agg.fills if n else 0:>6} {_money(n.agg.realized if n else None):>12} "
                     f"{_money(n.agg.pnl_today if n else None):>12}")
    if snap:
        t = snap.totals
        kill = f"KILL {snap.kill.scope} {snap.kill.key}".strip() if snap.kill.active else "none"
        lines += ["-" * len(head),
                  f"{'fleet':<8} {'':<16} {'':<9} {t.orders:>6} {t.fills:>6} "
                  f"{_money(t.realized):>12} {_money(t.pnl_today):>12}",
                  f"equity {_money(snap.equity)} {snap.currency}  drawdown "
                  f"{snap.drawdown_pct:.2f} %  kill switch: {kill}  open alerts: "
                  f"{len(snap.alerts)}"]
    return "\n".join(lines)
