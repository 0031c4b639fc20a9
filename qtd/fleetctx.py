"""The context file ``qtd up`` writes, and how operator commands find it.

``qtd up`` writes ``<state>/context.json`` once its fleet is started: the private
nats-server's URL, the generated configs, the status page URL, the stores, and each node's
agent config and kill file. Operator commands given no connection options (``--server``,
``--config``, ``--context``) and store commands given no ``--db`` read it from, in order:

1. ``--context DIR`` (a state directory, or the context file itself);
2. ``$QTD_STATE`` (a state directory);
3. ``./qtd-state`` (``qtd up``'s default state directory), when it holds a context file.

A named place (1, 2) without a context file is an error; 3 is only looked at. The file holds
no secret (``qtd up``'s nats-server runs without auth on 127.0.0.1) and stays after the fleet
stops, so the stores remain findable; :meth:`FleetContext.running` says whether the
``qtd up`` that wrote it still runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

from qtd.errors import ConfigError
from qtd.files import read_capped

CONTEXT_FILE = "context.json"
STATE_ENV = "QTD_STATE"
DEFAULT_STATE_DIR = "qtd-state"


class NodeContext(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One agent of a ``qtd up`` fleet.

    Attributes:
        config: its agent TOML (generated).
        kill_file: the kill file it watches (``qtd kill --local`` writes it).
        events_db: its event store.
        bots: the bots it runs.
    """

    config: str
    kill_file: str
    events_db: str
    bots: tuple[str, ...] = ()


class FleetContext(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A ``qtd up`` fleet, as written to ``<state>/context.json``.

    Attributes:
        state_dir: the state directory (absolute).
        nats_url: the private nats-server's client URL (no auth).
        prefix: the subject prefix.
        leader_config: the leader's TOML (generated).
        fleet_db: the leader's store.
        web_url: the status page, or None without one.
        nodes: node name -> :class:`NodeContext`.
        pid: process id of the ``qtd up`` that wrote it.
        started_ns: when it was written, UTC ns.
    """

    state_dir: str
    nats_url: str
    prefix: str = "qtd"
    leader_config: str
    fleet_db: str
    web_url: str | None = None
    nodes: dict[str, NodeContext] = {}
    pid: int
    started_ns: int

    @property
    def path(self) -> Path:
        """The context file."""
        return Path(self.state_dir) / CONTEXT_FILE

    def running(self) -> bool:
        """True while the ``qtd up`` that wrote this file runs (its pid is alive)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, another user's
            return True
        return True


def write_context(ctx: FleetContext) -> Path:
    """Write ``ctx`` to ``<state_dir>/context.json`` (atomically: a reader never sees half a
    file); returns the path."""
    path = ctx.path
    tmp = path.with_name(f".{CONTEXT_FILE}.tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(ctx)) + b"\n")
    os.replace(tmp, path)
    return path


def read_context(where: str | os.PathLike[str]) -> FleetContext:
    """The context in ``where`` (a state directory or the context file).

    Raises:
        ConfigError: no context file there, or it does not decode (names the file and why).
    """
    path = Path(where)
    if path.is_dir():
        path = path / CONTEXT_FILE
    try:
        data = read_capped(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no qtd up context here (`qtd up --state-dir "
                          f"{path.parent}` writes it when the fleet starts)", source=str(path),
                          field="context", value=str(path), rule="a qtd up state directory"
                          ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: unreadable: {exc.strerror}", source=str(path),
                          field="context", value=str(path), rule="readable") from None
    try:
        return msgspec.json.decode(data, type=FleetContext)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not a qtd up context file: {exc}", source=str(path),
                          field="context", value=str(path), rule="FleetContext JSON") from None


def find_context(explicit: str | None = None, environ: Mapping[str, str] | None = None,
                 cwd: Path | None = None) -> tuple[FleetContext, str] | None:
    """The ``qtd up`` fleet to operate, and how it was found (``"--context DIR"``,
    ``"$QTD_STATE=DIR"`` or ``"./qtd-state"``); None when there is none (module docstring
    for the order).

    Raises:
        ConfigError: ``explicit`` or ``$QTD_STATE`` names a place without a context file.
    """
    env = os.environ if environ is None else environ
    if explicit:
        return read_context(explicit), f"--context {explicit}"
    state = env.get(STATE_ENV)
    if state:
        return read_context(state), f"${STATE_ENV}={state}"
    here = (cwd or Path.cwd()) / DEFAULT_STATE_DIR / CONTEXT_FILE
    if here.is_file():
        return read_context(here), f"./{DEFAULT_STATE_DIR}"
    return None
