"""Fixtures of the end-to-end tests: a page of the system Chromium (see
:mod:`tests.e2e.browser`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from playwright.async_api import Page

from tests.e2e.browser import CHROMIUM, SKIP_REASON, OpenPage, chromium_page


@pytest.fixture
async def open_page(browser_type_launch_args: dict[str, Any]) -> AsyncIterator[OpenPage]:
    """``async with open_page(width, height) as page``: a page of the system Chromium with
    pytest-playwright's launch options (``--headed``, ``--slowmo``, ``--browser-channel``).

    The tests are async (a real nats-server, leader and agents run in the test's event
    loop), so the page comes from Playwright's async API; pytest-playwright's own ``page``
    fixture is sync-only. Skips when chromium is not installed.
    """
    if CHROMIUM is None:
        pytest.skip(SKIP_REASON)

    def opener(width: int = 1400, height: int = 1100) -> AbstractAsyncContextManager[Page]:
        return chromium_page(width, height, browser_type_launch_args)

    yield opener
