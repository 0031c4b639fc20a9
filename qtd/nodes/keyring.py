"""The ops node's keyring: the fleet's NATS operator and account keys, and every login issued.

One directory (default ``/etc/qtd/nats-keys``, mode 0700, root only) holds:

    operator.nk        the operator's seed: signs the accounts (0600)
    system.nk          the system account's seed: signs the ``qtd-sys`` login (0600)
    account.nk         the QTD account's seed: signs every fleet login (0600)
    qtd-sys.creds      the system login (pushes account updates to nats-server) (0600)
    logins.json        every login issued: name, role, node, public key, issued and revoked
                       times (no secret)

and writes the nats-server include (:meth:`Keyring.server_include`, default
``/etc/qtd/nats-auth.conf``: the operator JWT, the system account and both account JWTs,
public data only) that ``etc/nats-server.conf`` includes. A login's seed is never kept
here: it goes into the ``.creds`` file handed to its host.

Adding a login signs a user JWT with the account key: the running nats-server accepts it as
it is (the account is already known). Revoking one adds its public key to the account JWT's
``revocations``; :func:`qtd.nodes.push.push_account` sends that JWT to the running servers,
which refuse the login from then on and close its connections.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import msgspec
import nkeys

from qtd.bus import identity
from qtd.bus.logins import ROLES, SYSTEM_LOGIN, Role, check_name, login_name, permissions
from qtd.errors import ConfigError, OperationalError
from qtd.files import atomic_write_bytes

DEFAULT_KEYS_DIR = "/etc/qtd/nats-keys"
KEYS_ENV = "QTD_KEYS"
"""Environment variable naming the keyring directory (``--keys`` wins)."""
DEFAULT_SERVER_INCLUDE = "/etc/qtd/nats-auth.conf"
ACCOUNT_NAME = "QTD"
SYSTEM_ACCOUNT_NAME = "SYS"
_FILES = ("operator.nk", "system.nk", "account.nk", "logins.json")


class Login(msgspec.Struct, frozen=True, kw_only=True):
    """One issued NATS login (no secret).

    Attributes:
        name: the login name, e.g. ``agent-node-c`` (its inbox is ``_INBOX_<name>``).
        role: one of :data:`qtd.bus.logins.ROLES`.
        node: the agent's node; None for other roles.
        public_key: the user's nkey (``U...``).
        issued_at: Unix seconds.
        revoked_at: Unix seconds, or None while it is in force.
        applied_at: when a running nats-server last accepted an account JWT carrying this
            revocation (Unix seconds); None while the server may still accept the login.
            A login revoked before its seed left the ops node needs no push: ``revoked_at``.
        bots: the bots an agent's bundle runs (:meth:`Keyring.assign_bots`).
    """

    name: str
    role: Role
    node: str | None = None
    public_key: str
    issued_at: int
    revoked_at: int | None = None
    applied_at: int | None = None
    bots: tuple[str, ...] = ()


class Registry(msgspec.Struct, kw_only=True):
    """``logins.json``: the fleet's public keys and its logins."""

    operator: str
    system_account: str
    account: str
    prefix: str = "qtd"
    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    logins: list[Login] = msgspec.field(default_factory=list)


def _write_secret(path: Path, data: str) -> None:
    atomic_write_bytes(path, data.encode(), mode=0o600)


def keys_dir(arg: str | None) -> Path:
    """The keyring directory: ``--keys``, else ``$QTD_KEYS``, else :data:`DEFAULT_KEYS_DIR`."""
    return Path(arg or os.environ.get(KEYS_ENV) or DEFAULT_KEYS_DIR)


