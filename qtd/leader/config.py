"""Leader configuration: frozen msgspec Structs loaded once from TOML (see ``etc/leader.toml``).

Units: money in the fleet currency (``fleet.currency``); percentages in percent (``10.0`` =
10 %); durations in seconds; rates in orders per second. A cap table that is absent is not
checked. Every cap names the kill-switch ``level`` it trips (``L1`` global, ``L2`` account,
``L3`` strategy, ``L4`` symbol); the key of the scope comes from the breach (the symbol of a
symbol-exposure breach, the account of a self-trade), falling back to L1 when the breach has
no such key (fail safe).
"""

from __future__ import annotations

import re
import tomllib
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from msgspec import Meta

from qtd.bus import BusConfig, check_bus_config
from qtd.errors import ConfigError
from qtd.files import read_capped_text
from qtd.notify import NotifyConfig, check_url
from qtd.quality.config import QualityConfig

_BIG = 1e15
Amount = Annotated[float, Meta(gt=0, lt=_BIG)]
Pct = Annotated[float, Meta(gt=0, le=100)]
Seconds = Annotated[float, Meta(gt=0, lt=10 * 365 * 86400)]
Count = Annotated[int, Meta(gt=0, lt=10**9)]
Level = Literal["L1", "L2", "L3", "L4"]


