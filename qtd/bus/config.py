"""Bus configuration: a frozen msgspec Struct validated once, with errors that name the field,
the value and the rule (secrets shown as ``***``)."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
from msgspec import Meta

from qtd.bus.identity import IdentityError, creds_login
from qtd.bus.logins import inbox_of
from qtd.bus.subjects import DEFAULT_PREFIX, Subjects
from qtd.errors import ConfigError
from qtd.files import read_capped

_SCHEMES = ("nats", "tls", "ws", "wss")
REDACTED = "***"
_SECRET_FIELDS = ("token", "password")
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
"""Directory systemd fills from the unit's ``LoadCredential=`` lines (a private ramfs,
files mode 0400 owned by the service user; systemd.exec(5), "Credentials")."""
_CREDENTIAL_FIELDS = {  # <name>_credential -> the field it fills
    "token_credential": "token",
    "password_credential": "password",
    "nkey_seed_credential": "nkey_seed_file",
    "creds_credential": "creds_file",
}
_SECRET_FILES = ("nkey_seed_file", "creds_file")

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
        inbox_prefix: first token(s) of this client's reply inboxes (requests, JetStream
            API replies and acks, pull deliveries); ``None`` derives it from ``user``
            (:func:`inbox_prefix`). The server's ACL lets each user subscribe to its own
            prefix only (etc/nats-server.conf), so no other user can read its replies.
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
        token_credential: name of a systemd credential (``LoadCredential=NAME:/etc/...``)
            holding the auth token: read from ``$CREDENTIALS_DIRECTORY/NAME`` at connect.
        password_credential: the same for the password (with ``user``).
        nkey_seed_credential: the same for an NKey seed file (used as ``nkey_seed_file``).
        creds_credential: the same for a JWT ``.creds`` file (used as ``creds_file``).

    A ``*_credential`` counts as its auth method (``token_credential`` is token auth, and so
    on). Every secrets file — a named credential, ``nkey_seed_file``, ``creds_file`` — must
    not be readable by group or others (mode 0600/0400, the rule broker credential files
    follow too): :func:`check_bus_config` refuses it, so the process does not start.
    """

    servers: Annotated[tuple[str, ...], Meta(min_length=1)] = ("nats://127.0.0.1:4222",)
    name: str = "qtd"
    prefix: str = DEFAULT_PREFIX
    inbox_prefix: str | None = None
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
    token_credential: str | None = None
    password_credential: str | None = None
    nkey_seed_credential: str | None = None
    creds_credential: str | None = None

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
    for field, target in _CREDENTIAL_FIELDS.items():
        if getattr(cfg, field) is not None and getattr(cfg, target) is not None:
            raise config_error(source, field, getattr(cfg, field),
                               f"give {target} or {field}, not both")
    methods = [
        name for name, on in (
            ("token", cfg.token is not None or cfg.token_credential is not None),
            ("user/password", cfg.user is not None or cfg.password is not None
             or cfg.password_credential is not None),
            ("nkey_seed_file", cfg.nkey_seed_file is not None
             or cfg.nkey_seed_credential is not None),
            ("creds_file", cfg.creds_file is not None or cfg.creds_credential is not None),
        ) if on
    ]
    if len(methods) > 1:
        raise config_error(
            source, "auth", methods, "use at most one of token, user/password, "
            "nkey_seed_file, creds_file",
        )
    has_password = cfg.password is not None or cfg.password_credential is not None
    if (cfg.user is None) != has_password:
        return
    missing = "password" if not has_password else "user"
    raise config_error(source, missing, None, "user and password go together (password or "
                       "password_credential)")


def credential_path(name: str, field: str, source: str,
                    environ: Mapping[str, str] | None = None) -> Path:
    """``$CREDENTIALS_DIRECTORY/<name>``, checked: the directory is set, the name is a plain
    file name, the file exists and is not readable by group or others.

    Raises:
        ConfigError: names ``bus.<field>``, the credential name and the rule broken.
    """
    env = os.environ if environ is None else environ
    if not name or "/" in name or name in (".", ".."):
        raise config_error(source, field, name, "a credential name (a file name, no '/')")
    directory = env.get(CREDENTIALS_ENV)
    if not directory:
        raise config_error(
            source, field, name, f"${CREDENTIALS_ENV} is not set: systemd sets it for a unit "
            f"with LoadCredential={name}:/etc/qtd/credentials/...; by hand, export "
            f"{CREDENTIALS_ENV}=<dir holding {name}>")
    path = Path(directory) / name
    check_secret_file(path, field, source)
    return path


