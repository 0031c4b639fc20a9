"""``qtd preflight``: the pre-deploy checklist for one agent config.

:func:`run_preflight` runs every check and returns one :class:`Check` per row; it never
raises for a failed check (the row says FAIL and why). Checks:

* bots admitted — every bot config under ``bots`` (no smoke backtest: that is ``qtd
  validate``'s job and takes seconds per bot);
* risk file valid;
* store integrity — ``PRAGMA quick_check`` on ``<state_dir>/events.db``, opened read-only;
  skipped when the store does not exist yet;
* disk free at ``state_dir`` (its nearest existing parent) at least ``min_free_bytes``;
* NATS reachable, then the ``QTD_EVENTS`` stream and the ``qtd_control`` KV bucket present;
  skipped without a ``[bus]``.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec

from qtd.admit import admit_paths
from qtd.agent.config import AgentConfig
from qtd.bus import CONTROL_BUCKET, EVENTS_STREAM, connect
from qtd.errors import QtdError
from qtd.risk import load_risk_config

Status = Literal["ok", "FAIL", "skipped"]

DEFAULT_MIN_FREE_BYTES = 1 << 30
DEFAULT_NATS_TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class Check:
    """One row of the checklist.

    Attributes:
        name: what was checked.
        status: ``ok``, ``FAIL`` or ``skipped``.
        detail: what was found, or why it failed / was skipped.
    """

    name: str
    status: Status
    detail: str


def failed(checks: list[Check]) -> bool:
    """True when any check failed."""
    return any(c.status == "FAIL" for c in checks)


def format_table(checks: list[Check]) -> str:
    """The checks as an aligned text table (check, status, detail)."""
    width = max([len("CHECK")] + [len(c.name) for c in checks])
    lines = [f"{'CHECK':<{width}}  STATUS   DETAIL"]
    lines += [f"{c.name:<{width}}  {c.status:<7}  {c.detail}" for c in checks]
    return "\n".join(lines)


def _error(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


async def check_bots(cfg: AgentConfig) -> Check:
    name = "bot configs admitted"
    if not cfg.bots:
        return Check(name, "FAIL", "no bots configured")
    results = await admit_paths([Path(b) for b in cfg.bots], node=cfg.node, smoke=False)
    bad = [r for r in results if not r.ok]
    if bad:
        first = bad[0]
        problem = str(first.problems[0]) if first.problems else "refused"
        return Check(name, "FAIL", f"{len(bad)} of {len(results)} refused: {problem}")
    bots = sorted(r.bot for r in results if r.bot)
    return Check(name, "ok", f"{len(bots)} bot(s): {', '.join(bots)}")


def check_risk(cfg: AgentConfig) -> Check:
    name = "risk file valid"
    try:
        load_risk_config(cfg.risk)
    except QtdError as e:
        return Check(name, "FAIL", _error(e))
    return Check(name, "ok", cfg.risk)


def check_store(path: Path) -> Check:
    """``PRAGMA quick_check`` on the store, opened read-only (never created or written)."""
    name = "store integrity"
    path = path.resolve()
    if not path.exists():
        return Check(name, "skipped", f"{path} does not exist yet")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as e:
        return Check(name, "FAIL", f"{path}: {e}")
    result = [str(r[0]) for r in rows]
    if result != ["ok"]:
        return Check(name, "FAIL", f"{path}: quick_check: {'; '.join(result[:3])}")
    return Check(name, "ok", f"{path}: quick_check ok")


def check_disk(state_dir: Path, min_free_bytes: int) -> Check:
    """Free space on the file system that holds (or will hold) ``state_dir``."""
    name = "disk free"
    where = state_dir.resolve()
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError as e:
        return Check(name, "FAIL", f"{where}: {e}")
    detail = f"{free / 2**30:.1f} GiB free at {where} (min {min_free_bytes / 2**30:.1f} GiB)"
    return Check(name, "ok" if free >= min_free_bytes else "FAIL", detail)


async def check_bus(cfg: AgentConfig, timeout_s: float) -> list[Check]:
    """NATS reachable (with this agent's credentials), stream present, KV bucket present."""
    names = ("NATS reachable", f"stream {EVENTS_STREAM}", f"KV bucket {CONTROL_BUCKET}")
    if cfg.bus is None:
        return [Check(n, "skipped", "no [bus] in the config (offline agent)") for n in names]
    bus = msgspec.structs.replace(cfg.bus, name=f"qtd-preflight-{cfg.node}",
                                  initial_connect_timeout=timeout_s)
    try:
        nc = await connect(bus, source=cfg.source)
    except QtdError as e:
        return [Check(names[0], "FAIL", _error(e))] + [
            Check(n, "skipped", "NATS unreachable") for n in names[1:]]
    try:
        rows = [Check(names[0], "ok", nc.connected_url.netloc if nc.connected_url else "")]
        js = nc.jetstream(timeout=timeout_s)
        for name, stream in ((names[1], EVENTS_STREAM), (names[2], f"KV_{CONTROL_BUCKET}")):
            try:
                info = await js.stream_info(stream)
            except Exception as e:  # NotFound, timeout, permission denied: all FAIL
                rows.append(Check(name, "FAIL", f"{stream}: {type(e).__name__}: {_error(e)}"))
            else:
                rows.append(Check(name, "ok", f"{info.state.messages} message(s)"))
        return rows
    finally:
        await nc.close()


async def run_preflight(cfg: AgentConfig, *, min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
                        nats_timeout_s: float = DEFAULT_NATS_TIMEOUT_S) -> list[Check]:
    """Run every check for the agent ``cfg``; one :class:`Check` per row, in table order."""
    checks = [await check_bots(cfg), check_risk(cfg),
              await asyncio.to_thread(check_store, cfg.store_path),
              check_disk(Path(cfg.state_dir), min_free_bytes)]
    checks += await check_bus(cfg, nats_timeout_s)
    return checks
