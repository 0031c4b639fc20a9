"""Group commit: durable appends handed in by many coroutines in one event-loop turn share
one transaction and one fsync.

At a market-open burst N bots decide on the same bar; with one fsynced append per order
intent the last order waits for N fsyncs before it leaves. :class:`GroupCommit` queues each
event with a future; the first caller to wait for one leads the commit: it lets every
coroutine already scheduled in this loop turn queue, then commits the whole queue with one
durable ``append_many`` (all or nothing). Events queued while a commit is in flight go out
together in the next one. Events keep the order they were queued in; each caller gets its
own stored event (with ``seq``) or the batch's error.

"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from qtd.aio import TaskSet
from qtd.errors import StoreError
from qtd.events import AnyEvent, Event

AppendMany = Callable[[Sequence[Event]], Awaitable[list[AnyEvent]]]
"""A durable batch append: stores the events in one transaction, in order, and returns them
with ``seq`` set, or raises (``StoreError``) having stored none (``EventStore.append_many``,
one statement and one round trip for a batch of up to 1,024 events)."""


Ticket = TypeVar("Ticket")


class Committer(Protocol[Ticket]):
    """Durable appends of single events for concurrent callers: :class:`GroupCommit` (a
    ticket is the event's future), or the backtest's write-behind store (a ticket is the
    event with its seq, assigned at once)."""

    def add(self, event: Event) -> Ticket:
        """Queue ``event`` (synchronously: callers queue in the order they call this)."""
        ...

    async def durable(self, queued: Ticket, *, gather: bool) -> AnyEvent:
        """Wait until the event queued as ``queued`` is stored; returns it with its seq.
        ``gather``: let the rest of this loop turn queue before committing."""
        ...


class GroupCommit:
    """One durable transaction per batch of events queued in one loop turn (module docstring).

    The caller of :meth:`durable` that finds no commit being prepared leads the next one:
    with ``gather`` it first yields once (``asyncio.sleep(0)``) so that every coroutine
    already scheduled in this turn can queue, then waits for the store to be free (events
    queued meanwhile join), takes the queue and commits it itself; the others wait on their
    futures. No task is created unless a leader is cancelled before it took its batch (a
    task then commits the rest).

    Args:
        append_many: the durable batch append (the store's ``append_many``, or in an
            agent its store's ``append_group``, which also passes the test-only crash
            points).
        path: the store's file, named by the error of an interrupted commit.

    Attributes:
        commits: batches committed (or attempted) so far.
    """

    def __init__(self, append_many: AppendMany, path: str) -> None:
        self._append_many, self.path = append_many, path
        self._queued: list[tuple[Event, asyncio.Future[AnyEvent]]] = []
        self._led = False  # a caller is preparing the next commit: new events join it
        self._turn = asyncio.Lock()  # one batch in flight; the next one fills meanwhile
        self._tasks = TaskSet()
        self.commits = 0

    def add(self, event: Event) -> asyncio.Future[AnyEvent]:
        """Queue ``event`` for the next commit (call it in the event loop; events are stored
        in the order they were queued)."""
        fut: asyncio.Future[AnyEvent] = asyncio.get_running_loop().create_future()
        self._queued.append((event, fut))
        return fut

    async def durable(self, queued: asyncio.Future[AnyEvent], *, gather: bool) -> AnyEvent:
        """Wait until the event queued as ``queued`` (by :meth:`add`) is stored.

        Args:
            queued: the future :meth:`add` returned.
            gather: let every coroutine already scheduled in this loop turn queue before
                the commit (for a burst of intents); otherwise commit as soon as the store
                is free (events queued meanwhile still join).

        Returns:
            The stored event (``seq`` set).

        Raises:
            StoreError: the batch failed; nothing of it was stored. Also when the commit
                was interrupted (its leader cancelled while writing): it may or may not
                have landed, and nothing of it was sent.
        """
        if self._led or queued.done():
            return await queued
        self._led = True
        taken = False
        try:
            if gather:
                await asyncio.sleep(0)  # the rest of this turn queues behind this event
            async with self._turn:
                batch, self._queued, self._led = self._queued, [], False
                taken = True
                await self._write(batch)
        except asyncio.CancelledError:
            if not taken:
                self._hand_over(queued)
            elif queued.done() and not queued.cancelled():
                queued.exception()  # its own share of the interrupted batch: retrieved
            raise
        return queued.result()

    def _hand_over(self, own: asyncio.Future[AnyEvent]) -> None:
        """A leader cancelled before it took its batch: drop its own event and let a task
        commit the others."""
        self._queued = [(e, f) for e, f in self._queued if f is not own]
        own.cancel()
        if self._queued:
            self._tasks.spawn(self._lead(), "group-commit")
        else:
            self._led = False

    async def _lead(self) -> None:
        async with self._turn:
            batch, self._queued, self._led = self._queued, [], False
            await self._write(batch)

    async def _write(self, batch: list[tuple[Event, asyncio.Future[AnyEvent]]]) -> None:
        self.commits += 1
        try:
            stored = await self._append_many([e for e, _ in batch])
        except asyncio.CancelledError:
            self._fail(batch, StoreError(
                f"{self.path}: a group commit was interrupted; whether it landed is "
                "unknown (reconciliation settles it) and nothing of it was sent",
                path=self.path))
            raise
        except BaseException as exc:
            self._fail(batch, exc)
            return
        for (_, fut), ev in zip(batch, stored, strict=True):
            if not fut.done():
                fut.set_result(ev)

    @staticmethod
    def _fail(batch: list[tuple[Event, asyncio.Future[AnyEvent]]],
              exc: BaseException) -> None:
        for _, fut in batch:
            if not fut.done():
                fut.set_exception(exc)
