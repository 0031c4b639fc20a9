"""etc/nats-server.conf is a valid nats-server config (``nats-server -t``), with the
JetStream durability settings and the per-user permissions qtd relies on."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from qtd.bus import find_nats_server
from qtd.errors import OperationalError

CONF = Path(__file__).resolve().parents[2] / "etc" / "nats-server.conf"


def _nats_server() -> Path | None:
    try:
        return find_nats_server()
    except OperationalError:
        return None


def test_conf_has_durable_jetstream_and_no_clear_text_password() -> None:
    text = CONF.read_text()
    for needle in ('listen: "127.0.0.1:4222"', 'store_dir: "/var/lib/nats"',
                   "max_memory_store:", "max_file_store:", "sync_interval: always",
                   'user: "agent-node-a"', 'user: "leader"', 'user: "operator"', '"$JS.API.>"'):
        assert needle in text, needle
    passwords = [line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.strip().startswith("password:")]
    assert len(passwords) == 4
    assert all(p.startswith('"$2a$11$REPLACE') for p in passwords), passwords  # placeholders


@pytest.mark.skipif(_nats_server() is None, reason="nats-server binary not installed")
def test_nats_server_config_test_mode_accepts_it() -> None:
    binary = _nats_server()
    assert binary is not None
    res = subprocess.run([str(binary), "-t", "-c", str(CONF)], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
