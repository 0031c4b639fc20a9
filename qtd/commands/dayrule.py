"""Which trading day a command reading a store uses (the rule itself:
:mod:`qtd.tradingday`). :func:`resolve_trading_day`, first match wins:

1. ``--tz`` / ``--rollover`` given on the command line;
2. ``--leader-config`` (a leader.toml: its ``[fleet]``; an agent TOML: its ``[trading_day]``);
3. the leader config ``qtd up`` generated beside the store (``STATE/etc/leader.toml`` for
   ``STATE/node-N/events.db`` or ``STATE/leader/fleet.db``): the page's own;
4. UTC, rollover 00:00.

It returns where the answer came from, and the commands print it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from qtd.errors import ConfigError
from qtd.files import read_capped_text
from qtd.projections import TradingDay
from qtd.tradingday import DayRule


def _from_config(path: Path) -> DayRule:
    """The rule of a leader config (``[fleet]``) or an agent config (``[trading_day]``),
    loaded and validated by their own loaders."""
    try:
        doc = tomllib.loads(read_capped_text(path))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"--leader-config {path}: {exc}", source=str(path),
                          field="leader-config", value=str(path), rule="a readable TOML") from None
    # the config loaders are imported only when a config is read (start-up of the commands)
    if "node" in doc and "fleet" not in doc:
        from qtd.agent.config import load_agent_config

        day = load_agent_config(path).trading_day
        return DayRule(tz=day.tz, rollover=day.rollover, source=f"{path} [trading_day]")
    from qtd.leader.config import load_leader_config

    fleet = load_leader_config(path).fleet
    return DayRule(tz=fleet.trading_day_tz, rollover=fleet.trading_day_rollover,
                   source=f"{path} [fleet]")


def beside(db: str | Path) -> Path | None:
    """The leader config ``qtd up`` generated for the fleet whose store ``db`` is, if any."""
    state = Path(db).resolve().parent.parent
    cfg = state / "etc" / "leader.toml"
    return cfg if cfg.is_file() else None


def resolve_trading_day(tz: str | None = None, rollover: str | None = None,
                        config: str | Path | None = None, db: str | Path | None = None
                        ) -> tuple[TradingDay, DayRule]:
    """The trading day a command uses (module docstring: first match wins).

    Raises:
        ConfigError: an unreadable config, an unknown zone or a bad rollover.
    """
    found = beside(db) if db is not None and config is None else None
    cfg = Path(config) if config is not None else found
    rule = (_from_config(cfg) if cfg is not None
            else DayRule(tz="UTC", rollover="00:00", source="the default"))
    if tz or rollover:
        given = " ".join(x for x in (f"--tz {tz}" if tz else "",
                                     f"--rollover {rollover}" if rollover else "") if x)
        rule = DayRule(tz=tz or rule.tz, rollover=rollover or rule.rollover,
                       source=given + ("" if cfg is None else f" over {rule.source}"))
    return rule.trading_day(), rule
