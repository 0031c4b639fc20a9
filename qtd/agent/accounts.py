"""Broker accounts of the agent: credentials, adapters, parallel and isolated start-up.

Each ``[accounts.<name>]`` is an isolated context: :func:`open_accounts` connects them all
in parallel, each within its own ``connect_timeout_s``; an account that fails (bad
credentials, venue down, timeout) is reported with its reason and only its bots are refused.

**Credentials** (alpaca, binance) are never read from the agent TOML. For account ``name``
with ``credentials_env = ["KEY_VAR", "SECRET_VAR"]`` each variable is looked up, first hit
wins, in:

1. ``$CREDENTIALS_DIRECTORY/<name>.env`` (systemd ``LoadCredential=<name>.env:/etc/qtd/...``);
2. ``credentials_file`` (an env file: ``KEY=value`` lines, ``#`` comments, optional
   ``export``, optional quotes);
3. the process environment.

A credentials file readable by group or others (mode not 0600/0400) is refused, naming the
file and its mode. Values never appear in logs or errors.

Endpoints by mode (venue docs): alpaca paper ``https://paper-api.alpaca.markets``, live
``https://api.alpaca.markets`` (alpaca-py picks them from ``paper=``); binance live
``https://api.binance.com/api`` and ``wss://ws-api.binance.com:443/ws-api/v3``, paper = the
spot test network ``https://testnet.binance.vision/api`` and
``wss://ws-api.testnet.binance.vision/ws-api/v3``. ``base_url`` / ``stream_url`` override
them (local stubs in tests).

``mode = "shadow"`` (and ``"paper"`` with ``paper_via = "qtd"``) builds no venue client:
the account is qtd's :class:`~qtd.brokers.paper.PaperBroker` (``cash``, ``slippage_bps``,
``commission_bps``, ``max_fill_qty`` apply) filled on the venue's live market data (the
agent's ``on_price``); no order reaches the venue. Binance needs no credentials for it
(public market data); Alpaca's market data does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from qtd.agent.config import AccountSettings, AgentConfig
from qtd.brokers.base import Broker
from qtd.brokers.paper import PaperBroker
from qtd.clock import Clock
from qtd.errors import ConfigError
from qtd.feeds.live import LiveFeed

log = logging.getLogger("qtd.agent")

BINANCE_TESTNET_API = "https://testnet.binance.vision/api"
BINANCE_TESTNET_WS_API = "wss://ws-api.testnet.binance.vision/ws-api/v3"


def parse_env_file(text: str) -> dict[str, str]:
    """``KEY=value`` lines (``#`` comments, blank lines, ``export `` prefix, quotes)."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def read_secret_file(path: Path, *, account: str) -> dict[str, str]:
    """Read an env file of secrets after checking it is not readable by group or others.

    Raises:
        ConfigError: missing/unreadable file, or mode allows group/other access (names the
            file and its mode, never the content).
    """
    field = f"accounts.{account}.credentials_file"
    try:
        st = path.stat()
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read credentials: {exc.strerror}", source=str(path),
                          field=field, value=str(path), rule="readable") from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path}: credentials file has mode {mode:04o}: refused, it must not be readable "
            f"by group or others (chmod 600 {path})", source=str(path), field=field,
            value=f"{mode:04o}", rule="mode 0600 or stricter")
    return parse_env_file(text)


