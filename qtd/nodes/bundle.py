"""``qtd node add``: everything one trading server needs, in one file.

The bundle (``qtd-node-<node>.tar.gz``, mode 0600: it holds the node's NATS seed) has a
``manifest.json`` and the files, each with the path, owner and mode it gets on the host::

    /etc/qtd/agent.toml                  root:qtd 0640  node, bus, credentials by name, accounts
    /etc/qtd/risk.toml                   root:qtd 0640  the template's risk limits
    /etc/qtd/bots/<bot>.toml             root:qtd 0640  the bots assigned to the node
    /etc/qtd/strategies/<file>.py        root:qtd 0640  their strategy files
    /etc/qtd/credentials/nats.creds      root:root 0600 the node's NATS login (JWT + seed)
    /etc/qtd/credentials/<account>.env   root:root 0600 broker keys, when given (--env)
    /etc/systemd/system/qtd-agent.service.d/credentials.conf   root:root 0644
                                         LoadCredential= lines for exactly these secrets

The agent config is the template's (``etc/agent.toml`` by default) with the node's name, the
fleet's NATS servers, ``[bus] creds_credential = "nats.creds"``, ``state_dir =
/var/lib/qtd`` and only the accounts named; the bots are the template's bots on those
accounts unless ``--bots`` names them.
"""

from __future__ import annotations

import io
import tarfile
import time
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import tomli_w

from qtd import __version__
from qtd.admit.config import resolve_strategy
from qtd.bus.logins import login_name
from qtd.errors import ConfigError
from qtd.files import MAX_CONFIG_BYTES, MAX_SOURCE_BYTES, atomic_write_bytes, read_capped
from qtd.nodes.units import credentials_dropin_path, render_credentials_dropin

CREDS_NAME = "nats.creds"
"""The node's NATS login in ``$CREDENTIALS_DIRECTORY`` (``[bus] creds_credential``)."""
ETC = "etc/qtd"
CREDENTIALS = f"{ETC}/credentials"
STATE_DIR = "/var/lib/qtd"
AGENT_UNIT = "qtd-agent.service"
SERVICE_USER = "qtd"


class BundleFile(msgspec.Struct, frozen=True):
    """One file of a bundle: where it goes (relative to the host's root), owner and mode."""

    path: str
    mode: int
    owner: str = "root"
    group: str = "root"


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """``manifest.json`` of a bundle."""

    node: str
    login: str
    qtd_version: str
    created_at: int
    files: tuple[BundleFile, ...]
    broker_credentials: tuple[str, ...] = ()
    """``<account>.env`` names the drop-in loads; the host must have each one."""


def _cfg_error(field: str, value: Any, rule: str) -> ConfigError:
    return ConfigError(f"{field} {value!r}: {rule}", source="<arg>", field=field, value=value,
                       rule=rule)


def _read_toml(field: str, path: Path, what: str) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = tomllib.loads(read_capped(path).decode())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise _cfg_error(field, str(path), f"unreadable {what}: {e}") from None
    return doc


def _read(field: str, path: Path, what: str, limit: int = MAX_CONFIG_BYTES) -> bytes:
    try:
        return read_capped(path, limit)
    except OSError as e:
        raise _cfg_error(field, str(path), f"unreadable {what}: {e.strerror or e}") from None


def _template(path: Path) -> dict[str, Any]:
    return _read_toml("from", path, "agent config template")


def _accounts(doc: dict[str, Any], names: list[str] | None) -> dict[str, Any]:
    known: dict[str, Any] = doc.get("accounts", {})
    if not names:
        return known
    missing = [n for n in names if n not in known]
    if missing:
        raise _cfg_error("accounts", ",".join(missing), "not an [accounts.<name>] of the "
                         f"template; known: {', '.join(sorted(known)) or 'none'}")
    return {n: known[n] for n in names}


def _bot_files(template: Path, doc: dict[str, Any]) -> list[Path]:
    out: list[Path] = []
    for entry in doc.get("bots", []):
        p = (template.parent / entry).resolve()
        out += sorted(p.glob("*.toml")) if p.is_dir() else [p]
    return out


def _pick_bots(template: Path, doc: dict[str, Any], accounts: dict[str, Any],
               bots: list[str] | None) -> list[tuple[Path, dict[str, Any]]]:
    found = {}
    for f in _bot_files(template, doc):
        bot = _read_toml("bots", f, "bot config of the template")
        if not isinstance(bot.get("strategy"), str):
            raise _cfg_error("bots", str(f), "a bot config names its strategy file "
                             "(strategy = \"file.py\")")
        found[str(bot.get("name", f.stem))] = (f, bot)
    if bots:
        missing = [b for b in bots if b not in found]
        if missing:
            raise _cfg_error("bots", ",".join(missing), "not a bot of the template; known: "
                             f"{', '.join(sorted(found)) or 'none'}")
        chosen = [found[b] for b in bots]
    else:
        chosen = [v for v in found.values() if v[1].get("account") in accounts]
    unknown = [b.get("name") for _, b in chosen if b.get("account") not in accounts]
    if unknown:
        raise _cfg_error("bots", ",".join(map(str, unknown)), "trades an account not given "
                         f"to this node ({', '.join(sorted(accounts))})")
    return chosen


