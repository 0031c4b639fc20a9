"""One way to reach a fleet: the connection options every operator command takes, the store
options every store command takes, and the one place that runs a command on NATS.

Operator commands on NATS (``kill``, ``resume``, ``alerts``, ``ack``, ``deploy``,
``versions``, ``history``, ``rollback``) call :func:`add_connection_args` and
:func:`bus_from_args`; store commands (``events``, ``positions``, ``report``, ``surveil``)
call :func:`add_store_args` and :func:`db_from_args`. Given no option, both find the fleet
``qtd up`` started in this directory or in ``$QTD_STATE`` (:mod:`qtd.fleetctx`).

:func:`on_fleet` connects, runs the command and turns what NATS refuses into one line: an
unreachable server is a :class:`~qtd.errors.TemporaryError` (exit 75) naming the URL
(secrets masked); a permission violation ends the command at once with
:class:`~qtd.bus.denied.PermissionDenied` (exit 2) naming the user and the subject.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import tomllib
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client

from qtd.bus import BusConfig, check_bus_config, connect, redact_url
from qtd.bus.config import check_secret_file, read_credential, user_name
from qtd.bus.denied import Denials, NatsAuthRefused, PermissionDenied
from qtd.errors import ConfigError, TemporaryError
from qtd.files import read_capped_text
from qtd.fleetctx import DEFAULT_STATE_DIR, STATE_ENV, FleetContext, find_context

T = TypeVar("T")
Body = Callable[[Client], Coroutine[Any, Any, T]]
"""A command's work on a connected client."""

DEFAULT_SERVER = "nats://127.0.0.1:4222"
"""The last resort: etc/nats-server.conf's ``listen`` address."""
CONNECT_TIMEOUT_S = 5.0

LOGINS: dict[str, tuple[str, ...]] = {
    "kill": ("operator", "leader"),
    "resume": ("operator", "leader"),
    "alerts": ("operator", "leader"),
    "ack": ("operator", "leader"),
    "versions": ("operator", "deployer", "leader"),
    "history": ("operator", "deployer", "leader", "agent-<node>"),  # agents read deploys
    "deploy": ("deployer",),  # the only user that may write strategy sources
    "rollback": ("deployer",),
}
"""Command -> the NATS logins (roles of qtd/bus/logins.py) whose permissions it needs, the
one an operator should use first. Store commands read files and need no login."""

_AUTH_FIELDS = ("token", "user", "password", "nkey_seed_file", "creds_file",
                "token_credential", "password_credential", "nkey_seed_credential",
                "creds_credential")

CONNECTION_HELP = (
    "Which fleet, first that applies: --server URL (repeatable; log in with --creds FILE, "
    "the .creds `qtd node add NAME --role operator` wrote; --user with --password-file or "
    "--password-env on a server with user/password logins; a secret never goes on the "
    "command line); --config TOML (the [bus] of an agent or leader config; --user/--creds "
    "replace its login); --context DIR, else $QTD_STATE, else ./qtd-state: the fleet `qtd "
    "up` started there (its context.json); else " + DEFAULT_SERVER + " (the listen address "
    "of etc/nats-server.conf). NATS unreachable: exit 75; a permission the login lacks: "
    "exit 2, naming the login and the subject.")


def needs(command: str) -> str:
    """``"the operator (or leader) login"``: what ``command`` needs, for messages."""
    users = LOGINS.get(command, ())
    if not users:
        return "no NATS login"
    rest = f" (or {', '.join(users[1:])})" if users[1:] else ""
    return f"the {users[0]}{rest} login"


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    """Add the connection options (see :data:`CONNECTION_HELP`) to ``parser``."""
    g = parser.add_argument_group("reaching the fleet", CONNECTION_HELP)
    g.add_argument("--server", action="append", metavar="URL", help="NATS URL (repeatable)")
    g.add_argument("--user", help="NATS user (a server with user/password logins; the "
                   "shipped server takes --creds)")
    g.add_argument("--password-file", metavar="FILE",
                   help="file holding the password (mode 0600 or 0400)")
    g.add_argument("--password-env", metavar="VAR",
                   help="environment variable holding the password")
    g.add_argument("--creds", metavar="FILE", help="NATS JWT .creds file (mode 0600), e.g. "
                   "the one `qtd node add operator --role operator` wrote")
    g.add_argument("--config", metavar="TOML", help="take [bus] from this agent or leader "
                   "config")
    g.add_argument("--context", metavar="DIR",
                   help=f"a `qtd up` state directory (default ${STATE_ENV}, else "
                   f"./{DEFAULT_STATE_DIR})")
    g.add_argument("--prefix", help="subject prefix (default: the config's, else qtd)")


