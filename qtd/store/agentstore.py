"""The agent's event store: listener, write-fault policy and crash hook given at
construction (:class:`StoreHooks`), never patched in later."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from qtd.errors import StoreError
from qtd.events import AnyEvent, Event
from qtd.store import EventStore, StoreParts
from qtd.store.faults import FaultPolicy, Listener, StoreFaults


class CrashHook(Protocol):
    """Test-only crash points around a durable append (:mod:`qtd.agent.crashpoint`)."""

    def before(self, event: Event) -> None: ...

    def after(self, stored: AnyEvent) -> None: ...


@dataclass(frozen=True)
class StoreHooks:
    """What an :class:`AgentStore` calls besides SQLite.

    Attributes:
        listener: called with the stored events after every successful append (the outbox
            publishes them from memory, without polling delay or a store read).
        faults: with a policy, a failing write halts and buffers instead of raising
            (:class:`~qtd.store.faults.StoreFaults`); None: writes raise as in
            :class:`EventStore`.
        probe_s: seconds between probes of a faulted store.
        readonly_flag: test-only flag file (:mod:`qtd.store.faults`).
        crash: the test-only crash point hook (None unless ``QTD_TEST_CRASH_AT`` is set).
    """

    listener: Listener | None = None
    faults: FaultPolicy | None = None
    probe_s: float = 1.0
    readonly_flag: str | None = None
    crash: CrashHook | None = None


class AgentStore(EventStore):
    """:class:`EventStore` with :class:`StoreHooks` (use :meth:`open_with`).

    Attributes:
        faults: the write-fault state (None without a fault policy).
    """

    def __init__(self, parts: StoreParts, *, hooks: StoreHooks) -> None:
        super().__init__(*parts)
        self._listener, self._crash = hooks.listener, hooks.crash
        self.faults = None if hooks.faults is None else StoreFaults(
            self, hooks.faults, hooks.listener, probe_s=hooks.probe_s,
            readonly_flag=hooks.readonly_flag)

    @classmethod
    async def open_with(cls, path: str | os.PathLike[str], *, node: str,
                        hooks: StoreHooks) -> AgentStore:
        """Open (or create) the store at ``path`` with ``hooks``.

        Raises:
            StoreError: as :meth:`EventStore.open`.
        """
        return cls(await EventStore.open_parts(path, node=node), hooks=hooks)

    @property
    def faulted(self) -> bool:
        """Writes are being buffered (a write fault is not over)."""
        return self.faults is not None and self.faults.faulted

    async def append(self, event: Event) -> AnyEvent:
        if self._crash is not None:
            self._crash.before(event)
        if self.faults is None:
            stored = await super().append(event)
        else:
            stored = (await self.faults.append((event,)))[0]
            if self.faults.faulted:
                return stored  # buffered: published once written
        if self._crash is not None:
            self._crash.after(stored)
        if self._listener is not None:
            self._listener((stored,))
        return stored

    async def append_many(self, events: Sequence[Event], *, sync: bool = True
                          ) -> list[AnyEvent]:
        if self.faults is None:
            stored = await super().append_many(events, sync=sync)
        else:
            stored = await self.faults.append(events, sync=sync)
            if self.faults.faulted:
                return stored  # buffered: published once written
        if stored and self._listener is not None:
            self._listener(stored)
        return stored

    async def append_group(self, events: Sequence[Event]) -> list[AnyEvent]:
        """Durable append of a group commit (:class:`~qtd.store.group.GroupCommit`) as
        :meth:`append_many`, passing every event through the test-only crash points as
        :meth:`append` does.

        Raises:
            StoreError: as :meth:`append_many`; nothing of the group was stored.
        """
        if self._crash is not None:
            for event in events:
                self._crash.before(event)
        stored = await self.append_many(events)
        if self._crash is not None and not self.faulted:
            for ev in stored:
                self._crash.after(ev)
        return stored

    async def set_watermark(self, seq: int, name: str = "jetstream") -> None:
        if self.faults is not None and self.faults.faulted:
            return  # kept at its last value: a restart re-sends, the leader is idempotent
        try:
            await super().set_watermark(seq, name)
        except StoreError as exc:
            if self.faults is None or "sqlite" not in exc.fields:
                raise
            self.faults.trip(exc)

    async def close(self) -> None:
        if self.faults is not None:
            await self.faults.close()
        await super().close()