def load_credentials(name: str, s: AccountSettings,
                     environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(key, secret) of one account (module docstring for where they are looked up).

    Raises:
        ConfigError: a variable is found nowhere, or a file is refused.
    """
    if len(s.credentials_env) != 2:
        raise ConfigError(f"accounts.{name}: credentials_env must name two variables (key, "
                          "secret)", field=f"accounts.{name}.credentials_env",
                          value=s.credentials_env, rule="two variable names")
    env = os.environ if environ is None else environ
    sources: list[tuple[str, Mapping[str, str]]] = []
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / f"{name}.env").is_file():
        path = Path(cred_dir) / f"{name}.env"
        sources.append((str(path), read_secret_file(path, account=name)))
    if s.credentials_file:
        sources.append((s.credentials_file,
                        read_secret_file(Path(s.credentials_file), account=name)))
    sources.append(("environment", env))
    values = []
    for var in s.credentials_env:
        value = next((src[var] for _, src in sources if src.get(var)), None)
        if value is None:
            where = ", ".join(w for w, _ in sources)
            raise ConfigError(
                f"accounts.{name}: credential {var} not set (looked in {where})",
                field=f"accounts.{name}.credentials_env", value=var, rule="set")
        values.append(value)
    return values[0], values[1]


def account_symbols(cfg: AgentConfig, name: str, bot_symbols: Mapping[str, Iterable[str]]
                    ) -> list[str]:
    """Symbols of an account: its ``symbols`` setting, else those of its bots."""
    s = cfg.accounts[name]
    if s.symbols:
        return list(s.symbols)
    return sorted({sym for acct, syms in bot_symbols.items() if acct == name for sym in syms})


async def connect_account(name: str, s: AccountSettings, cfg: AgentConfig, clock: Clock,
                          symbols: list[str]) -> Broker:
    """Build one account's adapter and connect it (streams started, filters loaded).

    Raises:
        ConfigError: missing credentials or a refused credentials file.
        Exception: whatever the venue client raises while connecting (the caller reports
            it and refuses only this account's bots).
    """
    if s.broker == "paper" or s.simulated:  # shadow / qtd paper: fed by the live feed
        return PaperBroker(
            account=name, node=cfg.node, clock=clock, venue=s.venue_name,
            cash=Decimal(str(s.cash)), slippage_bps=Decimal(str(s.slippage_bps)),
            commission_bps=Decimal(str(s.commission_bps)),
            max_fill_qty=None if s.max_fill_qty is None else Decimal(str(s.max_fill_qty)),
            history=cfg.terminal_orders_kept)
    key, secret = load_credentials(name, s)
    broker: Any
    if s.broker == "alpaca":
        from qtd.brokers.alpaca import AlpacaBroker

        broker = AlpacaBroker(
            account=name, node=cfg.node, clock=clock, api_key=key, secret_key=secret,
            paper=s.mode == "paper", base_url=s.base_url or None,
            stream_url=s.stream_url or None, timeout_s=s.timeout_s, venue=s.venue_name)
    else:
        from qtd.brokers.binance import LIVE_API, LIVE_WS_API, BinanceBroker

        live = s.mode == "live"
        broker = BinanceBroker(
            account=name, node=cfg.node, clock=clock, api_key=key, api_secret=secret,
            symbols=symbols,
            api_url=s.base_url or (LIVE_API if live else BINANCE_TESTNET_API),
            ws_api_url=s.stream_url or (LIVE_WS_API if live else BINANCE_TESTNET_WS_API),
            quote_asset=s.quote_asset, timeout_s=s.timeout_s, venue=s.venue_name)
    try:
        await broker.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await broker.close()
        raise
    return broker  # type: ignore[no-any-return]


async def open_accounts(cfg: AgentConfig, clock: Clock,
                        bot_symbols: Mapping[str, Iterable[str]] | None = None
                        ) -> tuple[dict[str, Broker], dict[str, str]]:
    """Connect every account in parallel; one failing never blocks the others.

    Args:
        bot_symbols: account → symbols of its bots (binance loads their filters).

    Returns:
        (brokers by account, error message by account that failed).
    """
    names = list(cfg.accounts)
    per_account = bot_symbols or {}
    results = await asyncio.gather(
        *(asyncio.wait_for(connect_account(n, cfg.accounts[n], cfg, clock,
                                           account_symbols(cfg, n, per_account)),
                           cfg.accounts[n].connect_timeout_s) for n in names),
        return_exceptions=True)
    brokers: dict[str, Broker] = {}
    failed: dict[str, str] = {}
    for name, res in zip(names, results, strict=True):
        if isinstance(res, BaseException):
            if isinstance(res, asyncio.CancelledError):
                raise res
            msg = str(res) or type(res).__name__
            failed[name] = f"{type(res).__name__}: {msg}"
            log.error("account %s (%s) failed to connect: %s; its bots will not start",
                      name, cfg.accounts[name].broker, failed[name], extra={"account": name})
        else:
            brokers[name] = res
            log.info("account %s (%s, %s) connected", name, cfg.accounts[name].broker,
                     cfg.accounts[name].mode, extra={"account": name})
    return brokers, failed


def live_feed_for(name: str, s: AccountSettings, symbols: list[str], on_price: Any
                  ) -> LiveFeed:
    """The live market data feed of a venue account's bots (:mod:`qtd.feeds.live`): bars
    at ``data_interval``; Alpaca needs the account's credentials for data, Binance none.

    Raises:
        ConfigError: missing credentials; ValueError: bad interval, symbols or venue.
    """
    from qtd.feeds.live import LiveSettings, open_live_feed

    key = secret = ""
    if s.broker == "alpaca":
        key, secret = load_credentials(name, s)
    crypto = s.broker == "alpaca" and all("/" in sym for sym in symbols)
    settings = LiveSettings(
        venue=s.broker, api_key=key, secret_key=secret,  # type: ignore[arg-type]
        asset_class="crypto" if crypto else "stock", feed=s.data_feed,
        stream_url=s.data_stream_url or None, rest_url=s.data_rest_url or None)
    return open_live_feed(s.broker, symbols, s.data_interval, settings, on_price=on_price)


async def close_brokers(brokers: Mapping[str, Broker]) -> None:
    """Close every adapter that has a ``close`` (streams, HTTP sessions); never raises."""
    for name, b in brokers.items():
        close = getattr(b, "close", None)
        if close is None:
            continue
        try:
            await asyncio.wait_for(close(), 5)
        except Exception as exc:
            log.warning("account %s: close failed: %r", name, exc, extra={"account": name})