def check_secret_file(path: Path, field: str, source: str) -> None:
    """Refuse a secrets file that is missing or readable by group or others.

    Raises:
        ConfigError: names ``bus.<field>``, the file and its mode (never its content).
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as e:
        raise config_error(source, field, str(path),
                           f"secrets file must exist and be readable ({e.strerror})") from None
    if mode & 0o077:
        raise config_error(
            source, field, str(path), f"secrets file has mode {mode:04o}: refused, it must "
            f"not be readable by group or others (chmod 600 {path})")


def read_credential(path: Path) -> str:
    """A credential file's content without its trailing newline (a token or password)."""
    return path.read_text(encoding="utf-8").rstrip("\r\n")


def resolve_credentials(cfg: BusConfig, source: str = "<config>",
                        environ: Mapping[str, str] | None = None) -> BusConfig:
    """``cfg`` with every ``*_credential`` replaced by what it names: the token or password
    read from ``$CREDENTIALS_DIRECTORY/<name>``, or the seed/creds file path.

    Raises:
        ConfigError: a credential is missing, unreadable or readable by group or others.
    """
    updates: dict[str, str] = {}
    for field, target in _CREDENTIAL_FIELDS.items():
        name = getattr(cfg, field)
        if name is None:
            continue
        path = credential_path(name, field, source, environ)
        if target in _SECRET_FIELDS:
            try:
                updates[target] = read_credential(path)
            except (OSError, UnicodeDecodeError) as e:
                raise config_error(source, field, name, f"unreadable: {e}") from None
        else:
            updates[target] = str(path)
        updates[field] = None  # type: ignore[assignment]
    return msgspec.structs.replace(cfg, **updates) if updates else cfg


def _check_credentials(cfg: BusConfig, source: str) -> None:
    for field in _CREDENTIAL_FIELDS:
        name = getattr(cfg, field)
        if name is not None:
            credential_path(name, field, source)
    for field in _SECRET_FILES:
        value = getattr(cfg, field)
        if value is not None:
            check_secret_file(Path(value), field, source)


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


def _check_inbox_prefix(cfg: BusConfig, source: str) -> None:
    if cfg.inbox_prefix is None:
        return
    try:
        Subjects(cfg.inbox_prefix)
    except ConfigError as e:
        raise config_error(source, "inbox_prefix", cfg.inbox_prefix, e.rule) from None


DEFAULT_INBOX_PREFIX = "_INBOX"
"""nats-py's inbox prefix, used when neither ``inbox_prefix`` nor ``user`` is set."""
MAX_CREDS_BYTES = 16 * 1024
"""A ``.creds`` file is ~1 KB (JWT + seed); anything larger is not one."""


def user_name(cfg: BusConfig) -> str | None:
    """The NATS user ``cfg`` logs in as: ``user``, else the first server URL's
    ``nats://user:password@...``, else the ``name`` in the JWT of ``creds_file``; None
    without a user (token, NKey, an unreadable creds file or no auth)."""
    if cfg.user:
        return cfg.user
    url_user = next((u for u in (urlsplit(s).username for s in cfg.servers) if u), None)
    if url_user or cfg.creds_file is None:
        return url_user
    try:  # a .creds login is named in its JWT (qtd.bus.logins: inbox _INBOX_<name>)
        return creds_login(read_capped(cfg.creds_file, MAX_CREDS_BYTES).decode())
    except (OSError, UnicodeDecodeError, IdentityError, ConfigError):
        return None


def inbox_prefix(cfg: BusConfig) -> str:
    """The reply-inbox prefix a client with ``cfg`` uses (nats-py ``inbox_prefix``).

    ``cfg.inbox_prefix`` when set; else ``_INBOX_<user>`` (every character of ``user`` other
    than a letter, digit, ``_`` or ``-`` becomes ``_``), the prefix etc/nats-server.conf
    grants that user, e.g. ``_INBOX_agent-node-a``; the user is :func:`user_name` (``user``
    or a server URL's ``nats://user:password@host:port``, or the login named in a ``.creds``
    file's JWT); else nats-py's ``_INBOX`` (no user: token or NKey auth, or no auth at all).
    """
    if cfg.inbox_prefix is not None:
        return cfg.inbox_prefix
    user = user_name(cfg)
    if user:
        return inbox_of(user)
    return DEFAULT_INBOX_PREFIX


def check_bus_config(cfg: BusConfig, source: str = "<config>") -> BusConfig:
    """Validate a :class:`BusConfig` (types, constraints and cross-field rules).

    Args:
        cfg: the config, decoded or constructed directly.
        source: where it came from (file name), for the error message.

    Returns:
        ``cfg`` unchanged.

    Raises:
        ConfigError: names the field, the value (secrets shown as ``***``) and the rule;
            among the rules: every ``*_credential`` names a file in
            ``$CREDENTIALS_DIRECTORY`` and no secrets file is readable by group or others.
    """
    for check in (_check_constraints, _check_servers, _check_auth, _check_files,
                  _check_credentials, _check_reconnect, _check_prefix, _check_inbox_prefix):
        check(cfg, source)
    return cfg


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@`` (safe to log)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{REDACTED}@{host}"))
