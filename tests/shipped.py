"""The shipped configs on real processes: ``etc/nats-server.conf`` with NATS auth on, the
leader and agents as ``python -m qtd.cli`` processes.

The server config is the shipped file with only what a test must change: a free port (via
``ports_file_dir``), temporary JetStream and resolver directories and no monitoring port.
Its logins are those of the operator's own path: a keyring made by
:meth:`qtd.nodes.keyring.Keyring.create` (``qtd node init``) writes the include the shipped
config reads, and each login's ``.creds`` is issued from it (``qtd node add``).

Every process started here is stopped by the context manager that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import nats
import tomli_w
from nats.aio.client import Client

from qtd.bus import find_nats_server
from qtd.bus.logins import inbox_of
from qtd.nodes.keyring import Keyring
from qtd.up.procs import stop_leftovers
from tests.agent_rig import stop_process, wait_for, write_fleet

ROOT = Path(__file__).resolve().parents[1]
ETC = ROOT / "etc"
CONF = ETC / "nats-server.conf"


_KEYRINGS: dict[Path, Keyring] = {}
"""Config file -> the keyring its include came from (one per rendered server)."""
_BY_URL: dict[str, Path] = {}
"""Server URL -> its rendered config file."""


def user_inbox(user: str) -> str:
    """The inbox prefix a qtd process logged in as ``user`` uses (:func:`qtd.bus.inbox_prefix`)."""
    return inbox_of(user)


def creds_for(url_or_conf: str | Path, login: str) -> Path:
    """The ``.creds`` file of ``login`` (``agent-<node>``, ``leader``, ``operator``,
    ``deployer``) for the server at ``url_or_conf``, issued from that server's keyring by
    :meth:`qtd.nodes.keyring.Keyring.issue` the first time it is asked for, exactly as
    ``qtd node add`` issues it."""
    conf = url_or_conf if isinstance(url_or_conf, Path) else _BY_URL[url_or_conf]
    path = conf.parent / "creds" / f"{login}.creds"
    if not path.exists():
        ring = _KEYRINGS[conf]
        role = "agent" if login.startswith("agent-") else login
        text = (ring.issue("agent", login.removeprefix("agent-")) if role == "agent"
                else ring.issue(role, name=login))  # type: ignore[arg-type]
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        path.chmod(0o600)
    return path


def render_conf(tmp: Path, nodes: Iterable[str] = ("node-a",), *,
                conf: Path = CONF) -> Path:
    """The shipped server config made runnable in ``tmp``: a free port, a temporary store
    and resolver directory, no monitoring port, and the include ``qtd node init`` writes
    (from a keyring in ``tmp/keys``); ``nodes`` get their agent logins up front."""
    text = conf.read_text()
    text = text.replace('listen: "127.0.0.1:4222"',
                        f'listen: "127.0.0.1:-1"\nports_file_dir: "{tmp}"')
    text = re.sub(r"^http: .*$", "", text, flags=re.M)
    text = text.replace('store_dir: "/var/lib/nats"', f'store_dir: "{tmp / "js"}"')
    text = text.replace('dir: "/var/lib/nats/accounts"', f'dir: "{tmp / "accounts"}"')
    ring = Keyring.create(tmp / "keys", servers=("nats://127.0.0.1:4222",))
    ring.write_server_include(tmp / "nats-auth.conf")
    out = tmp / "nats-server.conf"
    out.write_text(text)
    _KEYRINGS[out] = ring
    for node in nodes:
        creds_for(out, f"agent-{node}")
    return out


def keyring_of(url: str) -> Keyring:
    """The keyring of the shipped server at ``url``."""
    return _KEYRINGS[_BY_URL[url]]


class ShippedNats:
    """A running nats-server on the shipped config (see :func:`shipped_nats`)."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, conf: Path) -> None:
        self.proc, self.url, self.conf = proc, url, conf
        self._clients: list[Client] = []

    async def connect(self, user: str, errors: list[str] | None = None,
                      **kw: Any) -> Client:
        """A client logged in as ``user`` with the inbox prefix qtd derives for it (the only
        one the shipped ACL lets it read); permission errors are appended to ``errors``."""
        sink = errors if errors is not None else []

        async def on_error(exc: Exception) -> None:
            sink.append(str(exc))

        kw.setdefault("allow_reconnect", False)
        kw.setdefault("inbox_prefix", user_inbox(user))
        nc = await nats.connect(self.url, user_credentials=str(creds_for(self.conf, user)),
                                error_cb=on_error, connect_timeout=2, **kw)
        self._clients.append(nc)
        return nc

    async def close_clients(self) -> None:
        for nc in self._clients:
            with contextlib.suppress(Exception):
                await nc.close()
        self._clients.clear()


