"""The venue registry: every venue qtd can trade, one :class:`Venue` record each, by name.

A venue is a package ``qtd/venues/<name>/`` whose ``__init__`` defines ``VENUE``, a
:class:`Venue` (its settings struct, broker factory, live-feed factory, instruments and
defaults); its SDK-facing code sits beside it (``broker.py``, ``mapping.py``, ``feed.py``)
and is imported only when an account of that venue connects. Built-in venues are found by
name (:func:`get` imports ``qtd.venues.<name>`` on first use, never the others). A venue
kept elsewhere is a module defining ``VENUE``, named in the agent config's
``venue_modules`` or in the ``QTD_VENUE_MODULES`` environment variable (comma-separated
dotted paths; for CLI commands such as ``qtd deploy`` that admit bots without an agent
config), loaded by :func:`load_module`; or a record passed to :func:`register`.
:func:`load_module` also adds its module to ``QTD_VENUE_MODULES`` of this process, so the
processes it starts (the admission child, a fresh interpreter) know the same venues.

The settings every venue shares (one ``[accounts.<name>]`` table of the agent config) are
:class:`AccountSettings`, here beside the registry its ``simulated`` asks; a venue's own
settings sit in the account's ``options`` table, validated against ``Venue.options``.

Nothing outside a venue's package names it: accounts, live feeds, admission, routing and
preflight all ask this registry. An unknown name is a :class:`~qtd.errors.ConfigError`
naming the field, the value and the known venues.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta

from qtd.brokers.base import Broker
from qtd.clock import Clock
from qtd.errors import ConfigError

if TYPE_CHECKING:
    from qtd.brokers.retry import RetryPolicy
    from qtd.catalog.fetch import BarSource
    from qtd.feeds.live import LiveFeed, LiveSettings, VenueSession

__all__ = [
    "MODULES_ENV",
    "AccountContext",
    "AccountSettings",
    "AssetClass",
    "FeedContext",
    "HistoryContext",
    "Instrument",
    "LiveData",
    "NoOptions",
    "Venue",
    "all_venues",
    "get",
    "instrument_table",
    "known",
    "load_module",
    "needs_credentials",
    "register",
    "started",
]

AssetClass = Literal["equity", "index", "fx", "crypto", "future"]


class Instrument(msgspec.Struct, frozen=True, kw_only=True):
    """One tradable instrument on one venue.

    Attributes:
        venue: venue name.
        symbol: the venue's symbol.
        asset_class: one of :data:`AssetClass`.
        currency: quote currency of its prices.
        calendar: trading-session name used by routes (``"XNYS"``, ``"24x7"``, ``"FX"``,
            ``"CME"``; see :mod:`qtd.routes`).
    """

    venue: str
    symbol: str
    asset_class: AssetClass
    currency: str = "USD"
    calendar: str = "XNYS"


def instrument_table(venue: str, *rows: tuple[str, AssetClass, str, str]
                     ) -> dict[str, Instrument]:
    """``{symbol: Instrument}`` from ``(symbol, asset_class, currency, calendar)`` rows."""
    return {s: Instrument(venue=venue, symbol=s, asset_class=a, currency=c, calendar=cal)
            for s, a, c, cal in rows}


class NoOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The settings struct of a venue without settings of its own (``options`` must be
    empty)."""


Seconds = Annotated[float, Meta(gt=0, le=86_400)]
Bps = Annotated[float, Meta(ge=0, le=10_000)]


class AccountSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One broker account: an isolated context (its connection failing never blocks another
    account's bots; accounts connect in parallel at start-up).

    Credentials are never in the TOML: they come from ``credentials_env`` variables, a
    ``credentials_file`` (``KEY=value`` lines, mode 0600 or stricter: a group- or
    world-readable file is refused), or systemd's ``$CREDENTIALS_DIRECTORY``
    (``LoadCredential=<account>.env:...``); see :mod:`qtd.agent.accounts`.

    Attributes:
        broker: the venue, by name in the venue registry (:mod:`qtd.venues`): built in are
            ``"paper"`` (simulated fills against the replayed prices), ``"alpaca"``
            (alpaca-py) and ``"binance"`` (python-binance, spot); ``venue_modules`` of the
            agent config add more. An unknown name is a config error listing the known ones.
        mode: venue accounts only: ``"live"`` (real money), ``"paper"`` (the venue's
            paper/test environment; with ``paper_via = "qtd"``, qtd's paper broker on the
            venue's live data instead, for a venue without a paper endpoint) or ``"shadow"``
            (the venue's live market data, orders simulated by qtd's paper broker, every
            intent recorded; compare with a live twin by ``qtd report shadow``).
        base_url: REST base URL override (alpaca: without ``/v2``; binance: ending in
            ``/api``); empty: the venue's endpoint for ``mode``.
        stream_url: trade/user stream URL override (alpaca ``wss://.../stream``; binance
            WebSocket API ``wss://.../ws-api/v3``).
        credentials_env: environment variable names of the key and the secret.
        credentials_file: an env file holding those variables (mode 0600 or stricter).
        symbols: binance: the symbols whose filters are loaded (default: the bots' symbols).
        quote_asset: binance: the asset counted as cash.
        timeout_s: per-request timeout of the venue client, seconds.
        connect_timeout_s: start-up connection budget of this account, seconds.
        cash: paper: starting cash, quote currency.
        slippage_bps: paper: adverse move on market fills, basis points.
        commission_bps: paper: commission per fill, basis points of notional.
        max_fill_qty: paper: largest single fill, instrument units (None: whole orders).
        venue: venue name stamped on events (default: the broker kind; ``paper`` for paper).
        data_interval: venue accounts: bar interval of the live market data (``"1m"``...).
        data_stream_url: live market data stream URL override (:class:`~qtd.feeds.live.
            LiveSettings` ``stream_url``).
        data_rest_url: market data REST base override (back-fill after reconnects).
        data_feed: alpaca stocks: ``"iex"`` (free) or ``"sip"``.
        reconcile_interval_s: venue accounts: reconcile with the venue this often, seconds
            (also after every reconnect of its stream; :mod:`qtd.agent.reconciling`).
        flatten_after_disconnect_s: venue accounts: after a broker connection outage longer
            than this (seconds), flatten the account through the venue once it is reachable
            again and leave it HALTED with a P2 breach; unset (default): never.
        paper_via: ``mode = "paper"``: ``"venue"`` (its paper endpoint) or ``"qtd"``
            (qtd's paper broker on the venue's live data).
        options: the venue's own settings (``[accounts.<name>.options]``), checked against
            its ``Venue.options`` struct when the config is loaded.
    """

    broker: Annotated[str, Meta(pattern=r"^[a-z0-9_]{1,32}$")] = "paper"
    mode: Literal["paper", "live", "shadow"] = "paper"
    base_url: str = ""
    stream_url: str = ""
    credentials_env: list[str] = []
    credentials_file: str = ""
    symbols: list[str] = []
    quote_asset: str = "USDT"
    timeout_s: Seconds = 5.0
    connect_timeout_s: Seconds = 30.0
    cash: Annotated[float, Meta(gt=0, lt=1e15)] = 100_000.0
    slippage_bps: Bps = 0.0
    commission_bps: Bps = 0.0
    max_fill_qty: Annotated[float, Meta(gt=0)] | None = None
    venue: str = ""
    data_interval: str = "1m"
    data_stream_url: str = ""
    data_rest_url: str = ""
    data_feed: Literal["iex", "sip"] = "iex"
    reconcile_interval_s: Seconds = 300.0
    flatten_after_disconnect_s: Annotated[float, Meta(gt=0, le=86_400)] | None = None
    paper_via: Literal["venue", "qtd"] = "venue"
    options: dict[str, Any] = {}

    @property
    def venue_name(self) -> str:
        """The venue stamped on events: ``venue``, else the broker kind."""
        return self.venue or self.broker

    @property
    def simulated(self) -> bool:
        """A venue account whose orders qtd's paper broker fills on the venue's live data
        (``mode = "shadow"``, or ``"paper"`` with ``paper_via = "qtd"``); never an account
        of a simulator venue such as ``paper`` (:attr:`qtd.venues.Venue.simulator`).

        Raises:
            ConfigError: ``broker`` is not a known venue.
        """
        return not get(self.broker).simulator and (
            self.mode == "shadow" or (self.mode == "paper" and self.paper_via == "qtd"))


@dataclass(frozen=True, kw_only=True)
class AccountContext:
    """What a venue's broker factory gets to build one account's adapter.

    Attributes:
        name: the account name (``[accounts.<name>]``), stamped on events.
        settings: the account's settings.
        options: ``settings.options`` as the venue's own settings struct (validated).
        node: this agent's node name.
        clock: UTC ns time source.
        symbols: the symbols the account's bots trade (or its ``symbols`` setting).
        history: done orders kept in memory (``terminal_orders_kept``).
        credentials: ``(key, secret)``, or None when the venue needs none.
    """

    name: str
    settings: AccountSettings
    options: Any
    node: str
    clock: Clock
    symbols: list[str]
    history: int
    credentials: tuple[str, str] | None


@dataclass(frozen=True, kw_only=True)
class FeedContext:
    """What a venue's live-feed factory gets (see :class:`AccountContext` for the fields);
    ``on_price`` is the agent's async ``(symbol, price)`` tap run before each item is
    queued."""

    name: str
    settings: AccountSettings
    options: Any
    symbols: list[str]
    on_price: Any
    credentials: tuple[str, str] | None


@dataclass(frozen=True, kw_only=True)
class HistoryContext:
    """What a venue's history factory gets (``qtd data fetch``).

    Attributes:
        credentials: ``(key, secret)``, or None when the venue needs none for history.
        rest_url: market data REST base override (a stub in tests); empty: the venue's.
        data_feed: alpaca stocks: ``"iex"`` or ``"sip"``.
        timeout_s: per-request timeout, seconds.
        policy: retries (429 after ``Retry-After``, 5xx and broken answers with backoff).
        limits: ``(kind, window_s, limit)`` windows replacing the venue's published limits
            (a different account tier, or a stub); None: the published ones.
    """

    credentials: tuple[str, str] | None = None
    rest_url: str = ""
    data_feed: str = "iex"
    timeout_s: float = 10.0
    policy: RetryPolicy | None = None
    limits: list[tuple[str, float, int]] | None = None


BrokerFactory = Callable[[AccountContext], Awaitable[Broker]]


@dataclass(frozen=True, kw_only=True)
class LiveData:
    """A venue's live market data (:mod:`qtd.feeds.live`).

    Attributes:
        session: ``(symbols, interval_ns, LiveSettings) -> VenueSession``; raises
            ValueError for an interval or settings the venue cannot serve.
        feed: ``(FeedContext) -> LiveFeed`` for an account's bots.
        silence_s: default silence watchdog limit, seconds (``LiveSettings.silence_s``).
        calendar: ``(LiveSettings) -> exchange-calendars code | None`` when its
            ``calendar`` is unset (None: always open).
    """

    session: Callable[[list[str], int, LiveSettings], VenueSession]
    feed: Callable[[FeedContext], LiveFeed]
    silence_s: float
    calendar: Callable[[LiveSettings], str | None] = lambda _settings: None


@dataclass(frozen=True, kw_only=True)
class Venue:
    """One venue, as the rest of qtd knows it.

    Attributes:
        name: registry name (``[accounts.<n>] broker``, bot ``venue``).
        instruments: symbol → :class:`Instrument` (what admission and routing accept).
        connect: async ``(AccountContext) -> Broker``: the account's adapter, connected
            (raises whatever the venue client raises; use :func:`started`).
        live_data: live market data, or None (bots replay bundled data sets).
        options: the venue's settings struct for ``[accounts.<n>.options]``.
        simulator: qtd fills every order itself (the ``paper`` venue): no venue client,
            no credentials, no reconciliation against a venue.
        keys_for_orders: trading needs ``credentials_env``.
        keys_for_data: live market data needs them too (shadow accounts then need keys;
            ``qtd data fetch`` loads them for history).
        history: ``(HistoryContext) -> BarSource``: the venue's bar history for ``qtd data
            fetch`` (:mod:`qtd.catalog.fetch`), or None.
        default_calendar: ``(symbol) -> session name`` for a symbol not in
            :attr:`instruments` (``"24x7"``, an exchange-calendars code), or ``None`` when
            the venue cannot tell; :meth:`calendar_of` asks it.
    """

    name: str
    instruments: Mapping[str, Instrument]
    connect: BrokerFactory
    live_data: LiveData | None = None
    options: type[msgspec.Struct] = NoOptions
    simulator: bool = False
    keys_for_orders: bool = True
    keys_for_data: bool = False
    history: Callable[[HistoryContext], BarSource] | None = None
    default_calendar: Callable[[str], str | None] = lambda _symbol: None

    def calendar_of(self, symbol: str) -> str | None:
        """Trading-session name of ``symbol`` (its instrument's, else
        :attr:`default_calendar`'s), e.g. ``"XNYS"``, ``"24x7"``; ``None`` if unknown."""
        instrument = self.instruments.get(symbol)
        return instrument.calendar if instrument else self.default_calendar(symbol)

    def options_of(self, settings: AccountSettings) -> Any:
        """``settings.options`` as :attr:`options` (an instance of that struct).

        Raises:
            msgspec.ValidationError: a field is unknown or breaks its type.
        """
        return msgspec.convert(settings.options, self.options)


MODULES_ENV = "QTD_VENUE_MODULES"
_REGISTRY: dict[str, Venue] = {}
_MODULES: set[str] = set()  # loaded by load_module


def register(venue: Venue) -> Venue:
    """Add ``venue`` under its name (a re-registration of the same name replaces it);
    returns it.

    Raises:
        ValueError: the name is not a lower-case token (``[a-z0-9_]``, 1-32 characters).
    """
    if not (0 < len(venue.name) <= 32 and venue.name.replace("_", "a").isalnum()
            and venue.name == venue.name.lower()):
        raise ValueError(f"venue name {venue.name!r}: must be [a-z0-9_], 1-32 characters")
    _REGISTRY[venue.name] = venue
    return venue


def _builtin() -> list[str]:
    return [m.name for m in pkgutil.iter_modules(__path__) if m.ispkg]


def _env_modules() -> None:
    for path in os.environ.get(MODULES_ENV, "").split(","):
        if path.strip() and path.strip() not in _MODULES:
            load_module(path.strip(), field=MODULES_ENV, source="environment")


def known() -> list[str]:
    """Names of every venue: the built-in packages and those registered, sorted.

    Raises:
        ConfigError: a module of ``QTD_VENUE_MODULES`` cannot be loaded.
    """
    _env_modules()
    return sorted(set(_builtin()) | set(_REGISTRY))


def get(name: str, *, field: str = "broker", source: str = "") -> Venue:
    """The venue ``name``, importing its built-in package on first use.

    Args:
        name: venue name.
        field: the config field that named it (for the error).
        source: the config file (for the error).

    Raises:
        ConfigError: no such venue (names the field, the value and the known venues), or a
            module of ``QTD_VENUE_MODULES`` cannot be loaded.
    """
    venue = _REGISTRY.get(name)
    if venue is None:
        _env_modules()
        venue = _REGISTRY.get(name)
    if venue is None and name in _builtin():
        venue = register(importlib.import_module(f"{__name__}.{name}").VENUE)
    if venue is None:
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}{field} = {name!r}: unknown venue; known: "
                          f"{', '.join(known())}", source=source, field=field, value=name,
                          rule=f"one of: {', '.join(known())}")
    return venue


def all_venues() -> list[Venue]:
    """Every known venue (built-in packages imported), by name."""
    return [get(name) for name in known()]


def load_module(path: str, *, field: str = "venue_modules", source: str = "") -> Venue:
    """Import the module ``path`` (dotted, on ``sys.path``), register its ``VENUE`` and add
    ``path`` to this process's ``QTD_VENUE_MODULES`` (for the processes it starts).

    Raises:
        ConfigError: the module cannot be imported or defines no :class:`Venue` ``VENUE``.
    """
    try:
        module = importlib.import_module(path)
    except ImportError as exc:
        raise ConfigError(f"{source}: {field}: cannot import {path!r}: {exc}", source=source,
                          field=field, value=path, rule="an importable module") from None
    venue = getattr(module, "VENUE", None)
    if not isinstance(venue, Venue):
        raise ConfigError(f"{source}: {field}: module {path!r} defines no VENUE "
                          "(a qtd.venues.Venue)", source=source, field=field, value=path,
                          rule="a module defining VENUE = qtd.venues.Venue(...)")
    _MODULES.add(path)
    listed = [m for m in os.environ.get(MODULES_ENV, "").split(",") if m.strip()]
    if path not in listed:
        os.environ[MODULES_ENV] = ",".join([*listed, path])
    return register(venue)


def needs_credentials(settings: AccountSettings) -> bool:
    """Whether the account needs ``credentials_env`` (its venue's trading or, for a
    shadow / qtd-paper account, its market data asks for keys).

    Raises:
        ConfigError: unknown venue.
    """
    venue = get(settings.broker)
    if venue.simulator:
        return False
    return venue.keys_for_data if settings.simulated else venue.keys_for_orders


async def started(broker: Any) -> Broker:
    """``await broker.start()`` and return it; on any failure (or cancellation) the broker
    is closed (errors of the close suppressed) and the failure re-raised."""
    try:
        await broker.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await broker.close()
        raise
    return broker  # type: ignore[no-any-return]

