"""systemd service notifications (``Type=notify``) without a dependency.

Implements the datagram protocol of ``man 3 sd_notify``: the service manager passes the path
of an ``AF_UNIX`` socket in ``$NOTIFY_SOCKET`` (a leading ``@`` means the Linux abstract
namespace, i.e. a leading NUL byte); the service sends newline-separated ``KEY=VALUE``
assignments in one ``SOCK_DGRAM`` datagram: ``READY=1`` when start-up is complete,
``WATCHDOG=1`` keep-alive pings, ``STOPPING=1`` when shutdown begins, ``STATUS=...`` free text.

The watchdog: when ``WatchdogSec=`` is set, systemd exports ``$WATCHDOG_USEC`` (the timeout,
µs) and ``$WATCHDOG_PID`` (the process it is meant for); ``man 3 sd_watchdog_enabled``
recommends pinging at half the timeout.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op returning False.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

NOTIFY_SOCKET = "NOTIFY_SOCKET"


def _address(path: str) -> str | bytes:
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    return path


def notify(state: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send one notification, e.g. ``notify("READY=1\\nSTATUS=trading")``.

    Args:
        state: newline-separated ``KEY=VALUE`` assignments (``man 3 sd_notify``).
        env: environment to read ``NOTIFY_SOCKET`` from (default ``os.environ``).

    Returns:
        True if a datagram was sent; False without ``$NOTIFY_SOCKET`` or on a socket error
        (notifications never raise into the caller).
    """
    path = (env if env is not None else os.environ).get(NOTIFY_SOCKET, "")
    if not path or not (path.startswith("/") or path.startswith("@")):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), _address(path))
    except OSError:
        return False
    return True


def ready(status: str = "") -> bool:
    """``READY=1`` (plus ``STATUS=``): start-up finished."""
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def stopping(status: str = "") -> bool:
    """``STOPPING=1`` (plus ``STATUS=``): shutdown began."""
    return notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))


def watchdog() -> bool:
    """``WATCHDOG=1``: keep-alive ping."""
    return notify("WATCHDOG=1")


def watchdog_interval_s(env: Mapping[str, str] | None = None, pid: int | None = None
                        ) -> float | None:
    """Seconds between watchdog pings (half of ``$WATCHDOG_USEC``), or None when the
    watchdog is off or meant for another process (``$WATCHDOG_PID`` ≠ ``pid``).

    Args:
        env: environment (default ``os.environ``).
        pid: this process id (default ``os.getpid()``).
    """
    e = env if env is not None else os.environ
    try:
        usec = int(e.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    if usec <= 0:
        return None
    want = e.get("WATCHDOG_PID")
    if want and want.isdigit() and int(want) != (pid if pid is not None else os.getpid()):
        return None
    return usec / 1_000_000 / 2
