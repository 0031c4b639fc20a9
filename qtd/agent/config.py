"""Agent configuration (``etc/agent.toml``): one frozen msgspec Struct, validated once.

Relative paths (``state_dir``, ``bots``, ``risk``, ``kill_file``) are resolved against the
directory of the config file. Errors name the file, the field path, the value and the rule
(secrets in ``[bus]`` are shown as ``***``). See ``etc/agent.toml`` for every key.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from msgspec import Meta

from qtd.bus import BusConfig, check_bus_config
from qtd.bus.config import CREDENTIALS_ENV
from qtd.bus.subjects import check_token
from qtd.catalog.named import resolve_data
from qtd.data import DATASETS
from qtd.errors import ConfigError
from qtd.files import read_capped_text
from qtd.quality.canary_policy import CanaryConfig
from qtd.venues import get as get_venue
from qtd.venues import load_module, needs_credentials
from qtd.venues.account import AccountSettings as AccountSettings
from qtd.workers.protocol import WorkerLimits

Seconds = Annotated[float, Meta(gt=0, le=86_400)]
Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class _Cfg(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class DataSource(_Cfg, frozen=True, kw_only=True):
    """Market data of one bot in paper mode: a data set replayed as the bot's symbol.

    Attributes:
        dataset: a data set by name (``qtd data list``: bundled, or a catalog set
            ``venue:SYMBOL:interval``, or a symbol one set has).
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


OnClose = Literal["flatten", "stop", "keep"]


class SessionRule(_Cfg, frozen=True, kw_only=True):
    """A bot's or a route's session settings; an unset field falls back to ``[schedule]``.

    Attributes:
        session: an ``exchange-calendars`` code (``XNYS``), ``24x7``, ``FX`` or a
            ``[sessions.<name>]`` of the routes file; ``""``: no session (always on).
        on_close: ``flatten``, ``stop`` or ``keep`` (:mod:`qtd.agent.schedule`).
        flatten_before_close_s: seconds before the close at which ``flatten`` acts.
    """

    session: str | None = None
    on_close: OnClose | None = None
    flatten_before_close_s: Annotated[float, Meta(ge=0, le=86_400)] | None = None


class ScheduleConfig(_Cfg, frozen=True, kw_only=True):
    """Session schedule (:mod:`qtd.agent.schedule`): defaults and per-bot / per-route
    entries.

    Attributes:
        session: default session of every bot (``""``: none, bots run whenever data
            arrives).
        on_close: default action at the close.
        flatten_before_close_s: default seconds before the close at which ``flatten`` acts.
        poll_s: wall seconds between looks at the agent's clock.
        bots: bot name → its settings.
        routes: route rule name → settings of the bots that rule yields.
    """

    session: str = ""
    on_close: OnClose = "stop"
    flatten_before_close_s: Annotated[float, Meta(ge=0, le=86_400)] = 300.0
    poll_s: Seconds = 1.0
    bots: dict[str, SessionRule] = {}
    routes: dict[str, SessionRule] = {}


class RoutedInstruments(_Cfg, frozen=True, kw_only=True):
    """Instruments this node trades through the routes file (one bot per symbol).

    Attributes:
        account: the account the routed bots trade.
        symbols: the instruments; each yields the bot of the first matching rule.
        venue: the instruments' venue (default: the account's venue).
        dataset: paper mode: bundled data set replayed for these bots (default: the
            preset's ``[smoke].dataset``).
    """

    account: str
    symbols: Annotated[list[str], Meta(min_length=1)]
    venue: str = ""
    dataset: str = ""


