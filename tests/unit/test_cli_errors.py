"""The CLI shows the operator one line for a QtdError, also when a daemon's task group wraps
it in an exception group (a store found corrupt while the agent runs stops its task group)."""

from __future__ import annotations

import asyncio

from qtd.errors import StoreCorrupt, exit_code_for, operator_error


async def _task_group_failing_with(exc: BaseException) -> None:
    async def fail() -> None:
        raise exc

    async def idle() -> None:
        await asyncio.sleep(3600)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(idle())
        tg.create_task(fail())


async def test_store_error_inside_a_task_group_is_found_for_the_operator() -> None:
    corrupt = StoreCorrupt("events.db: event store failed verification at seq 7: x",
                           path="events.db", seq=7, what="x")
    try:
        await _task_group_failing_with(corrupt)
    except BaseExceptionGroup as group:
        assert operator_error(group) is corrupt
        assert exit_code_for(corrupt) == 2
    else:
        raise AssertionError("the task group did not fail")


def test_other_errors_are_not_taken_for_an_operator_error() -> None:
    group = BaseExceptionGroup("x", [ValueError("bug"), KeyError("k")])
    assert operator_error(group) is None
    assert operator_error(RuntimeError("bug")) is None
