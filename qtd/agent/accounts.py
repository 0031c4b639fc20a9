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

Which adapter an account gets is the venue registry's answer (:mod:`qtd.venues`): the
account's ``broker`` names a :class:`~qtd.venues.Venue`, whose ``connect`` builds and
connects it (endpoints by mode, SDK clients: the venue's package). ``mode = "shadow"`` (and
``"paper"`` with ``paper_via = "qtd"``) builds no venue client: the account is qtd's
:class:`~qtd.brokers.paper.PaperBroker` (``cash``, ``slippage_bps``, ``commission_bps``,
``max_fill_qty`` apply) filled on the venue's live market data (the agent's ``on_price``);
no order reaches the venue. Credentials are loaded only for a venue that needs them
(:func:`qtd.venues.needs_credentials`: Binance's public market data needs none, Alpaca's
does).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from qtd.agent.config import AccountSettings, AgentConfig
from qtd.brokers.base import Broker
from qtd.clock import Clock
from qtd.errors import ConfigError
from qtd.feeds.live import LiveFeed
from qtd.venues import AccountContext, FeedContext, get
from qtd.venues.paper import paper_broker

log = logging.getLogger("qtd.agent")


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
    """Build one account's adapter through its venue and connect it (streams started,
    filters loaded); a shadow / qtd-paper account gets qtd's paper broker instead.

    Raises:
        ConfigError: unknown venue, missing credentials or a refused credentials file.
        Exception: whatever the venue client raises while connecting (the caller reports
            it and refuses only this account's bots).
    """
    venue = get(s.broker, field=f"accounts.{name}.broker", source=cfg.source)
    ctx = AccountContext(name=name, settings=s, options=venue.options_of(s), node=cfg.node,
                         clock=clock, symbols=symbols, history=cfg.terminal_orders_kept,
                         credentials=None)
    if s.simulated:  # shadow / qtd paper: fed by the live feed, no venue client
        return paper_broker(ctx)
    if venue.keys_for_orders:
        ctx = dataclasses.replace(ctx, credentials=load_credentials(name, s))
    return await venue.connect(ctx)


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
    """The live market data feed of a venue account's bots (its venue's
    ``LiveData.feed``, :mod:`qtd.feeds.live`): bars at ``data_interval``, with the account's
    credentials when the venue's data needs them (Alpaca; Binance needs none).

    Raises:
        ConfigError: missing credentials; ValueError: bad interval, symbols, or a venue
            without live data.
    """
    venue = get(s.broker, field=f"accounts.{name}.broker")
    if venue.live_data is None:
        raise ValueError(f"accounts.{name}.broker = {s.broker!r}: the venue has no live "
                         "market data")
    creds = load_credentials(name, s) if venue.keys_for_data else None
    ctx = FeedContext(name=name, settings=s, options=venue.options_of(s), symbols=symbols,
                      on_price=on_price, credentials=creds)
    feed: LiveFeed = venue.live_data.feed(ctx)
    return feed


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