@contextlib.asynccontextmanager
async def shipped_nats(tmp: Path, nodes: Iterable[str] = ("node-a",)
                       ) -> AsyncIterator[ShippedNats]:
    """Start nats-server on the shipped config (see :func:`render_conf`); stop it on exit."""
    tmp.mkdir(parents=True, exist_ok=True)
    conf = render_conf(tmp, nodes)
    proc = subprocess.Popen([str(find_nats_server()), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server: ShippedNats | None = None
    try:
        ports = tmp / f"nats-server_{proc.pid}.ports"
        for _ in range(500):
            if ports.exists() and ports.stat().st_size:
                break
            assert proc.poll() is None, "nats-server exited at start (bad config?)"
            await asyncio.sleep(0.02)
        url = msgspec.json.decode(ports.read_bytes())["nats"][0]
        _BY_URL[url] = conf
        server = ShippedNats(proc, url, conf)
        yield server
    finally:
        if server is not None:
            await server.close_clients()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- configs ---------------------------------------------------------------------------------


def agent_config(root: Path, node: str, url: str, bots: dict[str, dict[str, Any]], *,
                 extra: str = "", market: str = "speed = 8640000.0") -> Path:
    """A fleet directory for one agent (see :func:`tests.agent_rig.write_fleet`) logging in
    as ``agent-<node>`` with its ``.creds`` file (:func:`creds_for`)."""
    cfg = write_fleet(root, bots, node=node, bus_url=url, extra=extra, market=market)
    creds = creds_for(url, f"agent-{node}")
    cfg.write_text(cfg.read_text().replace("[bus]\n", f'[bus]\ncreds_file = "{creds}"\n'))
    return cfg


def leader_config(tmp: Path, url: str, *, caps: bool | dict[str, dict[str, Any]] = False,
                  **sections: dict[str, Any]) -> Path:
    """``etc/leader.toml`` pointed at ``url`` as the ``leader`` login, fleet.db in ``tmp``, no
    paging destinations; ``caps``: False drops the fleet caps, True keeps the shipped ones,
    a dict replaces them; ``sections`` are merged in."""
    doc: dict[str, Any] = tomllib.loads((ETC / "leader.toml").read_text())
    doc["fleet_db"] = str(tmp / "leader" / "fleet.db")
    doc["bus"] = {"servers": [url], "name": "qtd-leader",
                  "creds_file": str(creds_for(url, "leader"))}
    if isinstance(caps, dict):
        doc["caps"] = caps
    elif not caps:
        doc.pop("caps", None)
    doc["notify"].pop("destinations", None)
    doc["notify"].pop("quiet_hours", None)
    doc["liveness"]["heartbeat_interval_s"] = 0.2
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    path = tmp / "leader.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(doc))
    return path


# --- processes -------------------------------------------------------------------------------


def qtd_process(args: list[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
    """``python -m qtd.cli ARGS`` with stdout and stderr appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "qtd.cli", *args], stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **env})


def run_qtd(args: list[str], timeout_s: float = 60.0,
            **env: str) -> subprocess.CompletedProcess[str]:
    """Run one ``qtd`` command to its end (what an operator types); output captured."""
    return subprocess.run([sys.executable, "-m", "qtd.cli", *args], capture_output=True,
                          text=True, timeout=timeout_s, cwd=ROOT,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **env}, check=False)


DEMO_UP_S = 25  # --duration of the shared demo run (momo-goog's first fill comes at ~13 s)


class DemoRun(NamedTuple):
    """A finished piped ``qtd up``: its state directory and the process result."""

    state: Path
    run: subprocess.CompletedProcess[str]


def run_demo_up(state: Path) -> DemoRun:
    """``qtd up`` of the shipped demo fleet (2 agents, 40 bars/s) for :data:`DEMO_UP_S`
    seconds with stdout piped, to its end; any process it left behind is stopped."""
    argv = [sys.executable, "-m", "qtd.cli", "up", "--state-dir", str(state), "--agents", "2",
            "--speed", "40", "--duration", str(DEMO_UP_S), "--stop-timeout", "10"]
    try:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=DEMO_UP_S + 240,
                             check=False)
    finally:
        asyncio.run(stop_leftovers(state / "pids.json", str(state), timeout_s=5.0))
    return DemoRun(state, run)


@contextlib.contextmanager
def processes() -> Any:
    """A list to append started processes to; each is stopped (SIGTERM, then SIGKILL) on
    exit, SIGCONTed first in case a test stopped it."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                if p.poll() is None:
                    os.kill(p.pid, signal.SIGCONT)
            stop_process(p)


async def denied(errors: list[str], what: str) -> None:
    """Wait until the server reported a permissions violation naming ``what`` on a client
    whose errors go to ``errors`` (see :meth:`ShippedNats.connect`)."""
    needle = what.lower()
    try:
        await wait_for(lambda: any("permissions violation" in e.lower() and needle in e.lower()
                                   for e in errors), timeout_s=5)
    except TimeoutError:
        raise AssertionError(f"no permissions violation for {what!r}; errors: {errors}") from None


async def log_match(log: Path, pattern: bytes, timeout_s: float = 60.0,
                    start: int = 0) -> re.Match[bytes]:
    """Wait until ``pattern`` appears in ``log`` (from byte ``start``); return the match."""
    found: list[re.Match[bytes]] = []

    def seen() -> bool:
        m = re.search(pattern, log.read_bytes()[start:]) if log.exists() else None
        if m:
            found.append(m)
        return m is not None

    try:
        await wait_for(seen, timeout_s)
    except TimeoutError:
        tail = log.read_bytes()[-3000:].decode(errors="replace") if log.exists() else ""
        raise AssertionError(f"{pattern!r} not in {log} after {timeout_s}s; tail:\n{tail}"
                             ) from None
    return found[-1]


async def leader_web_url(log: Path, timeout_s: float = 60.0) -> str:
    """The status page URL a leader process logged."""
    m = await log_match(log, rb"leader\.web url=(http://[^\s\"]+)", timeout_s)
    return m.group(1).decode().rstrip("/")
