"""NATS for qtd: subjects, client connection, JetStream/KV setup and the embedded server.

* :mod:`qtd.bus.subjects` — :class:`Subjects` (validated subject names) and :func:`msg_id`.
* :mod:`qtd.bus.config` — :class:`BusConfig` (validated with :func:`check_bus_config`) and
  :func:`inbox_prefix` (the client's own reply-inbox prefix).
* :mod:`qtd.bus.client` — :func:`connect` (reconnects forever, with backoff and jitter).
* :mod:`qtd.bus.jetstream` — :func:`ensure_jetstream` (``QTD_EVENTS`` stream, ``qtd_control``
  KV bucket).
* :mod:`qtd.bus.server` — :class:`EmbeddedNatsServer`, a private nats-server subprocess.
"""

from __future__ import annotations

from qtd.bus.client import connect
from qtd.bus.config import BusConfig, TlsConfig, check_bus_config, inbox_prefix, redact_url
from qtd.bus.jetstream import (
    CONTROL_BUCKET,
    EVENTS_STREAM,
    KILL_KEY,
    JetStreamSetup,
    ensure_jetstream,
)
from qtd.bus.server import EmbeddedNatsServer, find_nats_server
from qtd.bus.subjects import CTL_VERBS, DEFAULT_PREFIX, NODE_LEVEL_BOT, Subjects, msg_id

__all__ = [
    "CONTROL_BUCKET",
    "CTL_VERBS",
    "DEFAULT_PREFIX",
    "EVENTS_STREAM",
    "KILL_KEY",
    "NODE_LEVEL_BOT",
    "BusConfig",
    "EmbeddedNatsServer",
    "JetStreamSetup",
    "Subjects",
    "TlsConfig",
    "check_bus_config",
    "connect",
    "ensure_jetstream",
    "find_nats_server",
    "inbox_prefix",
    "msg_id",
    "redact_url",
]
