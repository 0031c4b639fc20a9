"""Bus configuration: a frozen msgspec Struct validated once, with errors that name the field,
the value and the rule (secrets shown as ``***``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
from msgspec import Meta

from qtd.bus.subjects import DEFAULT_PREFIX, Subjects
from qtd.errors import ConfigError

_SCHEMES = ("nats", "tls", "ws", "wss")
REDACTED = "***"
_SECRET_FIELDS = ("token", "password")

PositiveSeconds = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(gt=0)]


class TlsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """TLS to the NATS servers (file paths; nothing here is secret but the key file's
    contents).

    Attributes:
        ca_file: CA bundle to verify the servers; default the system store.
        cert_file: client certificate (mutual TLS), with ``key_file``.
        key_file: client private key, with ``cert_file``.
        hostname: expected server name when it differs from the URL's host.
        handshake_first: TLS before the NATS INFO (servers with ``handshake_first``).
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    hostname: str | None = None
    handshake_first: bool = False


class BusConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How a qtd process connects to NATS. Use at most one auth method.

    Attributes:
        servers: server URLs (``nats://``, ``tls://``, ``ws://``, ``wss://``), tried in
            random order.
        name: connection name shown in NATS monitoring (e.g. ``"qtd-agent-node-a"``).
        prefix: subject prefix (see :class:`qtd.bus.Subjects`).
        token: auth token.
        user: user name, with ``password``.
        password: password, with ``user``.
        nkey_seed_file: file holding an NKey seed (needs the ``nkeys`` package).
        creds_file: JWT ``.creds`` file (needs the ``nkeys`` package).
        tls: TLS settings; ``None`` uses TLS only when a URL says ``tls://``.
        connect_timeout: seconds for one TCP/TLS connect attempt.
        initial_connect_timeout: seconds :func:`connect` keeps trying before it raises
            :class:`~qtd.errors.TemporaryError`; ``None`` waits forever.
        reconnect_wait_min: first reconnect delay, seconds; doubles per failed attempt.
        reconnect_wait_max: cap of the reconnect delay, seconds.
        reconnect_jitter: fraction (0..1) of each delay that is random, so a fleet does not
            reconnect in lockstep.
        reconnect_buffer_bytes: bytes of publishes buffered while disconnected.
        ping_interval: seconds between client PINGs.
        max_outstanding_pings: unanswered PINGs before the connection counts as stale.
        drain_timeout: seconds ``drain()`` may take at shutdown.
    """

    servers: Annotated[tuple[str, ...], Meta(min_length=1)] = ("nats://127.0.0.1:4222",)
    name: str = "qtd"
    prefix: str = DEFAULT_PREFIX
    token: str | None = None
    user: str | None = None
    password: str | None = None
    nkey_seed_file: str | None = None
    creds_file: str | None = None
    tls: TlsConfig | None = None
    connect_timeout: PositiveInt = 2
    initial_connect_timeout: PositiveSeconds | None = 10.0
    reconnect_wait_min: PositiveSeconds = 0.1
    reconnect_wait_max: PositiveSeconds = 5.0
    reconnect_jitter: Annotated[float, Meta(ge=0, le=1)] = 0.2
    reconnect_buffer_bytes: PositiveInt = 8 * 1024 * 1024
    ping_interval: PositiveInt = 10
    max_outstanding_pings: PositiveInt = 3
    drain_timeout: PositiveInt = 5

    def __repr__(self) -> str:
        fields = []
        for f in self.__struct_fields__:
            value = getattr(self, f)
            if f in _SECRET_FIELDS and value is not None:
                value = REDACTED
            elif f == "servers":
                value = tuple(redact_url(u) for u in value)
            fields.append(f"{f}={value!r}")
        return f"BusConfig({', '.join(fields)})"


# --- validation ----------------------------------------------------------------------------


def config_error(source: str, field: str, value: Any, rule: str) -> ConfigError:
    """A :class:`ConfigError` for ``bus.<field>``, with secret values shown as ``***``."""
    shown = REDACTED if field in _SECRET_FIELDS else value
    return ConfigError(
        f"{source}: bus.{field} = {shown!r}: {rule}",
        source=source, field=f"bus.{field}", value=shown, rule=rule,
    )


def _check_constraints(cfg: BusConfig, source: str) -> None:
    """Re-run msgspec's type/constraint checks (a directly constructed Struct skips them)."""
    try:
        msgspec.convert(msgspec.to_builtins(cfg), BusConfig)
    except msgspec.ValidationError as e:
        path = str(e).rsplit("`$.", 1)[-1].rstrip("`") if "`$." in str(e) else "?"
        value: Any = cfg
        for name in path.split("."):
            value = getattr(value, name.split("[")[0], None)
        raise config_error(source, path, value, str(e).split(" - at ")[0]) from None


def _check_servers(cfg: BusConfig, source: str) -> None:
    for i, url in enumerate(cfg.servers):
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        if parts.scheme not in _SCHEMES or not parts.hostname:
            raise config_error(
                source, f"servers[{i}]", redact_url(url),
                f"must be a URL with scheme {'/'.join(_SCHEMES)} and a host",
            )


def _check_auth(cfg: BusConfig, source: str) -> None:
    methods = [
        name for name, on in (
            ("token", cfg.token is not None),
            ("user/password", cfg.user is not None or cfg.password is not None),
            ("nkey_seed_file", cfg.nkey_seed_file is not None),
            ("creds_file", cfg.creds_file is not None),
        ) if on
    ]
    if len(methods) > 1:
        raise config_error(
            source, "auth", methods, "use at most one of token, user/password, "
            "nkey_seed_file, creds_file",
        )
    if (cfg.user is None) != (cfg.password is None):
        missing = "password" if cfg.password is None else "user"
        raise config_error(source, missing, None, "user and password go together")


def _check_files(cfg: BusConfig, source: str) -> None:
    tls = cfg.tls or TlsConfig()
    files = {
        "nkey_seed_file": cfg.nkey_seed_file,
        "creds_file": cfg.creds_file,
        "tls.ca_file": tls.ca_file,
        "tls.cert_file": tls.cert_file,
        "tls.key_file": tls.key_file,
    }
    for field, value in files.items():
        if value is not None and not Path(value).is_file():
            raise config_error(source, field, value, "file must exist and be readable")
    if (tls.cert_file is None) != (tls.key_file is None):
        raise config_error(
            source, "tls.cert_file", tls.cert_file, "tls.cert_file and tls.key_file go together"
        )


def _check_reconnect(cfg: BusConfig, source: str) -> None:
    if cfg.reconnect_wait_min > cfg.reconnect_wait_max:
        raise config_error(
            source, "reconnect_wait_min", cfg.reconnect_wait_min,
            f"must be <= reconnect_wait_max ({cfg.reconnect_wait_max})",
        )


def _check_prefix(cfg: BusConfig, source: str) -> None:
    try:
        Subjects(cfg.prefix)
    except ConfigError as e:
        raise config_error(source, "prefix", cfg.prefix, e.rule) from None


def check_bus_config(cfg: BusConfig, source: str = "<config>") -> BusConfig:
    """Validate a :class:`BusConfig` (types, constraints and cross-field rules).

    Args:
        cfg: the config, decoded or constructed directly.
        source: where it came from (file name), for the error message.

    Returns:
        ``cfg`` unchanged.

    Raises:
        ConfigError: names the field, the value (secrets shown as ``***``) and the rule.
    """
    for check in (_check_constraints, _check_servers, _check_auth, _check_files,
                  _check_reconnect, _check_prefix):
        check(cfg, source)
    return cfg


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@`` (safe to log)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{REDACTED}@{host}"))
