"""Small asyncio helpers shared by the daemons: :class:`TaskSet` (the one owner of
background tasks) and :func:`cancel_and_wait`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("qtd.aio")


class TaskSet:
    """Owns background tasks: keeps a reference to each until it ends (the event loop
    holds only weak ones, so an unreferenced task can be collected mid-run), logs the ones
    that fail, and drains them at shutdown.

    Attributes:
        tasks: the tasks still running.
    """

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task named ``name``; returns the task (already owned here)."""
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed: %r", task.get_name(), task.exception())

    async def drain(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` seconds for the running tasks, then cancel the rest."""
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=timeout_s)
            for t in pending:
                t.cancel()


async def cancel_and_wait(task: asyncio.Future[Any], retry_s: float = 1.0) -> None:
    """Cancel ``task`` and wait until it is done, cancelling again every ``retry_s`` seconds.

    A single cancellation can be swallowed — by code that catches CancelledError, or when
    it races with an ``asyncio.timeout`` that expires at the same moment — leaving a loop
    running, and ``cancel()`` followed by ``await`` would then wait forever. The task's own
    exception, if any, is retrieved and not raised.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry_s)
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" warning
