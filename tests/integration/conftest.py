"""Integration fixtures: a real nats-server (JetStream) per test, on a free port in tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from qtd.bus import BusConfig, EmbeddedNatsServer, connect


def bus_config(server: EmbeddedNatsServer, **overrides: object) -> BusConfig:
    """A client config for tests: fast reconnects, short initial-connect timeout."""
    opts: dict[str, object] = {
        "servers": (server.url,),
        "name": "qtd-test",
        "reconnect_wait_min": 0.05,
        "reconnect_wait_max": 0.25,
        "initial_connect_timeout": 5.0,
    }
    opts.update(overrides)
    return BusConfig(**opts)  # type: ignore[arg-type]


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNatsServer]:
    """A running nats-server with JetStream (small limits), stopped after the test."""
    server = EmbeddedNatsServer(
        tmp_path / "nats", js_max_memory=16 * 1024 * 1024, js_max_storage=64 * 1024 * 1024
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def nats_client(nats_server: EmbeddedNatsServer) -> AsyncIterator[Client]:
    """A client connected to :func:`nats_server` through :func:`qtd.bus.connect`."""
    nc = await connect(bus_config(nats_server))
    try:
        yield nc
    finally:
        await nc.close()
