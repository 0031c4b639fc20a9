"""Shared fixtures: a real SQLite event store in a temporary directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qtd.store import EventStore
from tests.factories import NODE


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EventStore]:
    s = await EventStore.open(tmp_path / "events.db", node=NODE)
    yield s
    await s.close()