class _Cfg(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class LossCap(_Cfg, frozen=True, kw_only=True):
    """Fleet daily loss: trips when today's fleet PnL <= -``limit`` (currency)."""

    limit: Amount
    level: Level = "L1"
    flatten: bool = False


class DrawdownCap(_Cfg, frozen=True, kw_only=True):
    """Fleet drawdown: trips when equity is ``limit_pct`` % below its peak
    (equity = ``fleet.capital`` + total PnL)."""

    limit_pct: Pct
    level: Level = "L1"
    flatten: bool = False


class ExposureCap(_Cfg, frozen=True, kw_only=True):
    """Fleet gross exposure: sum of |qty × mark| over every position (currency)."""

    limit: Amount
    level: Level = "L1"
    flatten: bool = False


class SymbolExposureCap(_Cfg, frozen=True, kw_only=True):
    """Per-symbol fleet exposure: |net notional| of a symbol summed over all bots and nodes
    (currency). ``per_symbol`` overrides ``limit`` for named symbols."""

    limit: Amount
    per_symbol: dict[str, Amount] = {}
    level: Level = "L4"
    flatten: bool = False


class ErrorRateCap(_Cfg, frozen=True, kw_only=True):
    """Fleet error rate: (rejects + broker errors) / orders over the last ``window_s`` s,
    checked once at least ``min_orders`` orders were sent in the window."""

    max_pct: Pct = 10.0
    window_s: Seconds = 60.0
    min_orders: Count = 20
    level: Level = "L1"
    flatten: bool = False


class OrderSpikeCap(_Cfg, frozen=True, kw_only=True):
    """Order-rate spike: orders/s over the last ``window_s`` above ``factor`` × the trailing
    normal (orders/s over the preceding ``baseline_s``, at least ``min_baseline_per_s``)."""

    factor: Annotated[float, Meta(gt=1)] = 10.0
    window_s: Seconds = 5.0
    baseline_s: Seconds = 600.0
    min_baseline_per_s: Amount = 1.0
    level: Level = "L1"
    flatten: bool = False


class SelfTradeCap(_Cfg, frozen=True, kw_only=True):
    """Self-trade risk: two bots send opposite-side orders for the same symbol on the same
    account within ``window_s`` seconds (event time)."""

    window_s: Seconds = 5.0
    level: Level = "L2"
    flatten: bool = False


class CapsConfig(_Cfg, frozen=True, kw_only=True):
    """Fleet-wide caps; an absent cap is not checked."""

    daily_loss: LossCap | None = None
    drawdown: DrawdownCap | None = None
    gross_exposure: ExposureCap | None = None
    symbol_exposure: SymbolExposureCap | None = None
    error_rate: ErrorRateCap | None = None
    order_spike: OrderSpikeCap | None = None
    self_trade: SelfTradeCap | None = None


class IngestConfig(_Cfg, frozen=True, kw_only=True):
    """The durable JetStream pull consumer of ``QTD_EVENTS``.

    Attributes:
        durable: consumer name. Each leader instance has its own consumer, paired with its
            own fleet.db: with ``[lease] enabled`` the name used is
            ``<durable>-<lease.instance>`` (two leaders on one consumer would split the
            stream between them).
        batch: messages per fetch (and per fleet.db transaction), at most. A batch is
            what arrived while the previous one was committed, so it is small when the
            fleet is quiet; under load it bounds the fsyncs per second.
        fetch_timeout_s: how long one fetch waits for messages.
        ack_wait_s: JetStream redelivers a delivered but unacked message after this. Ingest
            is idempotent (a redelivery is dropped by origin), so it is short: a delivery
            lost client-side (a reconnect) comes back within seconds, not after 30 s.
        max_ack_pending: messages delivered but not yet acked, at most.
        fsync: fsync fleet.db at every commit (SQLite ``synchronous=FULL``); ``False`` uses
            ``NORMAL`` (a power cut may lose the last commits; they were acked already).
        terminal_orders_kept: per node, how many filled/canceled/rejected/expired orders
            the fleet view keeps in memory (the most recent ones). Older ones are only in
            fleet.db: without a bound the view grows with every order ever sent, and so does
            each full garbage collection (0.4 s pauses, i.e. ingest lag, after 225,000
            orders in ``benchmarks/leader_ingest.py``). Open orders are always kept.
    """

    durable: str = "qtd-leader"
    batch: Annotated[int, Meta(gt=0, le=20_000)] = 5000
    fetch_timeout_s: Seconds = 0.25
    ack_wait_s: Seconds = 5.0
    max_ack_pending: Count = 50_000
    fsync: bool = True
    terminal_orders_kept: Count = 1_000


class LeaseConfig(_Cfg, frozen=True, kw_only=True):
    """Standby leaders (:mod:`qtd.leader.lease`): every instance with ``enabled`` competes for
    one KV lease; the holder is the active leader, the others stay passive (they consume into
    their own fleet.db, so a takeover is warm, but never page, trip caps or kill).

    Attributes:
        enabled: compete for the lease (off: this leader is always active, as before).
        instance: this instance's name (unique per fleet; letters, digits, ``-``, ``_``);
            it also names its JetStream consumer (``<ingest.durable>-<instance>``).
        bucket: the KV bucket of the lease (its TTL is ``ttl_s``).
        key: the lease key.
        ttl_s: lease period: a standby takes over at most about ``ttl_s`` + ``renew_s``
            after the active leader stopped renewing. Keep it below the agents'
            ``leader_timeout_s`` (default 5 s) so agents do not apply their fail-safe.
        renew_s: renewal (and standby poll) interval; at most ``ttl_s / 3``. The holder
            stops acting ``renew_s`` before its lease could be taken over.
    """

    enabled: bool = False
    instance: str = ""
    bucket: str = "qtd_leader"
    key: str = "active"
    ttl_s: Annotated[float, Meta(ge=0.3, le=600)] = 3.0
    renew_s: Annotated[float, Meta(ge=0.05, le=200)] = 0.5


class FleetConfig(_Cfg, frozen=True, kw_only=True):
    """Fleet money and the trading day. One currency: positions in another quote currency
    are summed as is (the leader does no FX).

    ``pnl_stale_s``: a bot's unrealized PnL is the one its agent last reported on
    ``<prefix>.pnl.<node>.<bot>`` (marked at the agent's market data) while that tick is
    younger than this (seconds, leader clock) and no fill of the bot is newer than it;
    otherwise the leader marks the bot's positions at the last fill price it saw.
    """

    capital: Amount = 1_000_000.0
    currency: str = "USD"
    trading_day_tz: str = "UTC"
    trading_day_rollover: str = "00:00"
    pnl_stale_s: Seconds = 5.0


class KillConfig(_Cfg, frozen=True, kw_only=True):
    """Kill switch acknowledgements (:mod:`qtd.leader.kill_switch`).

    Attributes:
        ack_timeout_s: seconds from the kill decision within which every known agent must
            acknowledge the kill in force (HALTED in memory); the others are paged P1.
        durable_timeout_s: seconds within which an agent's durable acknowledgement (the
            kill's events fsynced in its store, after its cancels and flatten orders) must
            follow its in-force one; otherwise it is paged P1 naming the node and the kill.
    """

    ack_timeout_s: Seconds = 1.0
    durable_timeout_s: Seconds = 5.0


class LivenessConfig(_Cfg, frozen=True, kw_only=True):
    """Heartbeats and bot data staleness.

    Attributes:
        heartbeat_timeout_s: an agent heartbeat older than this opens a P2 alert.
        bot_stale_s: a bot with no PnL tick or event for this long opens a P3 alert.
        bot_stale_overrides: per-bot ``"node/bot"`` override of ``bot_stale_s`` (a daily-bar
            bot may legitimately be quiet for hours).
        check_interval_s: how often caps and liveness are evaluated.
        heartbeat_interval_s: how often the leader publishes its own heartbeat.
    """

    heartbeat_timeout_s: Seconds = 5.0
    bot_stale_s: Seconds = 120.0
    bot_stale_overrides: dict[str, Seconds] = {}
    check_interval_s: Seconds = 0.5
    heartbeat_interval_s: Seconds = 1.0


class WebConfig(_Cfg, frozen=True, kw_only=True):
    """The status page (:mod:`qtd.web`), served by the leader in its own event loop.

    The operator token is never in this file: name an environment variable
    (``operator_token_env``) or a file (``operator_token_file``) holding it. Without either
    the page is read-only (controls hidden, control endpoints answer 403).

    Attributes:
        enabled: serve the page.
        host: interface to bind (loopback by default; put a TLS proxy in front otherwise).
        port: TCP port; 0 picks a free port, logged as ``leader.web url=...``.
        operator_token_env: environment variable holding the operator token.
        operator_token_file: file holding the operator token.
        session_ttl_s: how long an operator login lasts.
        push_interval_s: seconds between live PnL frames on the WebSocket.
        allowed_origins: extra origins accepted for controls and the live WebSocket
            (e.g. the TLS proxy's URL).
        allowed_hosts: ``Host`` names served besides IP addresses, ``localhost`` and
            ``host`` (e.g. the proxy's name; any other name is refused: DNS rebinding).
        max_connections: open connections to the page (WebSockets included); lowered at
            start to fit the process's file-descriptor limit (``LimitNOFILE=``).
        request_timeout_s: seconds a client has to send a whole request (headers and
            body); a slower one is disconnected (slowloris).
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 0
    operator_token_env: str = ""
    operator_token_file: str = ""
    session_ttl_s: Seconds = 12 * 3600.0
    push_interval_s: Annotated[float, Meta(ge=0.05, le=60)] = 1.0
    allowed_origins: list[str] = []
    allowed_hosts: list[str] = []
    max_connections: Annotated[int, Meta(ge=16, le=100_000)] = 1000
    request_timeout_s: Annotated[float, Meta(gt=0, le=300)] = 10.0


class LeaderConfig(_Cfg, frozen=True, kw_only=True):
    """Everything ``qtd leader`` needs (see ``etc/leader.toml``)."""

    fleet_db: str = "state/leader/fleet.db"
    bus: BusConfig = BusConfig(name="qtd-leader")
    ingest: IngestConfig = IngestConfig()
    fleet: FleetConfig = FleetConfig()
    caps: CapsConfig = CapsConfig()
    kill: KillConfig = KillConfig()
    liveness: LivenessConfig = LivenessConfig()
    notify: NotifyConfig = NotifyConfig()
    web: WebConfig = WebConfig()
    quality: QualityConfig = QualityConfig()
    lease: LeaseConfig = LeaseConfig()


def _error(source: str, field: str, value: Any, rule: str) -> ConfigError:
    return ConfigError(f"{source}: {field} = {value!r}: {rule}",
                       source=source, field=field, value=value, rule=rule)


def _check_hhmm(source: str, field: str, value: str) -> None:
    try:
        time.fromisoformat(value)
    except ValueError:
        raise _error(source, field, value, "must be local time HH:MM") from None


def _check_tz(source: str, field: str, value: str) -> None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise _error(source, field, value, "must be an IANA time zone") from None


_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _check_lease(source: str, lease: LeaseConfig) -> None:
    for field, value in (("instance", lease.instance), ("bucket", lease.bucket),
                         ("key", lease.key)):
        if (value or lease.enabled) and not _NAME.match(value):
            raise _error(source, f"lease.{field}", value,
                         "must be 1-64 letters, digits, '-' or '_'" +
                         (" (required with lease.enabled)" if field == "instance" else ""))
    if lease.renew_s * 3 > lease.ttl_s:
        raise _error(source, "lease.renew_s", lease.renew_s,
                     f"must be at most ttl_s / 3 ({lease.ttl_s / 3:g})")


def consumer_name(cfg: LeaderConfig) -> str:
    """The durable consumer this leader instance uses (see :class:`IngestConfig`)."""
    if cfg.lease.enabled:
        return f"{cfg.ingest.durable}-{cfg.lease.instance}"
    return cfg.ingest.durable


def check_leader_config(cfg: LeaderConfig, source: str = "<config>") -> LeaderConfig:
    """Cross-field checks (times, zones, bus, Apprise URLs).

    Raises:
        ConfigError: names the file, the field, the value and the rule.
    """
    check_bus_config(cfg.bus, source)
    _check_lease(source, cfg.lease)
    _check_tz(source, "fleet.trading_day_tz", cfg.fleet.trading_day_tz)
    _check_hhmm(source, "fleet.trading_day_rollover", cfg.fleet.trading_day_rollover)
    quiet = cfg.notify.quiet_hours
    if quiet is not None:
        _check_tz(source, "notify.quiet_hours.tz", quiet.tz)
        _check_hhmm(source, "notify.quiet_hours.start", quiet.start)
        _check_hhmm(source, "notify.quiet_hours.end", quiet.end)
    if cfg.web.operator_token_env and cfg.web.operator_token_file:
        raise _error(source, "web.operator_token_file", cfg.web.operator_token_file,
                     "set operator_token_env or operator_token_file, not both")
    spike = cfg.caps.order_spike
    if spike is not None and spike.baseline_s <= spike.window_s:
        raise _error(source, "caps.order_spike.baseline_s", spike.baseline_s,
                     f"must be > window_s ({spike.window_s})")

    for sev, urls in cfg.notify.destinations.items():
        for i, url in enumerate(urls):
            if not check_url(url):
                raise _error(source, f"notify.destinations.{sev}[{i}]", url,
                             "Apprise does not recognise this URL")
    return cfg


def parse_leader_config(data: dict[str, Any], source: str = "<config>") -> LeaderConfig:
    """Validate a decoded TOML document.

    Raises:
        ConfigError: the first problem, naming the field path, the value and the rule.
    """
    web = data.get("web")
    if isinstance(web, dict) and "operator_token" in web:
        raise _error(source, "web.operator_token", "<hidden>", "never put the token in the "
                     "config: name an environment variable (operator_token_env) or a file "
                     "(operator_token_file)")
    try:
        cfg = msgspec.convert(data, LeaderConfig)
    except msgspec.ValidationError as e:
        text = str(e)
        path = text.rsplit("`$.", 1)[-1].rstrip("`") if "`$." in text else "?"
        raise ConfigError(f"{source}: {path}: {text}", source=source, field=path,
                          rule=text.split(" - at ")[0]) from None
    return check_leader_config(cfg, source)


def load_leader_config(path: str | Path) -> LeaderConfig:
    """Load and validate ``etc/leader.toml``.

    Raises:
        ConfigError: the file is missing, not TOML, or a value breaks a rule.
    """
    p = Path(path)
    try:
        data = tomllib.loads(read_capped_text(p))
    except OSError as e:
        raise ConfigError(f"{p}: cannot read ({e.strerror})", source=str(p)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML ({e})", source=str(p)) from None
    return parse_leader_config(data, str(p))
