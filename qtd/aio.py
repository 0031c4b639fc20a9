"""Small asyncio helpers shared by the daemons."""

from __future__ import annotations

import asyncio
from typing import Any


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
