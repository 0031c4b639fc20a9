"""A deployed version as files, so admission checks it exactly as ``qtd validate`` would.

:func:`materialize` writes ``<root>/v<n>-<hash12>/strategies/<file>.py`` and
``.../bots/<bot>.toml`` (+ ``<bot>.gate.json`` for live bots). The config's ``strategy`` is
pointed at the written source and its ``risk_file`` at the caller's risk file (a node checks
a version against *its own* risk limits, never the sender's).

On an agent, ``<state_dir>/deploy/<bot>/current.json`` names the last version the node
accepted; :func:`deployed_config` makes a restarted agent run that version instead of its
local config file, even with NATS down (no node silently falls back to yesterday's version).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tomllib
from pathlib import Path

import msgspec
import tomli_w

from qtd.deploy.model import BOT_NAME_RE, DeployVersion, check_names
from qtd.errors import ConfigError
from qtd.events import DECODE_ERRORS
from qtd.files import read_capped_text

CURRENT = "current.json"
log = logging.getLogger("qtd.deploy")


def materialize(v: DeployVersion, source: bytes, root: Path, risk_file: Path | None) -> Path:
    """Write version ``v`` under ``root``; return its bot config path.

    Args:
        v: the version record.
        source: the strategy file bytes (checked against ``v.source_hash``).
        root: a directory owned by the caller (created if missing).
        risk_file: the risk limits file admission must use; ``None`` drops the config's
            ``risk_file`` (admission then uses its ``max_order_notional``).

    Raises:
        ConfigError: unsafe names, source bytes not matching ``source_hash``, a config that
            is not TOML or names another bot. The message names the field and the value.
    """
    problems = check_names(v)
    if hashlib.sha256(source).hexdigest() != v.source_hash:
        problems.append(f"strategy source bytes do not match source_hash {v.source_hash[:12]}")
    try:
        doc = tomllib.loads(v.config)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"deployed config of {v.bot!r} v{v.version} is not TOML: {exc}",
                          source=f"version.{v.bot}.{v.version}", field="config",
                          value=None, rule="TOML") from None
    if doc.get("name") != v.bot:
        problems.append(f"config name = {doc.get('name')!r}: the version is for bot {v.bot!r}")
    if problems:
        raise ConfigError(f"deployed version {v.bot!r} v{v.version} refused: "
                          + "; ".join(problems), source=f"version.{v.bot}.{v.version}",
                          field="version", value=v.version, rule="; ".join(problems))
    base = root / f"v{v.version}-{v.content_hash[:12]}"
    (base / "strategies").mkdir(parents=True, exist_ok=True)
    (base / "bots").mkdir(exist_ok=True)
    _write(base / "strategies" / v.strategy_file, source)
    doc["strategy"] = f"../strategies/{v.strategy_file}"
    doc.pop("risk_file", None)
    if risk_file is not None:
        doc["risk_file"] = str(risk_file.resolve())
    cfg = base / "bots" / f"{v.bot}.toml"
    _write(cfg, tomli_w.dumps(doc).encode())
    gate = cfg.with_name(f"{v.bot}.gate.json")
    if v.gate:
        _write(gate, v.gate.encode())
    else:
        with contextlib.suppress(FileNotFoundError):
            gate.unlink()
    return cfg


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def deploy_dir(state_dir: str | Path, bot: str) -> Path:
    """``<state_dir>/deploy/<bot>``: an agent's copies of the versions it received."""
    return Path(state_dir) / "deploy" / bot


class Current(msgspec.Struct, frozen=True, kw_only=True):
    """The version a node accepted last (``current.json``): the record and its config."""

    version: DeployVersion
    config_path: str


def save_current(state_dir: str | Path, v: DeployVersion, config_path: Path) -> None:
    """Record ``v`` as this node's accepted version of its bot (atomic replace)."""
    d = deploy_dir(state_dir, v.bot)
    d.mkdir(parents=True, exist_ok=True)
    _write(d / CURRENT, msgspec.json.encode(Current(version=v, config_path=str(config_path))))


def load_current(state_dir: str | Path, bot: str) -> Current | None:
    """The accepted version of ``bot`` on this node, or None (never deployed, unreadable,
    or its files are gone)."""
    try:
        cur = msgspec.json.decode((deploy_dir(state_dir, bot) / CURRENT).read_bytes(),
                                  type=Current)
    except (OSError, *DECODE_ERRORS):
        return None
    return cur if Path(cur.config_path).is_file() else None


def deployed_config(state_dir: str | Path, path: Path, risk_file: str | Path | None = None
                    ) -> Path:
    """The config an agent should admit for the bot of local config ``path``: the deployed
    version it accepted last if there is one, else ``path`` itself. With ``risk_file``, the
    version's files are written again pointing at it (the agent's risk file may have moved
    since); a version whose files no longer match its hashes is not used."""
    try:
        name = tomllib.loads(read_capped_text(path)).get("name")
    except (OSError, UnicodeDecodeError, ConfigError, tomllib.TOMLDecodeError):
        return path
    if not isinstance(name, str) or not BOT_NAME_RE.match(name):
        return path
    cur = load_current(state_dir, name)
    if cur is None:
        return path
    cfg = Path(cur.config_path)
    if risk_file is None:
        return cfg
    v = cur.version
    try:
        source = (cfg.parent.parent / "strategies" / v.strategy_file).read_bytes()
        return materialize(v, source, cfg.parent.parent.parent, Path(risk_file))
    except (OSError, ConfigError) as exc:
        log.error("deployed %s v%d unusable (%s): starting from the local config %s; the "
                  "leader shows the node behind until a deploy reaches it", name, v.version,
                  exc, path, extra={"bot": name})
        return path
