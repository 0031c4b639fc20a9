"""Kill switch levels and the local kill file.

The kill is a :class:`qtd.control.KillCommand`. Levels: L1 GLOBAL, L2 ACCOUNT, L3 STRATEGY,
L4 SYMBOL. Activation
(:meth:`qtd.execution.OrderRouter.kill`) moves the scope to HALTED, issues cancels for the
scope's open orders, and with ``flatten`` closes the scope's positions with reduce-only
MARKET orders that still pass the risk engine (:meth:`RiskEngine.allow_flatten`).

The **kill file** (default ``/dev/shm/qtd.kill``, a RAM-backed path that needs no disk or
network) lets an operator — or ``qtd kill`` — stop a node when NATS or the leader is away.
Its content is a small JSON or TOML document::

    {"scope": "STRATEGY", "key": "bot7", "reason": "runaway orders", "flatten": false,
     "operator": "alice"}

An empty or unreadable file means an L1 GLOBAL kill (fail safe). :class:`KillFileWatcher`
polls it with one ``os.stat`` every ``poll_s`` seconds (default 0.25 s) through an injected
sleeper, and fires once per new file version (inode, mtime, size). Removing the file does not
resume trading: that needs an operator resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tomllib
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Final

from qtd.control import KillCommand, kill_file_body, kill_from_file_doc
from qtd.errors import ConfigError
from qtd.events import OrderType, Scope, Side
from qtd.files import read_capped
from qtd.orders import OrderRequest
from qtd.projections import Position

DEFAULT_KILL_FILE: Final = Path("/dev/shm/qtd.kill")
LEVELS: Final = {"L1": Scope.GLOBAL, "L2": Scope.ACCOUNT, "L3": Scope.STRATEGY, "L4": Scope.SYMBOL}


def in_scope(scope: Scope, key: str, bot: str, account: str, symbol: str) -> bool:
    """True when an order or position of (bot, account, symbol) belongs to the scope."""
    if scope is Scope.GLOBAL:
        return True
    if scope is Scope.ACCOUNT:
        return account == key
    if scope is Scope.STRATEGY:
        return bot == key
    return symbol == key


def flatten_requests(
    cmd: KillCommand, positions: Iterable[Position], venues: dict[str, str]
) -> list[OrderRequest]:
    """Reduce-only MARKET orders closing every non-flat position in the command's scope.

    Args:
        positions: e.g. ``projections.positions.values()``.
        venues: account → venue name (positions of accounts without one are skipped).
    """
    out = []
    for p in positions:
        if not p.qty or p.account not in venues:
            continue
        if not in_scope(cmd.scope, cmd.key, p.bot, p.account, p.symbol):
            continue
        out.append(OrderRequest(
            bot=p.bot, account=p.account, venue=venues[p.account], symbol=p.symbol,
            side=Side.SELL if p.qty > 0 else Side.BUY, qty=abs(p.qty),
            order_type=OrderType.MARKET, reduce_only=True, reason=f"kill flatten: {cmd.reason}",
        ))
    return out


# --- the kill file -------------------------------------------------------------------------


def parse_kill_file(data: bytes, source: str = "kill_file") -> KillCommand:
    """Decode kill-file content (JSON object, TOML, or empty = L1 GLOBAL).

    Raises:
        ConfigError: not JSON/TOML, or a bad field (callers treat it as a GLOBAL kill).
    """
    text = data.decode("utf-8", "replace").strip()
    if not text:
        return KillCommand(reason="kill file (empty)", source=source)
    try:
        doc = json.loads(text) if text.startswith("{") else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"kill file: not JSON or TOML: {exc}", source=source,
                          rule="JSON or TOML") from exc
    if isinstance(doc.get("scope"), str):
        doc["scope"] = LEVELS.get(doc["scope"].upper(), doc["scope"].upper())
    doc.setdefault("source", source)
    cmd = kill_from_file_doc(doc, source)
    if cmd.scope is not Scope.GLOBAL and not cmd.key:
        raise ConfigError(f"kill file: scope {cmd.scope} needs a key", source=source,
                          field="key", value="", rule="required unless scope is GLOBAL")
    return cmd


def write_kill_file(
    path: str | os.PathLike[str] = DEFAULT_KILL_FILE, *, scope: Scope = Scope.GLOBAL,
    key: str = "", reason: str, flatten: bool = False, operator: str = "",
) -> Path:
    """Atomically write a kill file (for ``qtd kill --local``); returns its path."""
    p = Path(path)
    body = kill_file_body(KillCommand(scope=scope, key=key, reason=reason, flatten=flatten,
                                      operator=operator, source="kill_file"))
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_bytes(body + b"\n")
    os.replace(tmp, p)
    return p


class KillFileWatcher:
    """Polls a kill file and calls ``on_kill`` once per new version of it.

    Args:
        on_kill: async callback, e.g. ``router.kill``.
        path: the file (default ``/dev/shm/qtd.kill``).
        poll_s: seconds between polls (one ``os.stat`` each).
        sleep: injected sleeper (``asyncio.sleep`` in production, a fake in tests).
    """

    def __init__(
        self, on_kill: Callable[[KillCommand], Awaitable[object]],
        path: str | os.PathLike[str] = DEFAULT_KILL_FILE, *, poll_s: float = 0.25,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.path, self.poll_s = Path(path), poll_s
        self._on_kill, self._sleep = on_kill, sleep
        self._seen: tuple[int, int, int] | None = None
        self.fired: list[KillCommand] = []

    def poll(self) -> KillCommand | None:
        """Check the file once; return a command when a new version appeared."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._seen = None
            return None
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        if sig == self._seen:
            return None
        self._seen = sig
        try:
            return parse_kill_file(read_capped(self.path))
        except (OSError, ConfigError) as exc:
            return KillCommand(reason=f"unreadable kill file ({exc})", source="kill_file")

    async def run(self) -> None:
        """Poll forever (cancel the task to stop); each new version triggers ``on_kill``."""
        while True:
            cmd = self.poll()
            if cmd is not None:
                self.fired.append(cmd)
                await self._on_kill(cmd)
            await self._sleep(self.poll_s)


def remove_kill_file(path: str | os.PathLike[str] = DEFAULT_KILL_FILE) -> None:
    """Delete the kill file if present (does not resume trading)."""
    with contextlib.suppress(FileNotFoundError):
        Path(path).unlink()

