"""Bot supervision: one task per bot; a halted bot is restarted only as its policy allows.

The runner (:mod:`qtd.runner`) already quarantines user code: an exception or an overrun in a
hook becomes a :class:`~qtd.events.StrategyError` plus a STRATEGY HALTED state change for
that bot alone. The supervisor decides what happens next: restart after a backoff (doubling
per restart, capped) if fewer than ``max_per_hour`` restarts happened in the last hour, else
the bot stays HALTED and is reported (log and ``status``). A bot whose feed ends is STOPPED
and not restarted; a stop request (shutdown) ends the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from qtd.agent.config import RestartPolicy
from qtd.events import Event, Scope, TradingState, TradingStateChanged
from qtd.feeds import MarketData
from qtd.runner import BotRunner, BotSpec, BotState
from qtd.workers.protocol import StrategyRef

log = logging.getLogger("qtd.agent.supervisor")

HOUR_S = 3600.0


class BotSlot:
    """A bot the agent runs: its admitted strategy and params, and its current runner.

    Attributes:
        spec: identity (name, account, venue, symbols).
        ref: the admitted strategy by reference (file, hashes, class name, params): its
            worker imports it; the agent never does.
        runner: the current runner (a new one per restart).
        restarts: monotonic times (s) of restarts in the last hour.
        state: last known state (CREATED, RUNNING, HALTED, STOPPED).
        reason: why it is not running, when it is not.
        stage: the bot config's lifecycle stage (paper, shadow, live, ...; "" unknown).
    """

    def __init__(self, spec: BotSpec, ref: StrategyRef, stage: str = "") -> None:
        self.spec, self.ref = spec, ref
        self.stage = stage
        self.runner: BotRunner | None = None
        self.restarts: deque[float] = deque()
        self.total_restarts = 0
        self.state = BotState.CREATED
        self.reason = ""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def content_hash(self) -> str:
        """sha256 hex of the admitted source + params the slot runs."""
        return self.ref.content_hash


MakeRunner = Callable[[BotSlot], BotRunner]
Subscribe = Callable[[str], AsyncIterator[MarketData]]
Emit = Callable[[Event], Awaitable[Any]]


class Supervisor:
    """Runs bots under a restart policy.

    Args:
        policy: restarts per hour and backoff.
        make_runner: builds a runner for a slot (wired to the router and the store).
        subscribe: the bot's market data feed (a fresh subscription per run).
        emit: stores events (restart state changes).
        node: node name stamped on events.
        now_ns: UTC ns clock for event timestamps.
        monotonic: seconds clock for the restart window (tests pass a fake).
        sleep: async sleep (tests pass a fake).
    """

    def __init__(self, policy: RestartPolicy, make_runner: MakeRunner, subscribe: Subscribe,
                 emit: Emit, node: str, now_ns: Callable[[], int],
                 monotonic: Callable[[], float] | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.policy, self._make, self._subscribe, self._emit = policy, make_runner, subscribe, emit
        self.node, self._now_ns = node, now_ns
        self._mono = monotonic or asyncio.get_running_loop().time
        self._sleep = sleep
        self.slots: dict[str, BotSlot] = {}
        self._stopping = False

    def add(self, slot: BotSlot) -> None:
        self.slots[slot.name] = slot

    def runner(self, bot: str) -> BotRunner | None:
        slot = self.slots.get(bot)
        return slot.runner if slot is not None else None

    def request_stop(self) -> None:
        """Ask every bot to stop at its next safe point (between market data items)."""
        self._stopping = True
        for slot in self.slots.values():
            if slot.runner is not None and slot.state is BotState.RUNNING:
                slot.runner.request_stop()

    def may_restart(self, slot: BotSlot) -> tuple[bool, float]:
        """(allowed, backoff seconds) for the next restart of ``slot``."""
        now = self._mono()
        while slot.restarts and now - slot.restarts[0] > HOUR_S:
            slot.restarts.popleft()
        n = len(slot.restarts)
        if n >= self.policy.max_per_hour:
            return False, 0.0
        return True, min(self.policy.backoff_max_s, self.policy.backoff_s * 2.0 ** n)

    async def run_bot(self, slot: BotSlot) -> BotState:
        """Run one bot until it stops, or stays HALTED after its restarts are used up."""
        while True:
            runner = slot.runner = self._make(slot)
            slot.state = BotState.RUNNING
            state = await runner.run(self._subscribe(slot.name))
            slot.state = state
            if state is not BotState.HALTED or self._stopping:
                slot.reason = "stopped" if state is BotState.STOPPED else slot.reason
                return state
            err = runner.error
            slot.reason = (f"{err.error_type} in {err.hook}: {err.message}" if err
                           else "halted")
            allowed, delay = self.may_restart(slot)
            if not allowed:
                log.error("bot %s stays HALTED: %d restart(s) in the last hour (max %d): %s",
                          slot.name, len(slot.restarts), self.policy.max_per_hour,
                          slot.reason, extra={"bot": slot.name})
                return state
            log.warning("bot %s halted (%s); restarting in %.1f s", slot.name, slot.reason,
                        delay, extra={"bot": slot.name})
            await self._sleep(delay)
            if self._stopping:
                return state
            await self._restarted(slot)

    async def _restarted(self, slot: BotSlot) -> None:
        slot.restarts.append(self._mono())
        slot.total_restarts += 1
        now = self._now_ns()
        await self._emit(TradingStateChanged(
            node=self.node, bot=slot.name, ts_event=now, ts_init=now, scope=Scope.STRATEGY,
            scope_key=slot.name, old=TradingState.HALTED, new=TradingState.ACTIVE,
            reason=f"supervisor restart {len(slot.restarts)}/{self.policy.max_per_hour} "
                   f"this hour after: {slot.reason}", operator="supervisor"))
