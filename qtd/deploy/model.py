"""What a fleet deploy stores in NATS: one :class:`DeployVersion` per (bot, version number).

Bucket :data:`~qtd.bus.jetstream.DEPLOY_BUCKET` (``qtd_deploy``):

* ``desired.<bot>`` — the version every node running ``<bot>`` should run (a copy of the
  record; its KV revision is the compare-and-set guard of concurrent deploys);
* ``version.<bot>.<n>`` — every version ever deployed, ``n`` = 1, 2, ... (the history).

Bucket :data:`~qtd.bus.jetstream.SOURCES_BUCKET` (``qtd_sources``): strategy file bytes,
key = sha256 hex of those bytes, written once and never overwritten.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

DEPLOYABLE_STAGES: Final = ("paper", "shadow", "live")
"""Stages a deploy may name; ``research`` and ``backtest`` bots never reach a node."""

STAGE_ORDER: Final = {"research": 0, "backtest": 1, "paper": 2, "shadow": 3, "live": 4}

_FILE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}\.py$")
BOT_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class DeployVersion(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """One deployed (strategy source, params) version of one bot.

    Attributes:
        bot: bot name.
        version: 1, 2, ... per bot, assigned at publish time.
        content_hash: sha256 hex of source bytes + canonical params JSON (admission's
            :func:`qtd.admit.content_hash`); what nodes compare.
        source_hash: sha256 hex of the strategy file (its key in ``qtd_sources``).
        params_hash: sha256 hex of the canonical params JSON.
        strategy: strategy class name.
        strategy_file: file name of the strategy (``ma_cross.py``), no directory.
        params: params with defaults filled in (as admitted).
        config: the bot config TOML text as admitted (its ``strategy`` / ``risk_file``
            paths are rewritten by each node to its own files).
        gate: the promotion-gate result JSON beside the config (``<bot>.gate.json``), if any;
            needed for ``stage = "live"``.
        stage: paper, shadow or live.
        canary: a live change meant to go out as a canary (the ramp is issue #11's; today the
            flag is recorded and shown, nodes apply the version like any other).
        operator: who deployed.
        message: why.
        ts_ns: when it was published, UTC ns.
        rollback_of: the version number re-deployed by ``qtd rollback`` (0: a new version).
        origin: the bot config path on the deploying machine (information only).
    """

    bot: str
    version: int
    content_hash: str
    source_hash: str
    params_hash: str
    strategy: str
    strategy_file: str
    params: dict[str, Any]
    config: str
    gate: str = ""
    stage: str = "paper"
    canary: bool = False
    operator: str = ""
    message: str = ""
    ts_ns: int = 0
    rollback_of: int = 0
    origin: str = ""

    @property
    def short(self) -> str:
        """``v<n>:<first 12 hex of content_hash>``."""
        return f"v{self.version}:{self.content_hash[:12]}"


def desired_key(bot: str) -> str:
    return f"desired.{bot}"


def version_key(bot: str, version: int) -> str:
    return f"version.{bot}.{version}"


def encode(v: DeployVersion) -> bytes:
    return msgspec.json.encode(v)


def decode(data: bytes) -> DeployVersion:
    """Decode a stored version.

    Raises:
        msgspec.ValidationError, msgspec.DecodeError: not a DeployVersion (names the field).
    """
    return msgspec.json.decode(data, type=DeployVersion)


def check_names(v: DeployVersion) -> list[str]:
    """Problems with the names a node will use as file names (never trust the sender): the
    bot name and the strategy file name must be plain names, no path."""
    out = []
    if not BOT_NAME_RE.match(v.bot):
        out.append(f"bot = {v.bot!r}: must match [A-Za-z0-9_-]{{1,32}}")
    if not _FILE_RE.match(v.strategy_file) or ".." in v.strategy_file:
        out.append(f"strategy_file = {v.strategy_file!r}: must be a plain *.py file name")
    if not re.fullmatch(r"[0-9a-f]{64}", v.source_hash):
        out.append(f"source_hash = {v.source_hash!r}: must be 64 lowercase hex digits")
    if v.version < 1:
        out.append(f"version = {v.version}: must be >= 1")
    return out


class VersionRow(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the fleet version table (``qtd versions``, status page).

    Attributes:
        bot, node: which bot on which node (node ``""``: desired but no node reported it).
        desired_version / desired_hash: what should run (0 / "" when never deployed).
        running_version / running_hash: what the node reported it runs (0: a local config
            never deployed; "" unknown).
        status: ``ok`` (running = desired), ``pending`` (not yet, within the deadline),
            ``behind`` (still old after the deadline: P2), ``refused`` (the node refused the
            desired version: P2), ``local`` (no desired version), ``no-node``.
        stage, canary: of the desired version.
        refused_reason: the node's reason, when refused.
        since_ns: when the desired version was first seen by the leader (UTC ns).
    """

    bot: str
    node: str
    desired_version: int = 0
    desired_hash: str = ""
    running_version: int = 0
    running_hash: str = ""
    status: str = ""
    stage: str = ""
    canary: bool = False
    refused_reason: str = ""
    since_ns: int = 0
