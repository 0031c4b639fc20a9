"""The agent's one task group: every task named, kept, guarded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from qtd.errors import StoreError

log = logging.getLogger("qtd.agent")


class AgentTasks:
    """Named tasks of one :class:`asyncio.TaskGroup` (entered by :meth:`group`).

    A task failing (other than the store) is logged and ends alone; a
    :class:`~qtd.errors.StoreError` stops the agent (nothing can be recorded any more: a
    human must act).
    """

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._tg: asyncio.TaskGroup | None = None

    @contextlib.asynccontextmanager
    async def group(self) -> AsyncIterator[None]:
        """Run the task group: tasks may be spawned inside; on exit every task ended."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                yield
            finally:
                self._tg = None

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Start ``coro`` as task ``name`` in the task group.

        Raises:
            RuntimeError: the task group is not running (``coro`` is closed).
        """
        if self._tg is None:
            coro.close()
            raise RuntimeError(f"task {name}: the agent's task group is not running")
        task = self._tg.create_task(self._guard(name, coro), name=name)
        self._tasks[name] = task
        return task

    def task(self, name: str) -> asyncio.Task[Any] | None:
        return self._tasks.get(name)

    def running(self, prefixes: tuple[str, ...] = (), names: tuple[str, ...] = ()
                ) -> list[asyncio.Task[Any]]:
        """Tasks not done whose name starts with one of ``prefixes`` or is in ``names``
        (both empty: every task not done)."""
        return [t for n, t in self._tasks.items() if not t.done() and (
            (not prefixes and not names) or n.startswith(prefixes) or n in names)]

    def cancel_all(self) -> None:
        for task in self._tasks.values():
            task.cancel()

    async def _guard(self, name: str, coro: Coroutine[Any, Any, Any]) -> Any:
        try:
            return await coro
        except StoreError:
            log.critical("task %s: the event store failed; stopping the agent", name)
            raise
        except Exception:
            log.exception("task %s failed", name)
            return None
