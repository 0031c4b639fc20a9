"""NATS client connection: reconnect forever, with backoff and jitter.

A qtd process keeps running while NATS is away (agents keep trading under local risk caps and
catch up from their store later), so the client never gives up reconnecting. Disconnects,
reconnects and errors are logged as ``key=value`` lines (event name first; the same fields
are in the record's ``extra["bus"]``); tokens and passwords are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.aio.client import Client, Server

from qtd.bus.config import (
    REDACTED,
    BusConfig,
    TlsConfig,
    check_bus_config,
    config_error,
    inbox_prefix,
    redact_url,
    resolve_credentials,
)
from qtd.bus.denied import NatsAuthRefused
from qtd.errors import OperationalError, TemporaryError

log = logging.getLogger("qtd.bus")


def reconnect_delay(
    attempt: int, *, wait_min: float, wait_max: float, jitter: float, rng: random.Random
) -> float:
    """Delay before reconnect attempt ``attempt`` (0-based), in seconds.

    Exponential (``wait_min * 2**attempt``, capped at ``wait_max``); the last ``jitter``
    fraction of it is random.
    """
    base = min(wait_max, wait_min * 2.0 ** min(attempt, 32))
    return base * (1.0 - jitter * rng.random())


class _Redactor:
    def __init__(self, secrets: list[str]) -> None:
        self._secrets = [s for s in secrets if s]

    def __call__(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, REDACTED)
        return text


def _emit(level: int, event: str, **fields: Any) -> None:
    line = " ".join(f"{k}={v}" for k, v in fields.items())
    log.log(level, "%s %s", event, line, extra={"bus": {"event": event, **fields}})


class _ConnState:
    def __init__(self) -> None:
        self.server = "-"
        self.last_error: BaseException | None = None
        self.auth_refused = asyncio.Event()


def _callbacks(
    nc: Client, cfg: BusConfig, redact: _Redactor, state: _ConnState,
    listener: Callable[[Exception], None] | None = None,
) -> dict[str, Callable[..., Awaitable[None]]]:
    def server() -> str:
        return _server(nc, state)

    async def on_error(e: Exception) -> None:
        state.last_error = e
        if listener is not None:
            listener(e)
        if _is_auth_error(e):
            state.auth_refused.set()
        _emit(logging.WARNING, "nats.error", name=cfg.name, server=server(),
              error=type(e).__name__, detail=repr(redact(str(e))))

    async def on_disconnected() -> None:
        closing = nc.is_closed or nc.is_draining
        _emit(logging.INFO if closing else logging.WARNING, "nats.disconnected",
              name=cfg.name, server=server(), reason="close" if closing else "lost")

    async def on_reconnected() -> None:
        _emit(logging.INFO, "nats.reconnected", name=cfg.name, server=server(),
              reconnects=nc.stats["reconnects"])

    async def on_closed() -> None:
        _emit(logging.INFO, "nats.closed", name=cfg.name)

    async def on_lame_duck() -> None:
        _emit(logging.WARNING, "nats.lame_duck", name=cfg.name, server=server())

    async def on_discovered() -> None:
        _emit(logging.INFO, "nats.discovered_server", name=cfg.name)

    return {
        "error_cb": on_error,
        "disconnected_cb": on_disconnected,
        "reconnected_cb": on_reconnected,
        "closed_cb": on_closed,
        "lame_duck_mode_cb": on_lame_duck,
        "discovered_server_cb": on_discovered,
    }


def _reconnect_handler(
    cfg: BusConfig, rng: random.Random
) -> Callable[[list[Server], dict[str, Any]], tuple[Server | None, float]]:
    def pick(servers: list[Server], _info: dict[str, Any]) -> tuple[Server | None, float]:
        fewest = min(s.reconnects for s in servers)
        server = rng.choice([s for s in servers if s.reconnects == fewest])
        delay = reconnect_delay(fewest, wait_min=cfg.reconnect_wait_min,
                                wait_max=cfg.reconnect_wait_max, jitter=cfg.reconnect_jitter,
                                rng=rng)
        return server, delay

    return pick


def _tls_context(tls: TlsConfig, source: str) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=tls.ca_file)
    except (OSError, ssl.SSLError) as e:
        raise config_error(source, "tls.ca_file", tls.ca_file, f"unusable CA file: {e}") from e
    if tls.cert_file is not None:
        try:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as e:
            raise config_error(
                source, "tls.cert_file", tls.cert_file, f"unusable certificate/key: {e}"
            ) from e
    return ctx


def _connect_options(cfg: BusConfig, source: str, rng: random.Random) -> dict[str, Any]:
    if (cfg.nkey_seed_file or cfg.creds_file) and importlib.util.find_spec("nkeys") is None:
        raise OperationalError(
            "NKey/creds authentication needs the 'nkeys' package: pip install nkeys",
            package="nkeys",
        )
    opts: dict[str, Any] = {
        "servers": list(cfg.servers),
        "name": cfg.name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 1,  # initial connect only; reconnects use the handler's delay
        "reconnect_to_server_handler": _reconnect_handler(cfg, rng),
        "connect_timeout": cfg.connect_timeout,
        "ping_interval": cfg.ping_interval,
        "max_outstanding_pings": cfg.max_outstanding_pings,
        "pending_size": cfg.reconnect_buffer_bytes,
        "drain_timeout": cfg.drain_timeout,
        "inbox_prefix": inbox_prefix(cfg),
        "token": cfg.token,
        "user": cfg.user,
        "password": cfg.password,
        "nkeys_seed": cfg.nkey_seed_file,
        "user_credentials": cfg.creds_file,
    }
    if cfg.tls is not None:
        opts["tls"] = _tls_context(cfg.tls, source)
        opts["tls_hostname"] = cfg.tls.hostname
        opts["tls_handshake_first"] = cfg.tls.handshake_first
    return opts


def _auth_kind(cfg: BusConfig) -> str:
    if cfg.token is not None:
        return "token"
    if cfg.user is not None:
        return "user"
    if cfg.nkey_seed_file is not None:
        return "nkey"
    return "creds" if cfg.creds_file is not None else "none"


def _server(nc: Client, state: _ConnState) -> str:
    if nc.connected_url is not None:
        state.server = redact_url(nc.connected_url.geturl())
    return state.server


class _AuthRefused(Exception):
    pass


def _is_auth_error(e: BaseException | None) -> bool:
    return isinstance(e, nats.errors.AuthorizationError) or (
        isinstance(e, nats.errors.Error) and "authorization violation" in str(e).lower()
    )


async def _first_connect(
    nc: Client, opts: dict[str, Any], timeout: float | None, auth_failed: asyncio.Event
) -> None:
    """``nc.connect`` bounded by ``timeout``, cut short when the servers refuse our auth
    (nats-py itself would retry a refused login forever)."""
    task = asyncio.create_task(nc.connect(**opts), name="qtd-bus-connect")
    refused = asyncio.create_task(auth_failed.wait(), name="qtd-bus-auth-refused")
    try:
        done, _ = await asyncio.wait(
            {task, refused}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for t in (task, refused):
            t.cancel()
        await asyncio.gather(task, refused, return_exceptions=True)
    if task in done:
        task.result()
    elif refused in done:
        raise _AuthRefused
    else:
        raise TimeoutError


async def connect(cfg: BusConfig, *, source: str = "<config>",
                  on_error: Callable[[Exception], None] | None = None) -> Client:
    """Validate ``cfg`` and connect; the client then reconnects forever.

    Reconnect delays grow from ``reconnect_wait_min`` to ``reconnect_wait_max`` seconds
    with jitter (nats-py's ``reconnect_to_server_handler``); publishes made while
    disconnected are buffered up to ``reconnect_buffer_bytes``. The first connection is
    retried about every second until ``initial_connect_timeout``. Close the client with
    ``await nc.drain()`` (or ``close()``).

    Args:
        cfg: the bus config.
        source: where ``cfg`` came from, for error messages.
        on_error: also called with every error the server reports on this connection
            (e.g. :class:`qtd.bus.denied.Denials`, which watches for permission violations).

    Returns:
        A connected ``nats.aio.client.Client``.

    Raises:
        ConfigError: ``cfg`` is invalid (see :func:`check_bus_config`), or a
            ``*_credential`` cannot be read from ``$CREDENTIALS_DIRECTORY``.
        NatsAuthRefused: the servers refused the credentials (an ``OperationalError``).
        OperationalError: ``nkeys`` is missing.
        TemporaryError: no server answered within ``initial_connect_timeout`` seconds.
    """
    check_bus_config(cfg, source)
    cfg = resolve_credentials(cfg, source)
    rng = random.Random()
    redact = _Redactor([cfg.token or "", cfg.password or ""])
    state = _ConnState()
    nc = Client()
    opts = _connect_options(cfg, source, rng)
    opts.update(_callbacks(nc, cfg, redact, state, on_error))
    servers = ",".join(redact_url(u) for u in cfg.servers)
    try:
        await _first_connect(nc, opts, cfg.initial_connect_timeout, state.auth_refused)
    except BaseException as e:
        with contextlib.suppress(Exception):
            await nc.close()
        if isinstance(e, _AuthRefused):
            raise NatsAuthRefused(
                f"NATS at {servers} refused qtd's credentials (auth={_auth_kind(cfg)}): "
                "fix the bus auth settings", servers=servers, auth=_auth_kind(cfg),
            ) from None
        if isinstance(e, TimeoutError | OSError | nats.errors.Error):
            last = state.last_error or e
            raise TemporaryError(
                f"could not connect to NATS at {servers} within "
                f"{cfg.initial_connect_timeout} s (last error: "
                f"{redact(f'{type(last).__name__}: {last}')})",
                servers=servers, timeout_s=cfg.initial_connect_timeout,
            ) from None
        raise
    _emit(logging.INFO, "nats.connected", name=cfg.name, server=_server(nc, state),
          auth=_auth_kind(cfg), tls=cfg.tls is not None, inbox=inbox_prefix(cfg))
    return nc
