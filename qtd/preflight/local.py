"""Preflight rows that need no network: bots, risk, store, disk, the clock vs NTP."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

from qtd.admit import admit_paths, collect_files
from qtd.admit.config import LoadedBot, load_bot_config
from qtd.agent.config import AgentConfig
from qtd.errors import QtdError
from qtd.preflight.checks import Check, first_line
from qtd.risk import load_risk_config
from qtd.risk.config import RiskConfig
from qtd.risk.load import bind_profiles

CLOCK_TOOL_TIMEOUT_S = 5.0


async def check_bots(cfg: AgentConfig) -> Check:
    """Every bot config admitted (schema, params, notional; no smoke backtest)."""
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
    """The agent's risk file loads and its limits are consistent."""
    name = "risk file valid"
    try:
        load_risk_config(cfg.risk)
    except QtdError as e:
        return Check(name, "FAIL", first_line(e))
    return Check(name, "ok", cfg.risk)


def _live_bots(cfg: AgentConfig) -> list[LoadedBot]:
    files, _, _ = collect_files([Path(b) for b in cfg.bots])
    bots = [load_bot_config(f)[0] for f in files]
    return [b for b in bots if b is not None and b.config.stage == "live"]


def _unlimited(risk: RiskConfig, bot: LoadedBot) -> list[str]:
    """What ``bot`` may do without any limit (empty: every kind is capped somewhere)."""
    c = bot.config
    strat, acct, glob = risk.strategy(c.name), risk.accounts.get(c.account), risk.global_
    if strat is None:
        return []  # neither its own table nor strategy_defaults: the engine denies it
    symbols = [risk.symbols.get(s) for s in c.symbols]
    wide = [x for x in (glob, acct, strat) if x is not None]

    def capped(*fields: str, extra: bool = False) -> bool:
        if extra or any(getattr(x, f, None) is not None for x in wide for f in fields):
            return True
        return all(s is not None and any(getattr(s, f) is not None for f in fields)
                   for s in symbols)

    gaps = []
    if not capped("max_order_qty", "max_order_notional"):
        gaps.append("order size (max_order_qty/max_order_notional)")
    if not capped("max_position_qty", "max_position_notional", "max_position_pct_equity",
                  extra=strat.max_gross_notional is not None
                  or strat.max_net_notional is not None):
        gaps.append("position (max_position_*/max_gross_notional)")
    if risk.breakers.daily_loss.limits(acct) == (None, None):
        gaps.append("daily loss (max_daily_loss / [breakers.daily_loss])")
    return gaps


def check_live_limits(cfg: AgentConfig) -> Check:
    """No ``stage = "live"`` bot may trade without an order-size, a position and a daily-loss
    limit at some scope of the agent's risk file (bound to the bot's risk profile)."""
    name = "live bots risk-limited"
    live = _live_bots(cfg)
    if not live:
        return Check(name, "skipped", "no bot with stage = \"live\"")
    try:
        risk = load_risk_config(cfg.risk)
    except QtdError:
        return Check(name, "FAIL", "the risk file does not load (see 'risk file valid')")
    risk = bind_profiles(risk, {b.config.name: b.profile for b in live})
    gaps = {b.config.name: _unlimited(risk, b) for b in live}
    bad = {bot: g for bot, g in gaps.items() if g}
    if bad:
        return Check(name, "FAIL", "; ".join(f"{bot}: no limit on {', '.join(g)}"
                                            for bot, g in sorted(bad.items())))
    return Check(name, "ok", f"{len(live)} live bot(s) capped: {', '.join(sorted(gaps))}")


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


_CHRONY_OFFSET = re.compile(r"^System time\s*:\s*([0-9.]+) seconds (fast|slow)", re.M)
_CHRONY_LEAP = re.compile(r"^Leap status\s*:\s*(.+)$", re.M)


def parse_chronyc_tracking(text: str, max_offset_ms: float) -> Check | None:
    """The clock row from ``chronyc tracking`` output; ``None`` if it has no offset line.

    chronyc(1): "System time" is the offset of the system clock from NTP time, seconds;
    "Leap status: Not synchronised" means chronyd has no usable source.
    """
    name = "clock vs NTP"
    offset = _CHRONY_OFFSET.search(text)
    if offset is None:
        return None
    ms = float(offset.group(1)) * 1000.0 * (1 if offset.group(2) == "fast" else -1)
    leap = _CHRONY_LEAP.search(text)
    if leap is not None and "not synchronised" in leap.group(1).lower():
        return Check(name, "FAIL", f"chronyd is not synchronised (offset {ms:+.3f} ms)")
    detail = f"{ms:+.3f} ms vs NTP (chronyc tracking; max {max_offset_ms:g} ms)"
    return Check(name, "ok" if abs(ms) <= max_offset_ms else "FAIL", detail)


def _run(argv: list[str]) -> str | None:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=CLOCK_TOOL_TIMEOUT_S,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


def check_clock_ntp(max_offset_ms: float, *, path: str | None = None) -> Check:
    """The system clock vs NTP, from the host's own time daemon (no network query here).

    Tries ``chronyc -n tracking`` (an offset), then ``timedatectl show -p NTPSynchronized``
    (synchronised yes/no, no offset); skipped with the reason when neither answers. The
    NATS rows compare the clock with the NATS server's as well.

    Args:
        max_offset_ms: |offset| above this fails, ms.
        path: search path for the tools (default ``$PATH``).
    """
    name = "clock vs NTP"
    chronyc = shutil.which("chronyc", path=path)
    if chronyc:
        out = _run([chronyc, "-n", "tracking"])
        row = parse_chronyc_tracking(out, max_offset_ms) if out else None
        if row is not None:
            return row
    timedatectl = shutil.which("timedatectl", path=path)
    if timedatectl:
        out = _run([timedatectl, "show", "-p", "NTPSynchronized", "--value"])
        if out is not None and out.strip() in ("yes", "no"):
            if out.strip() == "yes":
                return Check(name, "ok", "NTP synchronised (timedatectl; no offset reported)")
            return Check(name, "FAIL", "system clock not NTP-synchronised (timedatectl)")
    tried = [t for t, found in (("chronyc", chronyc), ("timedatectl", timedatectl)) if found]
    why = (f"{' and '.join(tried)} gave no answer (no time daemon running?)" if tried
           else "neither chronyc nor timedatectl on this host")
    return Check(name, "skipped", f"{why}: offset vs NTP unknown")
