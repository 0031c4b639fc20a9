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
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from qtd.brokers.base import Broker
from qtd.clock import Clock
from qtd.errors import ConfigError
from qtd.venues.account import AccountSettings

if TYPE_CHECKING:
    from qtd.feeds.live import LiveFeed, LiveSettings, VenueSession

__all__ = [
    "MODULES_ENV",
    "AccountContext",
    "AccountSettings",
    "AssetClass",
    "FeedContext",
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
        keys_for_data: live market data needs them too (shadow accounts then need keys).
    """

    name: str
    instruments: Mapping[str, Instrument]
    connect: BrokerFactory
    live_data: LiveData | None = None
    options: type[msgspec.Struct] = NoOptions
    simulator: bool = False
    keys_for_orders: bool = True
    keys_for_data: bool = False

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

