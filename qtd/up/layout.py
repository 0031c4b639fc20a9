"""Where ``qtd up`` finds the shipped example configs and lays out its state directory.

State directory (default ``./qtd-state``)::

    up.json            agent count of this fleet (reused by the next ``qtd up``)
    up.lock            held while a ``qtd up`` runs on this directory
    pids.json          process ids of nats-server, the leader and the agents while they run
    context.json       how operator commands reach this fleet (:mod:`qtd.fleetctx`)
    nats/              nats-server config, JetStream store, nats-server.log
    etc/               generated configs: leader.toml, node-N.toml, risk.toml, bots/*.toml
    logs/              leader.log, node-N.log (JSON lines)
    leader/fleet.db    the leader's record of every event it consumed
    node-N/events.db   each agent's event store (the system of record)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qtd.errors import ConfigError
from qtd.shipped import shipped_dir

REQUIRED = ("leader.toml", "agent.toml", "risk.toml", "bots")


def find_etc(config_dir: Path | None = None) -> Path:
    """The example configs directory: ``config_dir``, else the ``etc/`` shipped with qtd
    (the checkout's, or an installed wheel's: :func:`qtd.shipped.shipped_dir`).

    Raises:
        ConfigError: the directory or one of leader.toml, agent.toml, risk.toml, bots/ is
            missing (the message says where it looked and what to do).
    """
    etc = (config_dir or shipped_dir("etc")).resolve()
    missing = [name for name in REQUIRED if not (etc / name).exists()]
    if missing:
        hint = ("pass a directory laid out like etc/" if config_dir else
                "qtd up generates its fleet from the etc/ shipped with qtd (a source "
                "checkout's, or the wheel's qtd/_shipped/etc); reinstall qtd from its wheel "
                "or checkout, or pass --config DIR")
        raise ConfigError(
            f"{etc}: missing {', '.join(missing)}: {hint}",
            source=str(etc), field="etc", value=missing, rule="leader.toml, agent.toml, "
            "risk.toml and bots/ present",
        )
    return etc


@dataclass(frozen=True, slots=True)
class Layout:
    """Paths inside one ``qtd up`` state directory (``root`` is absolute)."""

    root: Path

    @classmethod
    def at(cls, state_dir: str | Path) -> Layout:
        """The layout of ``state_dir`` (made absolute; nothing is created)."""
        return cls(Path(state_dir).expanduser().resolve())

    @property
    def nats_dir(self) -> Path:
        return self.root / "nats"

    @property
    def etc_dir(self) -> Path:
        return self.root / "etc"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def meta_file(self) -> Path:
        return self.root / "up.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "up.lock"

    @property
    def pids_file(self) -> Path:
        return self.root / "pids.json"

    @property
    def leader_config(self) -> Path:
        return self.etc_dir / "leader.toml"

    @property
    def fleet_db(self) -> Path:
        return self.root / "leader" / "fleet.db"

    def agent_config(self, node: str) -> Path:
        return self.etc_dir / f"{node}.toml"

    def agent_dir(self, node: str) -> Path:
        return self.root / node

    def events_db(self, node: str) -> Path:
        return self.agent_dir(node) / "events.db"

    def kill_file(self, node: str) -> Path:
        return self.agent_dir(node) / "qtd.kill"

    def log(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def create(self) -> None:
        """Make the directories (idempotent)."""
        for d in (self.root, self.nats_dir, self.etc_dir / "bots", self.logs_dir,
                  self.fleet_db.parent):
            d.mkdir(parents=True, exist_ok=True)
