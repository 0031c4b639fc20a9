"""Shared fixtures: a real SQLite event store in a temporary directory; an empty market
data catalog (``QTD_CATALOG``), so no test reads the machine's own."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from qtd.store import EventStore
from tests.factories import NODE


@pytest.fixture(autouse=True, scope="session")
def _empty_catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    before = os.environ.get("QTD_CATALOG")
    os.environ["QTD_CATALOG"] = str(tmp_path_factory.mktemp("catalog"))
    yield
    if before is None:
        os.environ.pop("QTD_CATALOG", None)
    else:
        os.environ["QTD_CATALOG"] = before


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EventStore]:
    s = await EventStore.open(tmp_path / "events.db", node=NODE)
    yield s
    await s.close()
