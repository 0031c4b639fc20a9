"""Preflight rows for broker accounts: credentials present for every account whose venue
needs them (:func:`qtd.venues.needs_credentials`), and accepted by the venue where it is
reachable.

Credentials are looked up as the agent does (:func:`qtd.agent.accounts.load_credentials`:
``$CREDENTIALS_DIRECTORY/<account>.env``, ``credentials_file``, the environment; a file
readable by group or others is refused). With ``connect``, the account is then connected
as the agent would (:func:`qtd.agent.accounts.connect_account`: authentication, account
and symbol lookups, streams; no order is sent) and closed: a refusal or no login within the
account's ``connect_timeout_s`` fails the row; a connection refused before any login (no
route, DNS) leaves the credentials "present, not validated".
"""

from __future__ import annotations

import asyncio
import contextlib

from qtd.agent.accounts import account_symbols, connect_account, load_credentials
from qtd.agent.config import AgentConfig
from qtd.clock import LiveClock
from qtd.errors import ConfigError
from qtd.preflight.checks import Check, first_line
from qtd.venues import needs_credentials


def _unreachable(e: BaseException) -> bool:
    """A network failure before any login (connection refused, no route, DNS), as opposed
    to the venue refusing the keys. A timeout is not one: alpaca-py retries a refused stream
    login until the caller gives up, so a timeout may hide refused keys."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and not isinstance(cur, TimeoutError):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


async def _validate(name: str, cfg: AgentConfig) -> Check:
    row = f"broker credentials {name}"
    s = cfg.accounts[name]
    try:
        broker = await asyncio.wait_for(
            connect_account(name, s, cfg, LiveClock(), account_symbols(cfg, name, {})),
            s.connect_timeout_s)
    except TimeoutError:
        return Check(row, "FAIL", f"{s.broker} ({s.mode}): no login within "
                     f"{s.connect_timeout_s:g} s (keys refused, or the venue is unreachable "
                     "from here: then pass --no-broker-connect)")
    except Exception as e:
        if _unreachable(e):
            return Check(row, "ok", f"present; {s.broker} not reachable from here, not "
                         f"validated ({type(e).__name__})")
        return Check(row, "FAIL", f"{s.broker} ({s.mode}) refused: {type(e).__name__}: "
                     f"{first_line(e)}")
    close = getattr(broker, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(close(), 5)
    return Check(row, "ok", f"accepted by {s.broker} ({s.mode})")


async def check_broker_credentials(cfg: AgentConfig, *, connect: bool = True) -> list[Check]:
    """One row per account that needs credentials (:func:`qtd.venues.needs_credentials`:
    not a paper account, nor a shadow account on public market data); one ``skipped`` row
    when there is none."""
    names = [n for n, s in cfg.accounts.items() if needs_credentials(s)]
    if not names:
        return [Check("broker credentials", "skipped", "paper accounts only")]
    rows = []
    for name in names:
        try:
            load_credentials(name, cfg.accounts[name])
        except ConfigError as e:
            rows.append(Check(f"broker credentials {name}", "FAIL", first_line(e)))
            continue
        if connect:
            rows.append(await _validate(name, cfg))
        else:
            rows.append(Check(f"broker credentials {name}", "ok",
                              "present (not validated: --no-broker-connect)"))
    return rows