class Keyring:
    """An opened keyring directory (see the module docstring); build with :meth:`create` or
    :meth:`open`."""

    def __init__(self, path: Path, registry: Registry, operator: nkeys.KeyPair,
                 system: nkeys.KeyPair, account: nkeys.KeyPair) -> None:
        self.path = path
        self.registry = registry
        self._operator, self._system, self._account = operator, system, account

    # --- build -----------------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, *, servers: tuple[str, ...], prefix: str = "qtd",
               now: int | None = None) -> Keyring:
        """A new keyring in ``path`` (created 0700) with fresh operator and account keys and
        the ``qtd-sys`` login.

        Raises:
            ConfigError: ``path`` already holds a keyring (never overwritten: every login
                issued from it would stop working), or is not an empty directory (it would be
                made 0700).
        """
        if (path / "logins.json").exists():
            raise ConfigError(f"{path} already holds a keyring (logins.json): refusing to "
                              "replace it, every login issued from it would stop working",
                              source=str(path), field="keys", value=str(path),
                              rule="a new keyring needs an empty directory")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise ConfigError(f"{path} is not an empty directory: a keyring gets a directory of "
                              "its own (it is made 0700, root only)", source=str(path),
                              field="keys", value=str(path),
                              rule="a new keyring needs an empty directory")
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)
        op, sysacc, acc = (identity.new_key("operator"), identity.new_key("account"),
                           identity.new_key("account"))
        for name, kp in (("operator.nk", op), ("system.nk", sysacc), ("account.nk", acc)):
            _write_secret(path / name, identity.seed_of(kp) + "\n")
        reg = Registry(operator=identity.public_key(op),
                       system_account=identity.public_key(sysacc),
                       account=identity.public_key(acc), prefix=prefix, servers=servers)
        ring = cls(path, reg, op, sysacc, acc)
        ring.save()
        _write_secret(path / f"{SYSTEM_LOGIN}.creds", ring.issue("system", now=now))
        return ring

    @classmethod
    def open(cls, path: Path) -> Keyring:
        """The keyring in ``path``.

        Raises:
            ConfigError: no keyring there (says how to make one), or a damaged file.
        """
        reg_file = path / "logins.json"
        if not reg_file.exists():
            raise ConfigError(f"no keyring in {path} (no logins.json): create one with "
                              f"`qtd node init --keys {path}`", source=str(path),
                              field="keys", value=str(path), rule="an existing keyring")
        try:
            reg = msgspec.json.decode(reg_file.read_bytes(), type=Registry)
            op = identity.key_from_seed((path / "operator.nk").read_text(), "operator")
            sysacc = identity.key_from_seed((path / "system.nk").read_text(), "account")
            acc = identity.key_from_seed((path / "account.nk").read_text(), "account")
        except (OSError, msgspec.DecodeError, identity.IdentityError) as e:
            raise ConfigError(f"keyring {path} unreadable: {e}", source=str(path),
                              field="keys", value=str(path), rule="a readable keyring"
                              ) from None
        if (identity.public_key(op), identity.public_key(acc)) != (reg.operator, reg.account):
            raise ConfigError(f"keyring {path}: the seeds do not match logins.json",
                              source=str(path), field="keys", value=str(path),
                              rule="seeds and logins.json of one keyring")
        return cls(path, reg, op, sysacc, acc)

    def save(self) -> None:
        """Write ``logins.json`` (atomically)."""
        atomic_write_bytes(self.path / "logins.json",
                           msgspec.json.format(msgspec.json.encode(self.registry)), mode=0o600)

    # --- logins ----------------------------------------------------------------------------

    def find(self, name: str) -> Login | None:
        """The login in force named ``name`` or whose node is ``name``; None if none."""
        for login in self.registry.logins:
            if login.revoked_at is None and name in (login.name, login.node):
                return login
        return None

    def issue(self, role: Role, node: str | None = None, *, name: str | None = None,
              now: int | None = None) -> str:
        """Sign a new login and return its ``.creds`` text (the only copy of its seed).

        Args:
            role: one of :data:`qtd.bus.logins.ROLES`.
            node: the agent's node (agents only).
            name: the login name for other roles (default: the role's name).
            now: issue time, Unix seconds (default now).

        Raises:
            ConfigError: a login of that name is in force (revoke it first), a bad node name
                or an unknown role.
        """
        login = self._new_name(role, node, name)
        key = identity.new_key("user")
        perms = permissions(role, node, prefix=self.registry.prefix, name=login)
        signer = self._system if role == "system" else self._account
        token = identity.user_jwt(identity.public_key(key), login, signer, perms)
        issued = int(time.time()) if now is None else now
        if role != "system":
            self.registry.logins.append(Login(name=login, role=role, node=node,
                                              public_key=identity.public_key(key),
                                              issued_at=issued))
            self.save()
        return identity.creds(token, key)

    def _new_name(self, role: Role, node: str | None, name: str | None) -> str:
        """The name of a login about to be issued: valid, and found by no login in force
        under its name or its node (``qtd node revoke NAME`` must revoke the one meant)."""
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}: one of {', '.join(ROLES)}",
                              source="<arg>", field="role", value=role, rule="a known role")
        if role in ("agent", "system"):
            login = login_name(role, node)
        else:
            login = check_name("name", name or role)
            if login.startswith("agent-") or login == SYSTEM_LOGIN:
                rule = f"agent-<node> and {SYSTEM_LOGIN} name the agent and system logins"
                raise ConfigError(f"invalid name {login!r} for a {role} login: {rule}",
                                  source="<arg>", field="name", value=login, rule=rule)
        old = self.find(login) or (self.find(node) if node else None)
        if old is not None:
            who = (f"{login} already has a login in force" if old.name == login else
                   f"{login}: the login {old.name} is in force under that name")
            raise ConfigError(
                f"{who} (key {old.public_key[:12]}..., issued {_iso(old.issued_at)}): `qtd "
                f"node revoke {old.name}` first", source="<arg>", field="name", value=login,
                rule="one login in force per name or node")
        return login

    def revoke(self, name: str, *, now: int | None = None, handed_out: bool = True) -> Login:
        """Mark ``name``'s login revoked (a node name or a login name) and save.

        ``handed_out=False``: its ``.creds`` was never written, so no server needs to learn
        of it (``applied_at`` is set at once).

        Raises:
            ConfigError: no login in force by that name (lists the ones there are).
        """
        login = self.find(name)
        if login is None:
            known = ", ".join(sorted(x.name for x in self.registry.logins
                                     if x.revoked_at is None)) or "none"
            raise ConfigError(f"no login in force named {name!r}; logins in force: {known}",
                              source="<arg>", field="name", value=name,
                              rule="a login in force (qtd node list)")
        stamp = int(time.time()) if now is None else now
        revoked = msgspec.structs.replace(login, revoked_at=stamp,
                                          applied_at=None if handed_out else stamp)
        self.registry.logins = [revoked if x is login else x for x in self.registry.logins]
        self.save()
        return revoked

    def assign_bots(self, node: str, bots: tuple[str, ...]) -> None:
        """Record that ``node``'s login in force runs ``bots``, and save.

        Raises:
            ConfigError: a bot that another node's login in force runs (it would trade on
                both), naming the bot and that node.
        """
        taken = {b: x.node for x in self.registry.logins if x.revoked_at is None
                 and x.role == "agent" and x.node != node for b in x.bots}
        clash = sorted(b for b in bots if b in taken)
        if clash:
            rule = "a bot runs on one node: pass --bots, or revoke and re-add the other node"
            raise ConfigError(
                "bots " + ", ".join(f"{b} (runs on {taken[b]})" for b in clash) + f": {rule}",
                source="<arg>", field="bots", value=",".join(clash), rule=rule)
        self.registry.logins = [msgspec.structs.replace(x, bots=bots)
                                if x.revoked_at is None and x.node == node else x
                                for x in self.registry.logins]
        self.save()

    def mark_applied(self, now: int | None = None) -> None:
        """Record that a running server accepted the current account JWT: every revocation
        in it is in force there. Saves."""
        stamp = int(time.time()) if now is None else now
        self.registry.logins = [
            msgspec.structs.replace(x, applied_at=stamp)
            if x.revoked_at is not None and x.applied_at is None else x
            for x in self.registry.logins]
        self.save()

    # --- JWTs ------------------------------------------------------------------------------

    def account_jwt(self) -> str:
        """The QTD account JWT with every revoked login in its ``revocations``."""
        revs = {x.public_key: x.revoked_at for x in self.registry.logins
                if x.revoked_at is not None}
        return identity.account_jwt(self.registry.account, ACCOUNT_NAME, self._operator,
                                    jetstream=True, revocations=revs)

    def server_include(self) -> str:
        """The nats-server include: operator JWT, system account, both account JWTs."""
        sys_jwt = identity.account_jwt(self.registry.system_account, SYSTEM_ACCOUNT_NAME,
                                       self._operator, jetstream=False)
        op_jwt = identity.operator_jwt(self._operator, "qtd", self.registry.system_account)
        return (
            "# Generated by `qtd node` from the keyring (public keys and JWTs only, no\n"
            "# secret); rewritten by `qtd node revoke`. Included by nats-server.conf.\n"
            f'operator: "{op_jwt}"\n'
            f'system_account: "{self.registry.system_account}"\n'
            "resolver_preload: {\n"
            f'  {self.registry.system_account}: "{sys_jwt}"\n'
            f'  {self.registry.account}: "{self.account_jwt()}"\n'
            "}\n")

    def write_server_include(self, path: Path) -> None:
        """Write :meth:`server_include` to ``path`` (0644: public data, read by nats)."""
        atomic_write_bytes(path, self.server_include().encode(), mode=0o644)

    def system_creds(self) -> Path:
        """The ``qtd-sys`` login's ``.creds`` file."""
        return self.path / f"{SYSTEM_LOGIN}.creds"


def _iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def check_keyring_mode(path: Path) -> None:
    """Refuse a keyring directory, or a seed or ``.creds`` file in it, that group or others
    may read (a mode that lets them in the day the directory's mode is loosened or the files
    are copied with it, e.g. from a backup).

    Raises:
        OperationalError: the mode lets others read the fleet's signing keys.
    """
    for p in (path, *(path / n for n in (*_FILES[:3], f"{SYSTEM_LOGIN}.creds"))):
        with contextlib.suppress(FileNotFoundError):
            mode = p.stat().st_mode & 0o777
            if mode & 0o077:
                fix = "700" if p == path else "600"
                raise OperationalError(f"keyring {p} has mode {mode:04o}: the keyring's seeds "
                                       f"sign every login of the fleet; chmod {fix} {p}",
                                       path=str(p))