def add_store_args(parser: argparse.ArgumentParser, *, db_help: str,
                   node: bool = False) -> None:
    """Add ``--db`` and ``--context`` (and ``--node`` when ``node``) to a store command."""
    parser.add_argument("--db", help=f"{db_help} (default: the leader's fleet.db of the "
                        f"`qtd up` fleet: --context DIR, ${STATE_ENV} or ./{DEFAULT_STATE_DIR})")
    parser.add_argument("--context", metavar="DIR",
                        help="the `qtd up` state directory whose stores to read")
    if node:
        parser.add_argument("--node", help="with the `qtd up` fleet: this node's events.db "
                            "instead of the leader's fleet.db")


def db_from_args(args: argparse.Namespace) -> str:
    """The store a store command reads: ``--db``, else the ``qtd up`` fleet's fleet.db (or
    ``--node``'s events.db).

    Raises:
        ConfigError: no ``--db`` and no fleet found, an unknown ``--node``, or both
            ``--db`` and ``--node``.
    """
    node = getattr(args, "node", None)
    if args.db:
        if node:
            raise ConfigError("--db and --node: give one", source="<arg>", field="node",
                              value=node, rule="--node picks a store of the qtd up fleet")
        return str(args.db)
    found = find_context(args.context)
    if found is None:
        raise ConfigError(f"--db is required: no `qtd up` fleet here (no ./{DEFAULT_STATE_DIR}"
                          f"/context.json; set ${STATE_ENV} or pass --context DIR)",
                          source="<arg>", field="db", value=None, rule="a store to read")
    ctx, _ = found
    if not node:
        return ctx.fleet_db
    if node not in ctx.nodes:
        raise ConfigError(f"--node {node!r}: not a node of {ctx.path}; nodes: "
                          f"{', '.join(sorted(ctx.nodes))}", source="<arg>", field="node",
                          value=node, rule="a node of the qtd up fleet")
    return ctx.nodes[node].events_db


# --- the bus -------------------------------------------------------------------------------


def _password(args: argparse.Namespace) -> str | None:
    if args.password_file and args.password_env:
        raise ConfigError("--password-file and --password-env: give one", source="<arg>",
                          field="password", value=None, rule="one password source")
    if args.password_file:
        path = Path(args.password_file)
        check_secret_file(path, "password_file", "--password-file")
        return read_credential(path)
    if args.password_env:
        value = os.environ.get(args.password_env, "")
        if not value:
            raise ConfigError(f"--password-env {args.password_env}: the variable is unset or "
                              "empty", source="<arg>", field="password_env",
                              value=args.password_env, rule="a set environment variable")
        return value
    return None


def _auth(args: argparse.Namespace) -> dict[str, Any] | None:
    """The login the flags give (every auth field of :class:`BusConfig`), or None."""
    password = _password(args)
    if args.creds and (args.user or password is not None):
        raise ConfigError("--creds and --user/--password-*: give one login", source="<arg>",
                          field="creds", value=args.creds, rule="one auth method")
    if (args.user is None) != (password is None):
        raise ConfigError("--user goes with --password-file FILE or --password-env VAR (never "
                          "a password on the command line)", source="<arg>", field="user",
                          value=args.user, rule="user and password together")
    if not args.user and not args.creds:
        return None
    auth: dict[str, Any] = dict.fromkeys(_AUTH_FIELDS)
    auth.update(user=args.user, password=password, creds_file=args.creds)
    return auth


def _bus_of_toml(path: str) -> BusConfig:
    """The ``[bus]`` table of an agent or leader TOML (checked by :func:`bus_from_args` once
    the flags' login replaced its own).

    Raises:
        ConfigError: unreadable, not TOML, no (or a disabled) ``[bus]``, or an invalid one.
    """
    try:
        doc = tomllib.loads(read_capped_text(path))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"--config {path}: cannot read: {exc}", source=path,
                          field="config", value=path, rule="a readable TOML file") from None
    bus = doc.get("bus")
    if not isinstance(bus, dict) or bus.get("enabled", True) is False:
        raise ConfigError(f"{path}: no [bus] section (NATS off): pass --server URL",
                          source=path, field="bus", value=None, rule="required")
    try:
        return msgspec.convert({k: v for k, v in bus.items() if k != "enabled"}, BusConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: [bus]: {exc}", source=path, field="bus", value=None,
                          rule="a valid [bus]") from None


def _context_bus(ctx: FleetContext, how: str) -> BusConfig:
    if not ctx.running():
        raise TemporaryError(
            f"the `qtd up` fleet of {ctx.state_dir} ({how}) is not running: its NATS "
            f"{ctx.nats_url} is gone; start it with `qtd up --state-dir {ctx.state_dir}`",
            servers=ctx.nats_url)
    return BusConfig(servers=(ctx.nats_url,), prefix=ctx.prefix)


