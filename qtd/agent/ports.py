"""The narrow interfaces the agent's services are built with (``typing.Protocol``).

The daemon (:mod:`qtd.agent.daemon`) builds the kernel (:mod:`qtd.agent.kernel`) and one
object per concern — the bots it runs (:class:`qtd.agent.bots.Bots`), the task group
(:class:`qtd.agent.tasks.AgentTasks`), the NATS link — and hands each service only the
interfaces below that it uses. No service sees the daemon.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import Any, Protocol

from qtd.agent.supervisor import BotSlot
from qtd.feeds import MarketData
from qtd.runner import BotRunner


class Spawner(Protocol):
    """Named tasks in the agent's one task group."""

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Start ``coro`` as task ``name`` (a later task of the same name replaces it in
        :meth:`task`)."""

    def task(self, name: str) -> asyncio.Task[Any] | None:
        """The last task started as ``name``, or None."""


class BotHost(Protocol):
    """The bots the agent runs: schedule, control and deploys start and stop them."""

    @property
    def slots(self) -> Mapping[str, BotSlot]:
        """Bot name → its slot (configured bots only: never a canary candidate)."""

    def runner(self, bot: str) -> BotRunner | None:
        """The current runner of a configured bot, or None."""

    def spawn_bot(self, slot: BotSlot) -> asyncio.Task[Any]:
        """Run ``slot`` under the supervisor as task ``bot:<name>``."""

    def bot_task(self, bot: str) -> asyncio.Task[Any] | None:
        """Task ``bot:<bot>``, or None."""

    def unsubscribe(self, bot: str) -> None:
        """Stop delivering market data to ``bot``."""


class CandidateHost(BotHost, Protocol):
    """What a canary candidate (a second runner of a bot) needs besides :class:`BotHost`."""

    @property
    def stopping(self) -> asyncio.Event:
        """Set once the agent is shutting down."""

    def build_runner(self, slot: BotSlot) -> BotRunner:
        """A runner for ``slot`` wired to the router and the store, seeded from the store."""

    def subscribe(self, bot: str) -> AsyncIterator[MarketData]:
        """A fresh market data subscription for ``bot``."""

    def share_feed(self, candidate: str, bot: str) -> None:
        """Let ``candidate`` read ``bot``'s feed."""

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """As :meth:`Spawner.spawn`."""


class ControlledBots(BotHost, Protocol):
    """What the control service reports besides :class:`BotHost`."""

    @property
    def refused(self) -> Mapping[str, list[str]]:
        """Bot config file → why it was not admitted."""

    def worker_report(self) -> list[dict[str, Any]]:
        """The live strategy workers: key, pid, bots, unique and resident MiB."""