class AgentConfig(_Cfg, frozen=True, kw_only=True):
    """Everything one agent needs (see ``etc/agent.toml``).

    Attributes:
        node: this server's node name (a NATS subject token).
        state_dir: directory of ``events.db``.
        bus: NATS connection; ``None`` runs offline (local kill file and risk only).
        bots: bot config files or directories (``*.toml`` under a ``bots`` directory).
        risk: risk limits file.
        accounts: account name → broker settings (:class:`qtd.venues.account.
            AccountSettings`); ``broker`` names a venue of the registry (:mod:`qtd.venues`).
        venue_modules: Python modules (dotted paths on ``sys.path``), each defining
            ``VENUE`` (a :class:`qtd.venues.Venue`), imported and registered when this
            config is loaded, before ``accounts`` are checked: how an operator adds a venue
            kept outside ``qtd/venues/``.
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
        account_retry_s: an account that failed to connect is tried again this often
            (seconds); once connected it is reconciled and its bots start.
        kill_file: the local kill file, polled every ``kill_poll_s`` seconds.
        kill_store_delay_s: seconds between a kill's cancels (sent right after its
            in-force acknowledgement) and storing the kill (then the durable
            acknowledgement); not for a kill that flattens. Agents that share a host's
            cores (``qtd up``, a benchmark) then all get their in-force acks out before
            any of them spends CPU on its store: 10 agents on 2 cores, leader kill -> last
            in-force ack p99 7.6-9.2 ms with 5 ms against 23-35 ms with 0 (2026-12-07,
            ``benchmarks/kill.py``). 0 stores at once; at most 0.05 s: a second kill
            arriving meanwhile is applied after this one's store (one kill at a time).
        params_poll_s: bot config files are checked for changes this often, seconds; a
            changed file is re-admitted and its params swapped in at a bar boundary (hot
            reload), or refused with the old params kept running.
        admit_smoke: run the admission smoke backtest for each bot at start.
        hook_budget_s: wall-time budget of one strategy hook call, seconds: a worker whose
            hook runs longer is killed and its bot HALTED.
        workers: how bots' strategies run in worker processes (grouping, memory cap, kill
            grace, preloaded modules: :class:`qtd.workers.protocol.WorkerLimits`).
        jetstream_replicas: replicas of the stream and KV bucket (3 in a cluster).
        schedule: session schedule (start, stop, flatten on the venue's session).
        routes: routes file (``etc/routes.toml``); with ``routed`` it yields bots
            (:mod:`qtd.agent.routed`).
        routed: instruments traded through the routes.
        canary: how ``qtd deploy --canary`` versions ramp on this node
            (:class:`qtd.quality.canary_policy.CanaryConfig`, :mod:`qtd.agent.canary_ramps`).
        terminal_orders_kept: done (filled, canceled, rejected, expired) orders kept in
            memory, the most recent ones; older ones are retired (the store keeps them, and
            a late venue update brings one back: :mod:`qtd.orders`). Paper accounts keep as
            many, and each bot runner as many order requests. The ``status`` reply's
            ``orders`` shows the counts.
    """

    node: str
    state_dir: str = "state"
    bus: BusConfig | None = None
    bots: list[str] = []
    risk: str = "risk.toml"
    accounts: dict[str, AccountSettings] = {}
    venue_modules: list[str] = []
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
    account_retry_s: Seconds = 30.0
    kill_file: str = "/dev/shm/qtd.kill"
    kill_poll_s: Seconds = 0.25
    kill_store_delay_s: Annotated[float, Meta(ge=0, le=0.05)] = 0.005
    params_poll_s: Seconds = 2.0
    admit_smoke: bool = True
    hook_budget_s: Seconds = 0.5
    workers: WorkerLimits = WorkerLimits()
    jetstream_replicas: Annotated[int, Meta(ge=1, le=5)] = 1
    schedule: ScheduleConfig = ScheduleConfig()
    routes: str = ""
    routed: list[RoutedInstruments] = []
    source: str = "<memory>"
    canary: CanaryConfig = CanaryConfig()
    terminal_orders_kept: Annotated[int, Meta(ge=1, le=10_000_000)] = 1_000

    @property
    def store_path(self) -> Path:
        """``<state_dir>/events.db``."""
        return Path(self.state_dir) / "events.db"

    @property
    def protected_paths(self) -> list[str]:
        """Files no strategy worker may open (:mod:`qtd.workers.sandbox`): the event store
        and its SQLite side files, the kill file, ``$CREDENTIALS_DIRECTORY``, and every
        credentials file this config names."""
        store = str(self.store_path)
        out = [store, f"{store}-wal", f"{store}-shm", f"{store}-journal", self.kill_file]
        creds = os.environ.get(CREDENTIALS_ENV, "")
        if creds:
            out.append(creds)
        out += [a.credentials_file for a in self.accounts.values() if a.credentials_file]
        if self.bus is not None:
            out += [f for f in (self.bus.nkey_seed_file, self.bus.creds_file) if f]
        return out

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
        try:
            resolve_data(src.dataset)
        except ConfigError as exc:
            raise _error(cfg.source, f"market.bots.{bot}.dataset", src.dataset,
                         str(exc.rule)) from None


def _check_restart(cfg: AgentConfig) -> None:
    if cfg.restart.backoff_s > cfg.restart.backoff_max_s:
        raise _error(cfg.source, "restart.backoff_s", cfg.restart.backoff_s,
                     f"must be <= restart.backoff_max_s ({cfg.restart.backoff_max_s})")


def _check_bus(cfg: AgentConfig) -> None:
    if cfg.bus is not None:
        check_bus_config(cfg.bus, cfg.source)


def _check_venue_modules(cfg: AgentConfig) -> None:
    for i, path in enumerate(cfg.venue_modules):
        load_module(path, field=f"venue_modules[{i}]", source=cfg.source)


