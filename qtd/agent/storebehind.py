"""The agent's answer to a store found behind its own events in JetStream.

:class:`~qtd.recovery.StoreBehind` (raised by the outbox audit, :mod:`qtd.recovery`) means
committed events were lost from ``events.db``: positions miss fills, and every new event
would reuse a seq the leader already holds. :meth:`StoreBehindRefusal.refuse`:

1. **halts GLOBAL** with a P1 :class:`~qtd.events.RiskBreach` ``check="store_behind"`` whose
   message names the store's last seq and the stream's, and a kill switch on GLOBAL (open
   orders cancelled), stored in the store as the reason — at start-up before any bot runs
   (the link reports ready only after its audit);
2. logs it at CRITICAL with the time since the agent process started;
3. **pages P1 over NATS core**: the outbox publishes nothing more (each seq after the loss
   names two events), so the breach goes on the node's heartbeat subject, again every
   ``republish_s`` until the agent stops; the leader pages ``store:<node>``
   (:meth:`qtd.leader.alerts.AlertBook.on_agent_breach`).

The agent refuses ``resume`` of GLOBAL from then on; the way out is to stop it and run
``qtd recover --config <agent.toml>``, then start it again.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

import msgspec

from qtd.control import KillCommand
from qtd.events import RiskBreach, Scope, Severity, TradingState
from qtd.recovery import CHECK, StoreBehind

if TYPE_CHECKING:
    from qtd.agent.kernel import Kernel
    from qtd.agent.ports import Spawner
    from qtd.agent.storefault import CorePublisher

log = logging.getLogger("qtd.agent.storebehind")
REPUBLISH_S = 5.0


def since_process_start_s() -> float:
    """Seconds since this process started (Linux ``/proc``; ``nan`` elsewhere)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            start_ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


class StoreBehindRefusal:
    """The agent's answer to :class:`~qtd.recovery.StoreBehind` (module docstring); the
    bus link's ``on_store_behind``.

    Args:
        kernel: the agent's kernel (engine, router, clock, node, subjects).
        tasks: the agent's task group (the page task).
        pager: the bus link (publishes the page; None before the link exists).
        republish_s: seconds between pages.
    """

    def __init__(self, kernel: Kernel, tasks: Spawner, republish_s: float = REPUBLISH_S
                 ) -> None:
        self.k, self.tasks, self.republish_s = kernel, tasks, republish_s

    async def refuse(self, exc: StoreBehind, pager: CorePublisher) -> None:
        """Halt, log and page (module docstring); returns once the halt is stored."""
        k = self.k
        detected_s = since_process_start_s()
        reason = str(exc)
        lost = float(max(exc.stream_last - exc.store_last, 0) or 1)
        k.risk.trip(Scope.GLOBAL, "", TradingState.HALTED, reason, check=CHECK,
                    severity=Severity.P1, value=lost)
        await k.router.kill(KillCommand(scope=Scope.GLOBAL, reason=reason, operator="qtd",
                                        source=CHECK))
        log.critical("store behind the stream: GLOBAL HALTED, nothing published; store last "
                     "seq %d, stream last seq %d%s; detected %.3f s after the agent started. "
                     "%s", exc.store_last, exc.stream_last,
                     f", forked at seq {exc.forked_at}" if exc.forked_at else "", detected_s,
                     reason, extra={"check": CHECK, "detected_s": detected_s})
        now = k.clock.now_ns()
        breach = RiskBreach(node=k.node, ts_event=now, ts_init=now, check=CHECK,
                            scope=Scope.GLOBAL, scope_key="", limit=float(exc.store_last),
                            value=float(exc.stream_last),
                            unit="last seq (store limit, stream)", severity=Severity.P1,
                            action="halted", message=reason)
        self.tasks.spawn("store-behind-page", self._page(pager, breach))

    async def _page(self, pager: CorePublisher, breach: RiskBreach) -> None:
        data = msgspec.json.encode(breach)
        while True:
            await pager.publish(self.k.subjects.hb(self.k.node), data)
            await asyncio.sleep(self.republish_s)


def refuses_resume(behind: StoreBehind | None, scope: Scope) -> str:
    """Why a resume of ``scope`` is refused ("" if it is not): GLOBAL stays HALTED while
    the store is behind the stream (``behind``: the link's refusal, if any)."""
    if scope is Scope.GLOBAL and behind is not None:
        return (f"store behind the stream (store last seq {behind.store_last}, stream "
                f"{behind.stream_last}): stop the agent, run qtd recover, start it")
    return ""
