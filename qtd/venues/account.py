"""One ``[accounts.<name>]`` table of the agent config: the settings every venue shares.

A venue's own settings (if any) sit in the account's ``options`` table and are validated
against the struct its :class:`qtd.venues.Venue` record names (``Venue.options``), so a new
venue adds settings without touching this struct.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

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
        from qtd.venues import get

        return not get(self.broker).simulator and (
            self.mode == "shadow" or (self.mode == "paper" and self.paper_via == "qtd"))
