"""Fixtures of the chaos suites: a nats-server with small JetStream limits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qtd.bus import EmbeddedNatsServer


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EmbeddedNatsServer]:
    srv = EmbeddedNatsServer(tmp_path / "nats", js_max_memory=16 << 20, js_max_storage=64 << 20)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()
