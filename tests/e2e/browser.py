"""The system Chromium (Debian package ``chromium``) driven by Playwright, for the status
page's real-browser tests (through the ``chromium_page`` fixture of ``conftest.py``, which
takes pytest-playwright's launch options: ``--headed``, ``--slowmo``, ...) and
``benchmarks/web.py``. Playwright's own browser downloads are never used: the machine's
network may be closed, and CI installs Debian's chromium (``.ci/run``)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from playwright.async_api import Page, async_playwright

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SKIP_REASON = "chromium not installed (apt-get install -y chromium)"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
OpenPage = Callable[..., AbstractAsyncContextManager[Page]]
"""The ``open_page`` fixture: ``async with open_page(width, height) as page``."""


def launch_args(base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Playwright launch options for the system Chromium on top of ``base`` (e.g.
    pytest-playwright's ``browser_type_launch_args``)."""
    base = dict(base or {})
    return {**base, "executable_path": CHROMIUM, "args": [*base.get("args", ()), *ARGS]}


@contextlib.asynccontextmanager
async def chromium_page(width: int = 1400, height: int = 1100,
                        options: dict[str, Any] | None = None) -> AsyncIterator[Page]:
    """A page of a fresh headless Chromium (``width`` x ``height`` CSS pixels, scale 1),
    closed on exit.

    Raises:
        RuntimeError: chromium is not installed.
    """
    if CHROMIUM is None:
        raise RuntimeError(SKIP_REASON)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(**launch_args(options))
        try:
            yield await browser.new_page(viewport={"width": width, "height": height},
                                         device_scale_factor=1)
        finally:
            await browser.close()
