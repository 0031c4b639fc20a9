"""Group commit: durable appends handed in by many coroutines in one event-loop turn share
one transaction and one fsync.

At a market-open burst N bots decide on the same bar; with one fsynced append per order
intent the last order waits for N fsyncs before it leaves. :class:`GroupCommit` queues each
event with a future; the first event queued into an empty queue starts a commit task, which
runs after every coroutine already scheduled in this loop turn had its chance to queue, then
commits the whole queue with one durable ``append_many`` (all or nothing). Events queued
while a commit is in flight wait and go out together in the next one. Events keep the order
they were handed in; each caller gets its own stored event (with ``seq``) or the batch's
error.

"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from qtd.aio import TaskSet
from qtd.events import AnyEvent, Event

AppendMany = Callable[[Sequence[Event]], Awaitable[list[AnyEvent]]]
"""A durable batch append: stores the events in one transaction, in order, and returns them
with ``seq`` set, or raises (``StoreError``) having stored none (``EventStore.append_many``)."""


class Committer(Protocol):
    """Durable appends of single events for concurrent callers (:class:`GroupCommit`)."""

    def add(self, event: Event) -> asyncio.Future[AnyEvent]:
        """Queue ``event``; the future is the stored event once durable, or the error."""
        ...


async def append_group(store: GroupStore, events: Sequence[Event]) -> list[AnyEvent]:
    """The default :data:`AppendMany` on ``store``: one event as ``store.append`` (one
    autocommitted statement), more as ``store.append_many`` (one transaction).

    Raises:
        StoreError: nothing was stored.
    """
    if len(events) == 1:
        return [await store.append(events[0])]
    return await store.append_many(events)


class GroupStore(Protocol):
    """The durable appends :func:`append_group` uses (an ``EventStore``)."""

    async def append(self, event: Event) -> AnyEvent: ...

    async def append_many(self, events: Sequence[Event], *, sync: bool = True
                          ) -> list[AnyEvent]: ...


class GroupCommit:
    """One durable transaction per batch of events queued in one loop turn (module docstring).

    Args:
        append_many: the durable batch append (the store's ``append_many``, or in an agent
            its store's ``append_group``, which also passes the test-only crash points).

    Attributes:
        commits: batches committed (or attempted) so far.
    """

    def __init__(self, append_many: AppendMany) -> None:
        self._append_many = append_many
        self._queued: list[tuple[Event, asyncio.Future[AnyEvent]]] = []
        self._turn = asyncio.Lock()  # one batch in flight; the next one fills meanwhile
        self._tasks = TaskSet()
        self.commits = 0

    def add(self, event: Event) -> asyncio.Future[AnyEvent]:
        """Queue ``event`` for the next commit (call it in the event loop).

        Returns:
            A future: the stored event (``seq`` set) once the batch is durable; the batch's
            exception (``StoreError``: nothing of the batch was stored) otherwise.
        """
        fut: asyncio.Future[AnyEvent] = asyncio.get_running_loop().create_future()
        if not self._queued:
            self._tasks.spawn(self._commit(), "group-commit")
        self._queued.append((event, fut))
        return fut

    async def _commit(self) -> None:
        async with self._turn:
            batch, self._queued = self._queued, []
            self.commits += 1
            try:
                stored = await self._append_many([e for e, _ in batch])
            except asyncio.CancelledError:
                for _, fut in batch:
                    fut.cancel()
                raise
            except BaseException as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                return  # each caller raises it; nothing for the task set to log
            for (_, fut), ev in zip(batch, stored, strict=True):
                if not fut.done():
                    fut.set_result(ev)