def agent_doc(doc: dict[str, Any], node: str, servers: tuple[str, ...], prefix: str,
              accounts: dict[str, Any]) -> dict[str, Any]:
    """The node's agent config from the template ``doc``."""
    out = {k: v for k, v in doc.items() if k not in ("bus", "accounts", "market", "routed",
                                                     "routes")}
    out.update(node=node, state_dir=STATE_DIR, bots=["bots"], risk="risk.toml")
    out["bus"] = {"servers": list(servers), "name": f"qtd-agent-{node}", "prefix": prefix,
                  "creds_credential": CREDS_NAME}
    out["accounts"] = {n: {k: v for k, v in a.items() if k != "credentials_file"}
                       for n, a in accounts.items()}
    market = doc.get("market")
    if market is not None and any(a.get("broker") == "paper" for a in accounts.values()):
        out["market"] = market
    return out


def broker_credentials(accounts: dict[str, Any]) -> tuple[str, ...]:
    """``<account>.env`` for each account that reads keys (``credentials_env``)."""
    return tuple(f"{n}.env" for n, a in sorted(accounts.items()) if a.get("credentials_env"))


class Bundle(msgspec.Struct, frozen=True):
    """A bundle in memory: its manifest and each file's bytes (by manifest path)."""

    manifest: Manifest
    contents: dict[str, bytes]

    def write(self, path: Path) -> Path:
        """Write the bundle as a gzipped tar (mode 0600) at ``path``."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            _add(tar, "manifest.json", msgspec.json.format(msgspec.json.encode(self.manifest)),
                 0o600)
            for f in self.manifest.files:
                _add(tar, f"root/{f.path}", self.contents[f.path], f.mode)
        atomic_write_bytes(path, buf.getvalue(), mode=0o600)
        return path


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def build_bundle(*, node: str, creds: str, template: Path, servers: tuple[str, ...],
                 prefix: str, accounts: list[str] | None = None, bots: list[str] | None = None,
                 envs: dict[str, bytes] | None = None) -> Bundle:
    """Everything ``node`` needs (see the module docstring).

    Args:
        node: the node's name (a subject token).
        creds: its ``.creds`` text (:meth:`qtd.nodes.keyring.Keyring.issue`).
        template: the agent config to start from (its accounts, bots and defaults).
        servers: the fleet's NATS URLs.
        prefix: the subject prefix.
        accounts: the template's accounts this node trades (default: all of them).
        bots: the bots it runs (default: the template's bots on those accounts).
        envs: ``<account>.env`` contents to include (broker keys), by account name.

    Raises:
        ConfigError: an unknown account or bot (the known ones listed), a bot on an account
            the node does not get, an unreadable template, risk, bot or strategy file, a bot
            without a strategy, or an account name systemd cannot load as a credential.
    """
    doc = _template(template)
    accts = _accounts(doc, accounts)
    files: list[BundleFile] = []
    contents: dict[str, bytes] = {}

    def put(path: str, data: bytes, mode: int, group: str = SERVICE_USER) -> None:
        files.append(BundleFile(path, mode, "root", group))
        contents[path] = data

    put(f"{ETC}/agent.toml", tomli_w.dumps(agent_doc(doc, node, servers, prefix, accts)
                                           ).encode(), 0o640)
    risk = (template.parent / str(doc.get("risk", "risk.toml"))).resolve()
    put(f"{ETC}/risk.toml", _read("from", risk, "risk limits of the template"), 0o640)
    for bot_file, bot in _pick_bots(template, doc, accts, bots):
        strategy = resolve_strategy(bot_file, str(bot["strategy"]))
        rel = f"strategies/{strategy.name}"
        put(f"{ETC}/{rel}", _read("bots", strategy, f"strategy of {bot_file}",
                                  MAX_SOURCE_BYTES), 0o640)
        bot["strategy"] = rel  # found from /etc/qtd/bots/ in the directory above
        bot.pop("risk_file", None)
        put(f"{ETC}/bots/{bot_file.name}", tomli_w.dumps(bot).encode(), 0o640)
    put(f"{CREDENTIALS}/{CREDS_NAME}", creds.encode(), 0o600, "root")
    brokers = broker_credentials(accts)
    for name, data in sorted((envs or {}).items()):
        if f"{name}.env" not in brokers:
            raise _cfg_error("env", name, "not an account of this node that reads keys "
                             f"(credentials_env): {', '.join(brokers) or 'none'}")
        put(f"{CREDENTIALS}/{name}.env", data, 0o600, "root")
    dropin = credentials_dropin_path(Path("/"), AGENT_UNIT).relative_to("/")
    try:
        text = render_credentials_dropin(AGENT_UNIT, brokers)
    except ValueError as e:  # an account name systemd cannot load as a credential
        raise _cfg_error("accounts", ",".join(sorted(accts)), str(e)) from None
    put(str(dropin), text.encode(), 0o644, "root")
    manifest = Manifest(node=node, login=login_name("agent", node), qtd_version=__version__,
                        created_at=int(time.time()), files=tuple(files),
                        broker_credentials=brokers)
    return Bundle(manifest, contents)