def _check_accounts(cfg: AgentConfig) -> None:
    for name, a in cfg.accounts.items():
        where = f"accounts.{name}"
        venue = get_venue(a.broker, field=f"{where}.broker", source=cfg.source)
        try:
            venue.options_of(a)
        except msgspec.ValidationError as exc:
            raise _validation_error(cfg.source, exc, a.options, f"{where}.options") from None
        if venue.simulator:
            continue
        if needs_credentials(a) and len(a.credentials_env) != 2:
            raise _error(cfg.source, f"{where}.credentials_env", a.credentials_env,
                         "two environment variable names: the API key's and the secret's "
                         "(values come from the environment, credentials_file or "
                         "$CREDENTIALS_DIRECTORY, never from this file)")
        for url_field in ("base_url", "stream_url"):
            url = getattr(a, url_field)
            if url and url.split("://", 1)[0] not in ("http", "https", "ws", "wss"):
                raise _error(cfg.source, f"{where}.{url_field}", url,
                             "must be an http(s):// or ws(s):// URL")


def _check_routed(cfg: AgentConfig) -> None:
    if cfg.routed and not cfg.routes:
        raise _error(cfg.source, "routes", cfg.routes, "required when [[routed]] is given")
    for i, r in enumerate(cfg.routed):
        if r.account not in cfg.accounts:
            raise _error(cfg.source, f"routed[{i}].account", r.account,
                         f"must be an account of [accounts]: {', '.join(cfg.accounts) or '-'}")
        if r.dataset and r.dataset not in DATASETS:
            raise _error(cfg.source, f"routed[{i}].dataset", r.dataset,
                         f"must be a bundled data set: {', '.join(sorted(DATASETS))}")


def _check_schedule(cfg: AgentConfig) -> None:
    from qtd.calendars import is_calendar
    from qtd.routes import BUILTIN_SESSIONS

    sch = cfg.schedule
    named: list[tuple[str, str | None]] = [("schedule.session", sch.session)]
    named += [(f"schedule.bots.{b}.session", r.session) for b, r in sch.bots.items()]
    named += [(f"schedule.routes.{n}.session", r.session) for n, r in sch.routes.items()]
    for field, name in named:
        if not name or name in BUILTIN_SESSIONS or cfg.routes or is_calendar(name):
            continue  # with a routes file, its own [sessions.*] are checked at start
        raise _error(cfg.source, field, name,
                     f"unknown session; known: {', '.join(sorted(BUILTIN_SESSIONS))} or an "
                     "exchange-calendars code (e.g. XNYS, XNAS, CMES)")


CHECKS = (_check_node, _check_trading_day, _check_market, _check_restart, _check_bus,
          _check_venue_modules, _check_accounts, _check_routed, _check_schedule)


def _validation_error(source: str, exc: msgspec.ValidationError, doc: Any,
                      prefix: str = "") -> ConfigError:
    rule, _, where = str(exc).partition(" - at `$")
    path = where.rstrip("`").lstrip(".")
    if rule.startswith("Object contains unknown field"):
        name = rule.split("`")[1]
        path, rule = ".".join(p for p in (path, name) if p), "unknown field"
    shown = ("***" if path.endswith(("token", "password")) else _dig(doc, path) if path
             else doc if prefix else None)
    return _error(source, ".".join(p for p in (prefix, path) if p) or "<root>", shown, rule)


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
    accounts = doc.get("accounts")
    if isinstance(accounts, dict):  # per account first: errors name the account
        for name, acct in accounts.items():
            try:
                msgspec.convert(acct, AccountSettings)
            except msgspec.ValidationError as exc:
                raise _validation_error(source, exc, acct, f"accounts.{name}") from None
    try:
        cfg = msgspec.convert({**doc, "source": source}, AgentConfig)
    except msgspec.ValidationError as exc:
        raise _validation_error(source, exc, doc) from None
    for check in CHECKS:
        check(cfg)
    return _resolve(cfg, base) if base is not None else cfg


def _resolve(cfg: AgentConfig, base: Path) -> AgentConfig:
    def rel(p: str) -> str:
        return str(p if Path(p).is_absolute() else (base / p))

    return msgspec.structs.replace(
        cfg, state_dir=rel(cfg.state_dir), bots=[rel(b) for b in cfg.bots], risk=rel(cfg.risk),
        kill_file=rel(cfg.kill_file), routes=rel(cfg.routes) if cfg.routes else "",
        accounts={n: msgspec.structs.replace(a, credentials_file=rel(a.credentials_file))
                  if a.credentials_file else a for n, a in cfg.accounts.items()},
    )


def load_agent_config(path: str | Path) -> AgentConfig:
    """Read and validate an agent TOML file.

    Raises:
        ConfigError: unreadable file, bad TOML, or a field / cross-field error (names the
            file, the field path, the value and the rule).
    """
    p = Path(path)
    try:
        doc = tomllib.loads(read_capped_text(p))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read: {exc}", source=str(p), rule="readable") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}", source=str(p), rule="TOML") from exc
    return parse_agent_config(doc, source=str(p), base=p.resolve().parent)
