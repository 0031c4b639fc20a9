"""Child processes of ``qtd up``: start with a log file, stop in order, remember the pids.

Every child runs in its own session, so a terminal's Ctrl-C reaches only ``qtd up``, which
then stops the children in order. Their pids are kept in ``<state>/pids.json`` while they
run; a later ``qtd up`` on the same state directory stops any that a killed ``qtd up`` left
behind (a pid counts only if its command line still names the state directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from qtd.proc import child_env, term_with_parent

log = logging.getLogger("qtd.up")


class Child:
    """One child process (leader or agent) logging to ``log_path``.

    Args:
        name: display name (``leader``, ``node-1``).
        argv: the command.
        log_path: stdout and stderr are appended here.
    """

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name, self.argv, self.log_path = name, list(argv), log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        """Start the process (its own session, stdin closed, :func:`qtd.proc.child_env`: it
        imports the same ``qtd`` as this process, wherever it was started from)."""
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=term_with_parent, env=child_env(),
            )

    def returncode(self) -> int | None:
        """The exit status once it exited (``None`` while it runs or before start)."""
        return self.proc.poll() if self.proc is not None else None

    def log_tail(self, lines: int = 6) -> str:
        """The last lines of its log."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])


async def stop_children(children: Sequence[Child], timeout_s: float) -> dict[str, int | None]:
    """SIGTERM every running child, wait up to ``timeout_s`` seconds, SIGKILL the rest.

    Returns:
        name → exit status (negative: killed by that signal).
    """
    running = [c for c in children if c.proc is not None and c.proc.poll() is None]
    for c in running:
        with contextlib.suppress(ProcessLookupError):
            c.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    deadline = time.monotonic() + timeout_s
    while any(c.proc.poll() is None for c in running) and time.monotonic() < deadline:  # type: ignore[union-attr]
        await asyncio.sleep(0.05)
    for c in running:
        assert c.proc is not None
        if c.proc.poll() is None:
            log.warning("up.stop_timeout name=%s pid=%d action=SIGKILL", c.name, c.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                c.proc.kill()
            await asyncio.to_thread(c.proc.wait)
    return {c.name: c.returncode() for c in children}


def cmdline(pid: int) -> str:
    """The command line of ``pid`` from /proc ("" if gone or unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def write_pids(path: Path, pids: dict[str, int]) -> None:
    """Record ``name → pid`` (atomically)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(pids, indent=1, sort_keys=True))
    os.replace(tmp, path)


def leftovers(path: Path, marker: str) -> dict[str, int]:
    """Processes recorded in ``path`` that still run with ``marker`` in their command line."""
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {name: int(pid) for name, pid in pids.items() if marker in cmdline(int(pid))}


async def stop_leftovers(path: Path, marker: str, timeout_s: float = 10.0) -> list[str]:
    """SIGTERM (then SIGKILL) what a killed ``qtd up`` left running; agents first.

    Returns:
        ``name(pid)`` of each process stopped.
    """
    found = leftovers(path, marker)
    order = sorted(found, key=lambda n: (n == "nats-server", n == "leader", n))
    for name in order:
        pid = found[name]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while marker in cmdline(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if marker in cmdline(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return [f"{n}({found[n]})" for n in order]
