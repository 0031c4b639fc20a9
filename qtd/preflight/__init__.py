"""``qtd preflight``: the pre-deploy checklist for one agent config.

:func:`run_preflight` runs every check and returns one :class:`Check` per row; it never
raises for a failed check (the row says FAIL and why). Rows, in table order:

* bots admitted — every bot config under ``bots`` (no smoke backtest: that is ``qtd
  validate``'s job and takes seconds per bot);
* risk file valid; no unlimited risk on a live bot (:mod:`qtd.preflight.local`);
* broker credentials — present for every non-paper account, and accepted by the venue
  where it is reachable (:mod:`qtd.preflight.brokers`);
* store integrity — ``PRAGMA quick_check`` on ``<state_dir>/events.db``, read-only;
* disk free at ``state_dir``; clock vs NTP (``chronyc`` / ``timedatectl`` when present);
* NATS reachable, auth on (an anonymous client is refused), the ``QTD_EVENTS`` stream and
  the ``qtd_control`` KV bucket present, kill switch round trip on a test-only key, and the
  clock vs the NATS server's (:mod:`qtd.preflight.bus`); skipped without a ``[bus]``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from qtd.agent.config import AgentConfig
from qtd.preflight.brokers import check_broker_credentials
from qtd.preflight.bus import check_auth_on, check_bus, check_kill_round_trip
from qtd.preflight.checks import Check, Status, failed, format_table
from qtd.preflight.local import (
    check_bots,
    check_clock_ntp,
    check_disk,
    check_live_limits,
    check_risk,
    check_store,
)

DEFAULT_MIN_FREE_BYTES = 1 << 30
DEFAULT_NATS_TIMEOUT_S = 3.0
DEFAULT_MAX_CLOCK_OFFSET_MS = 250.0
DEFAULT_MAX_KILL_RTT_MS = 1000.0

__all__ = [
    "DEFAULT_MAX_CLOCK_OFFSET_MS",
    "DEFAULT_MAX_KILL_RTT_MS",
    "DEFAULT_MIN_FREE_BYTES",
    "DEFAULT_NATS_TIMEOUT_S",
    "Check",
    "PreflightOptions",
    "Status",
    "check_auth_on",
    "check_bots",
    "check_broker_credentials",
    "check_bus",
    "check_clock_ntp",
    "check_disk",
    "check_kill_round_trip",
    "check_live_limits",
    "check_risk",
    "check_store",
    "failed",
    "format_table",
    "run_preflight",
]


@dataclass(frozen=True, slots=True)
class PreflightOptions:
    """Thresholds and extras of one run.

    Attributes:
        min_free_bytes: disk free below this at ``state_dir`` fails, bytes.
        nats_timeout_s: seconds to wait for NATS (connect, each request).
        max_clock_offset_ms: |clock offset| above this fails (vs NTP and vs NATS), ms.
        max_kill_rtt_ms: kill switch round trip above this fails, ms.
        broker_connect: connect to non-paper venues to validate credentials.
    """

    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES
    nats_timeout_s: float = DEFAULT_NATS_TIMEOUT_S
    max_clock_offset_ms: float = DEFAULT_MAX_CLOCK_OFFSET_MS
    max_kill_rtt_ms: float = DEFAULT_MAX_KILL_RTT_MS
    broker_connect: bool = True


async def run_preflight(cfg: AgentConfig, *, min_free_bytes: int | None = None,
                        nats_timeout_s: float | None = None,
                        options: PreflightOptions | None = None) -> list[Check]:
    """Run every check for the agent ``cfg``; one :class:`Check` per row, in table order.

    ``min_free_bytes`` / ``nats_timeout_s`` override the same fields of ``options``.
    """
    opts = options or PreflightOptions()
    free = opts.min_free_bytes if min_free_bytes is None else min_free_bytes
    timeout = opts.nats_timeout_s if nats_timeout_s is None else nats_timeout_s
    checks = [await check_bots(cfg), check_risk(cfg), check_live_limits(cfg),
              *await check_broker_credentials(cfg, connect=opts.broker_connect),
              await asyncio.to_thread(check_store, cfg.store_path),
              check_disk(Path(cfg.state_dir), free),
              await asyncio.to_thread(check_clock_ntp, opts.max_clock_offset_ms)]
    checks += await check_bus(cfg, timeout)
    reachable = any(c.name == "NATS reachable" and c.status == "ok" for c in checks)
    checks.append(await check_auth_on(cfg, timeout, reachable=reachable))
    checks += await check_kill_round_trip(
        cfg, timeout, reachable=reachable, max_rtt_ms=opts.max_kill_rtt_ms,
        max_offset_ms=opts.max_clock_offset_ms)
    return checks
