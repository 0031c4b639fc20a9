"""Shared fixtures: a real SQLite event store in a temporary directory; an empty market
data catalog (``QTD_CATALOG``), so no test reads the machine's own; one run of the demo
fleet (``qtd up``) that several tests read."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from qtd.store import EventStore
from tests.factories import NODE
from tests.shipped import DemoRun, run_demo_up


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


@pytest.fixture(scope="session")
def demo_up(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """One piped ``qtd up`` of the shipped demo fleet (:func:`tests.shipped.run_demo_up`),
    run once per session. Tests only read what it left (its stdout, the agents' stores, the
    leader's fleet.db): never write to its state directory."""
    return run_demo_up(tmp_path_factory.mktemp("demo-up") / "state")
