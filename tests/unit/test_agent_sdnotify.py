"""sd_notify datagram protocol on a real AF_UNIX socket (man 3 sd_notify)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from qtd import sdnotify


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    try:
        yield sock, path
    finally:
        sock.close()


def test_sends_one_datagram_per_notification(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    env = {"NOTIFY_SOCKET": path}
    assert sdnotify.notify("READY=1\nSTATUS=3 bots running", env=env)
    assert sock.recv(4096) == b"READY=1\nSTATUS=3 bots running"
    assert sdnotify.notify("WATCHDOG=1", env=env)
    assert sock.recv(4096) == b"WATCHDOG=1"


def test_abstract_namespace_socket() -> None:
    name = f"qtd-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        assert sdnotify.notify("STOPPING=1", env={"NOTIFY_SOCKET": f"@{name}"})
        assert sock.recv(4096) == b"STOPPING=1"
    finally:
        sock.close()


def test_without_systemd_or_with_a_dead_socket_nothing_raises(tmp_path: Path) -> None:
    assert not sdnotify.notify("READY=1", env={})
    assert not sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": "relative/path"})
    assert not sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})


def test_watchdog_interval_is_half_the_timeout_for_this_process() -> None:
    pid = 4242
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "3000000"}, pid) == 1.5
    assert sdnotify.watchdog_interval_s(
        {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "4242"}, pid) == 1.5
    assert sdnotify.watchdog_interval_s(
        {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}, pid) is None
    assert sdnotify.watchdog_interval_s({}, pid) is None
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "soon"}, pid) is None
