"""etc/nats-server.conf is a valid nats-server config (``nats-server -t``) once ``qtd node
init`` has written its include, with the JetStream durability settings and the JWT resolver
qtd relies on, and no login of its own (every login is a signed JWT: qtd/bus/logins.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from qtd.bus import find_nats_server
from qtd.nodes.keyring import Keyring

CONF = Path(__file__).resolve().parents[2] / "etc" / "nats-server.conf"


def test_conf_has_durable_jetstream_a_full_resolver_and_no_login() -> None:
    text = CONF.read_text()
    for needle in ('listen: "127.0.0.1:4222"', 'store_dir: "/var/lib/nats"',
                   "max_memory_store:", "max_file_store:", "sync_interval: always",
                   "type: full", "allow_delete: false", 'include "nats-auth.conf"'):
        assert needle in text, needle
    code = [line.split("#", 1)[0] for line in text.splitlines()]
    for word in ("password:", "user:", "users:", "no_auth_user", "authorization", "nkey:"):
        assert not any(word in line for line in code), word


def test_nats_server_config_test_mode_accepts_it_with_the_generated_include(
        tmp_path: Path) -> None:
    shutil.copy(CONF, tmp_path / "nats-server.conf")
    res = subprocess.run([str(find_nats_server()), "-t", "-c",
                          str(tmp_path / "nats-server.conf")], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode != 0  # without `qtd node init` there is no operator: refused
    ring = Keyring.create(tmp_path / "keys", servers=("nats://127.0.0.1:4222",))
    ring.write_server_include(tmp_path / "nats-auth.conf")
    res = subprocess.run([str(find_nats_server()), "-t", "-c",
                          str(tmp_path / "nats-server.conf")], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
