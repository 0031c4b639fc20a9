"""Agent configuration (``etc/agent.toml``): one frozen msgspec Struct, validated once.

Relative paths (``state_dir``, ``bots``, ``risk``, ``kill_file``) are resolved against the
directory of the config file. Errors name the file, the field path, the value and the rule
(secrets in ``[bus]`` are shown as ``***``). See ``etc/agent.toml`` for every key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from msgspec import Meta

from qtd.bus import BusConfig, check_bus_config
from qtd.bus.subjects import check_token
from qtd.data import DATASETS
from qtd.errors import ConfigError

Seconds = Annotated[float, Meta(gt=0, le=86_400)]
Bps = Annotated[float, Meta(ge=0, le=10_000)]
Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class _Cfg(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class AccountSettings(_Cfg, frozen=True, kw_only=True):
    """One broker account.

    Attributes:
        broker: adapter kind; only ``"paper"`` is built into the agent so far.
        cash: starting cash, quote currency.
        slippage_bps: adverse move on market fills, basis points.
        commission_bps: commission per fill, basis points of notional.
        max_fill_qty: largest single fill, instrument units (None: whole orders).
        venue: venue name stamped on events.
    """

    broker: Literal["paper"] = "paper"
    cash: Annotated[float, Meta(gt=0, lt=1e15)] = 100_000.0
    slippage_bps: Bps = 0.0
    commission_bps: Bps = 0.0
    max_fill_qty: Annotated[float, Meta(gt=0)] | None = None
    venue: str = "paper"


class DataSource(_Cfg, frozen=True, kw_only=True):
    """Market data of one bot in paper mode: a bundled data set replayed as the bot's symbol.

    Attributes:
        dataset: bundled data set name (``qtd data list``).
        speed: replay acceleration, a multiple of real time (3600 plays an hour of bars per
            second; daily bars at 864000 give 10 bars/s).
        symbol: symbol stamped on the replayed bars (default: the bot's first symbol).
        loop: start over at the end of the data set.
    """

    dataset: str
    speed: Annotated[float, Meta(gt=0)] = 86_400.0
    symbol: str = ""
    loop: bool = False


class MarketConfig(_Cfg, frozen=True, kw_only=True):
    """Paper-mode market data. Bots without an entry in ``bots`` replay their bot config's
    ``[smoke].dataset`` at ``speed``.

    Attributes:
        speed: default replay acceleration (multiple of real time).
        loop: default for :attr:`DataSource.loop`.
        bots: bot name → its data source.
    """

    speed: Annotated[float, Meta(gt=0)] = 86_400.0
    loop: bool = False
    bots: dict[str, DataSource] = {}


class RestartPolicy(_Cfg, frozen=True, kw_only=True):
    """When the supervisor restarts a halted (crashed) bot.

    Attributes:
        max_per_hour: restarts allowed per bot in any rolling hour (0: never restart).
        backoff_s: delay before the first restart, seconds; doubles per restart.
        backoff_max_s: cap of the delay, seconds.
    """

    max_per_hour: Annotated[int, Meta(ge=0, le=1000)] = 3
    backoff_s: Seconds = 5.0
    backoff_max_s: Seconds = 300.0


class TradingDayConfig(_Cfg, frozen=True, kw_only=True):
    """Trading-day boundary for PnL by day: ``rollover`` (``HH:MM``) local time in ``tz``."""

    tz: str = "UTC"
    rollover: Annotated[str, Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")] = "00:00"


class AgentConfig(_Cfg, frozen=True, kw_only=True):
    """Everything one agent needs (see ``etc/agent.toml``).

    Attributes:
        node: this server's node name (a NATS subject token).
        state_dir: directory of ``events.db``.
        bus: NATS connection; ``None`` runs offline (local kill file and risk only).
        bots: bot config files or directories (``*.toml`` under a ``bots`` directory).
        risk: risk limits file.
        accounts: account name → broker settings.
        market: paper-mode market data.
        trading_day: PnL day boundary.
        leader_timeout_s: leader heartbeat silence (seconds) after which the fail-safe
            applies; before any leader heartbeat was seen, counted from start.
        failsafe: GLOBAL state applied while the leader is absent (``NONE``: only log).
        restart: bot restart policy.
        heartbeat_s: seconds between heartbeats on ``<prefix>.hb.<node>``.
        pnl_s: seconds between PnL snapshots per bot on ``<prefix>.pnl.<node>.<bot>``.
        on_shutdown: ``leave`` open orders at the venue or ``cancel`` them at shutdown.
        shutdown_timeout_s: seconds for the final outbox flush and NATS drain.
        bus_wait_s: seconds start-up waits for NATS (to read the kill key) before bots
            start anyway.
        kill_file: the local kill file, polled every ``kill_poll_s`` seconds.
        params_poll_s: bot config files are checked for changes this often, seconds; a
            changed file is re-admitted and its params swapped in at a bar boundary (hot
            reload), or refused with the old params kept running.
        admit_smoke: run the admission smoke backtest for each bot at start.
        hook_budget_s: wall-time budget of one strategy hook call, seconds.
        jetstream_replicas: replicas of the stream and KV bucket (3 in a cluster).
    """

    node: str
    state_dir: str = "state"
    bus: BusConfig | None = None
    bots: list[str] = []
    risk: str = "risk.toml"
    accounts: dict[str, AccountSettings] = {}
    market: MarketConfig = MarketConfig()
    trading_day: TradingDayConfig = TradingDayConfig()
    leader_timeout_s: Seconds = 5.0
    failsafe: Literal["REDUCING", "HALTED", "NONE"] = "REDUCING"
    restart: RestartPolicy = RestartPolicy()
    heartbeat_s: Seconds = 1.0
    pnl_s: Seconds = 1.0
    on_shutdown: Literal["leave", "cancel"] = "leave"
    shutdown_timeout_s: Seconds = 10.0
    bus_wait_s: Annotated[float, Meta(ge=0, le=3600)] = 5.0
    kill_file: str = "/dev/shm/qtd.kill"
    kill_poll_s: Seconds = 0.25
    params_poll_s: Seconds = 2.0
    admit_smoke: bool = True
    hook_budget_s: Seconds = 0.5
    jetstream_replicas: Annotated[int, Meta(ge=1, le=5)] = 1
    source: str = "<memory>"

    @property
    def store_path(self) -> Path:
        """``<state_dir>/events.db``."""
        return Path(self.state_dir) / "events.db"

    @property
    def offline(self) -> bool:
        """True when no ``[bus]`` is configured."""
        return self.bus is None


def _error(source: str, field: str, value: Any, rule: str) -> ConfigError:
    return ConfigError(f"{source}: {field} = {value!r}: {rule}", source=source, field=field,
                       value=value, rule=rule)


def _dig(doc: Any, path: str) -> Any:
    for part in path.replace("[", ".").replace("]", "").split("."):
        if isinstance(doc, dict):
            doc = doc.get(part)
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return None
    return doc


def _check_node(cfg: AgentConfig) -> None:
    try:
        check_token("node", cfg.node)
    except ConfigError as exc:
        raise _error(cfg.source, "node", cfg.node, exc.rule) from None
    if cfg.node == "leader":
        raise _error(cfg.source, "node", cfg.node, "'leader' is the leader's heartbeat name")


def _check_trading_day(cfg: AgentConfig) -> None:
    try:
        ZoneInfo(cfg.trading_day.tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise _error(cfg.source, "trading_day.tz", cfg.trading_day.tz,
                     "must be an IANA time zone, e.g. America/New_York") from None


def _check_market(cfg: AgentConfig) -> None:
    for bot, src in cfg.market.bots.items():
        if src.dataset not in DATASETS:
            raise _error(cfg.source, f"market.bots.{bot}.dataset", src.dataset,
                         f"must be a bundled data set: {', '.join(sorted(DATASETS))}")


def _check_restart(cfg: AgentConfig) -> None:
    if cfg.restart.backoff_s > cfg.restart.backoff_max_s:
        raise _error(cfg.source, "restart.backoff_s", cfg.restart.backoff_s,
                     f"must be <= restart.backoff_max_s ({cfg.restart.backoff_max_s})")


def _check_bus(cfg: AgentConfig) -> None:
    if cfg.bus is not None:
        check_bus_config(cfg.bus, cfg.source)


CHECKS = (_check_node, _check_trading_day, _check_market, _check_restart, _check_bus)


def parse_agent_config(doc: dict[str, Any], *, source: str = "<memory>",
                       base: Path | None = None) -> AgentConfig:
    """Validate a decoded TOML document and resolve relative paths against ``base``.

    Raises:
        ConfigError: names the file, the field path, the value and the rule.
    """
    doc = dict(doc)
    bus = doc.get("bus")
    if isinstance(bus, dict) and bus.get("enabled", True) is False:
        doc["bus"] = None
    elif isinstance(bus, dict):
        doc["bus"] = {k: v for k, v in bus.items() if k != "enabled"}
    try:
        cfg = msgspec.convert({**doc, "source": source}, AgentConfig)
    except msgspec.ValidationError as exc:
        rule, _, where = str(exc).partition(" - at `$")
        path = where.rstrip("`").lstrip(".")
        if rule.startswith("Object contains unknown field"):
            name = rule.split("`")[1]
            path, rule = ".".join(p for p in (path, name) if p), "unknown field"
        path = path or "<root>"
        shown = "***" if path.endswith(("token", "password")) else _dig(doc, path)
        raise _error(source, path, shown, rule) from None
    for check in CHECKS:
        check(cfg)
    return _resolve(cfg, base) if base is not None else cfg


def _resolve(cfg: AgentConfig, base: Path) -> AgentConfig:
    def rel(p: str) -> str:
        return str(p if Path(p).is_absolute() else (base / p))

    return msgspec.structs.replace(
        cfg, state_dir=rel(cfg.state_dir), bots=[rel(b) for b in cfg.bots], risk=rel(cfg.risk),
        kill_file=rel(cfg.kill_file),
    )


def load_agent_config(path: str | Path) -> AgentConfig:
    """Read and validate an agent TOML file.

    Raises:
        ConfigError: unreadable file, bad TOML, or a field / cross-field error (names the
            file, the field path, the value and the rule).
    """
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read: {exc}", source=str(p), rule="readable") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}", source=str(p), rule="TOML") from exc
    return parse_agent_config(doc, source=str(p), base=p.resolve().parent)
