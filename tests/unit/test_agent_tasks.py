"""The agent's task group (qtd.agent.tasks) and the store's outlet (qtd.agent.link)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from qtd.agent.link import Outlet
from qtd.agent.tasks import AgentTasks
from qtd.errors import StoreError
from tests import factories


async def test_no_task_is_started_outside_the_running_group() -> None:
    tasks = AgentTasks()
    ran: list[int] = []

    async def work() -> None:
        ran.append(1)

    coro = work()
    with pytest.raises(RuntimeError, match="task group is not running"):
        tasks.spawn("early", coro)
    assert coro.cr_frame is None  # closed: no "never awaited" warning, nothing ran
    assert ran == [] and tasks.task("early") is None


async def test_a_failing_task_ends_alone_and_a_store_error_stops_the_group(
    caplog: pytest.LogCaptureFixture
) -> None:
    tasks = AgentTasks()

    async def boom() -> None:
        raise ValueError("bug")

    async def forever() -> None:
        await asyncio.Event().wait()

    async def store_fails() -> None:
        raise StoreError("disk gone", path="events.db")

    with caplog.at_level(logging.ERROR, logger="qtd.agent"), \
            pytest.raises(ExceptionGroup) as raised:
        async with tasks.group():
            tasks.spawn("boom", boom())
            survivor = tasks.spawn("forever", forever())
            await asyncio.sleep(0.01)
            assert not survivor.done()  # the bug ended its own task only
            assert [t.get_name() for t in tasks.running()] == ["forever"]
            tasks.spawn("store", store_fails())
            await asyncio.sleep(1.0)
    assert raised.group_contains(StoreError)
    assert survivor.cancelled()
    messages = [r.getMessage() for r in caplog.records]
    assert "task boom failed" in messages
    assert "task store: the event store failed; stopping the agent" in messages


async def test_the_outlet_drops_events_until_an_outbox_is_attached() -> None:
    seen: list[int] = []
    outlet = Outlet(observer=lambda evs: seen.extend(e.seq for e in evs))
    ev = factories.intent("c1")
    outlet.offer([ev])  # no outbox yet: only the observer sees it (the outbox re-reads)
    assert seen == [ev.seq]