def bus_from_args(args: argparse.Namespace, name: str = "qtd") -> BusConfig:
    """The :class:`BusConfig` the connection options name (precedence:
    :data:`CONNECTION_HELP`), with connection name ``name`` and a 5 s connect timeout.

    Raises:
        ConfigError: conflicting or incomplete options, an unreadable config or context, a
            password file readable by group or others.
        TemporaryError: the ``qtd up`` fleet found is not running.
    """
    named = [f for f, v in (("--server", args.server), ("--config", args.config),
                            ("--context", args.context)) if v]
    if len(named) > 1:
        raise ConfigError(f"{' and '.join(named)}: give one", source="<arg>", field="server",
                          value=named, rule="one way to name the fleet")
    auth = _auth(args)
    source = "<arg>"
    if args.server:
        base = BusConfig(servers=tuple(args.server))
    elif args.config:
        base, source = _bus_of_toml(args.config), args.config
    else:
        found = find_context(args.context)
        base = _context_bus(*found) if found else BusConfig(servers=(DEFAULT_SERVER,))
    cfg = msgspec.structs.replace(base, name=name, initial_connect_timeout=CONNECT_TIMEOUT_S,
                                  prefix=args.prefix or base.prefix, **(auth or {}))
    return check_bus_config(cfg, source)


def login_of(bus: BusConfig) -> str:
    """The NATS login ``bus`` uses, for messages (never a secret)."""
    user = user_name(bus)
    if user:
        return user
    if bus.creds_file or bus.creds_credential:
        return f"(creds {bus.creds_file or bus.creds_credential})"
    return "(token)" if bus.token or bus.token_credential else "(no user)"


# --- running a command on NATS -------------------------------------------------------------

NATS_ERRORS = (nats.errors.Error, nats.js.errors.Error, TimeoutError)


async def _connect(bus: BusConfig, command: str, denials: Denials) -> Client:
    try:
        return await connect(bus, on_error=denials)
    except NatsAuthRefused as exc:
        if exc.auth != "none":
            raise
        raise NatsAuthRefused(
            f"{command}: NATS at {exc.servers} needs a login: pass --creds FILE (`qtd node "
            "add NAME --role ROLE` issues one), or --config TOML with a [bus] login; "
            f"{command} needs {needs(command)}", servers=exc.servers, auth=exc.auth) from None


def _refusal(bus: BusConfig, command: str, denials: Denials) -> PermissionDenied:
    assert denials.first is not None
    action, subject = denials.first
    return PermissionDenied(user=login_of(bus), action=action, subject=subject,
                            command=command, needs=needs(command))


async def on_fleet(bus: BusConfig, command: str, body: Body[T]) -> T:
    """Connect with ``bus``, run ``body(nc)``, drain: the one way a command uses NATS.

    Args:
        bus: from :func:`bus_from_args`.
        command: the command's name, for messages (``"kill"``).
        body: the command's work on the connection.

    Returns:
        What ``body`` returned.

    Raises:
        TemporaryError: NATS unreachable (names the URL, secrets masked), or a NATS timeout
            or error while ``body`` ran (one line).
        NatsAuthRefused: the login was refused (or a login is needed and none was given).
        PermissionDenied: the server refused a publish or subscribe ``body`` needs; raised
            as soon as the server says so (``body`` is cancelled; what it did before the
            refusal stays done, and the message names what was refused).
        QtdError: whatever ``body`` raised.
    """
    with _bus_log_quiet():
        return await _on_fleet(bus, command, body)


@contextlib.contextmanager
def _bus_log_quiet() -> Iterator[None]:
    """No ``qtd.bus`` warnings on a command's stderr (Python's last-resort handler prints
    them when nothing configured logging): what NATS refused ends the command in one line."""
    logger, sink = logging.getLogger("qtd.bus"), logging.NullHandler()
    logger.addHandler(sink)
    try:
        yield
    finally:
        logger.removeHandler(sink)


async def _on_fleet(bus: BusConfig, command: str, body: Body[T]) -> T:
    denials = Denials()
    nc = await _connect(bus, command, denials)
    try:
        work: asyncio.Task[T] = asyncio.create_task(body(nc), name=f"qtd-{command}")
        refused = asyncio.create_task(denials.event.wait(), name=f"qtd-{command}-denied")
        try:
            await asyncio.wait({work, refused}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cut_short = not work.done()
            refused.cancel()
            work.cancel()
            await asyncio.gather(work, refused, return_exceptions=True)
        if cut_short:
            raise _refusal(bus, command, denials)
        try:
            result = work.result()
        except NATS_ERRORS as exc:
            with contextlib.suppress(*NATS_ERRORS):
                await nc.flush(timeout=1)  # a violation the server sent before: seen now
            if denials.first is not None:
                raise _refusal(bus, command, denials) from None
            servers = ", ".join(map(redact_url, bus.servers))
            raise TemporaryError(f"{command}: NATS at {servers}: {type(exc).__name__}: "
                                 f"{exc or 'no answer in time'}", servers=servers) from None
        if not nc.is_closed:
            await nc.drain()
        return result
    finally:
        if not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()
