"""Chaos: the leader process is SIGKILLed mid-stream and started again.

A real ``qtd leader`` process consumes a real agent trading paper bots. The leader is killed
with SIGKILL (no drain, no final ack): the agent must apply its fail-safe policy (REDUCING)
once the leader's heartbeat has been missing for ``leader_timeout_s``, keep trading within
it, and go back to ACTIVE once a restarted leader heartbeats again (no kill set). The
restarted leader resumes its durable consumer: every event of the agent's store is in
fleet.db exactly once, and each bot's realized PnL and fill count at the leader equal the
agent's own store (no double counting).

Prints the measured leader-loss detection time (kill → REDUCING stored by the agent).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from qtd.bus import EmbeddedNatsServer
from qtd.events import Fill, Scope, TradingState, TradingStateChanged
from qtd.projections import Projections
from qtd.store import EventStore
from tests.agent_rig import (
    running_agent,
    stop_process,
    store_events,
    synthetic_bars,
    wait_for,
    write_fleet,
)

ETC = Path(__file__).resolve().parents[2] / "etc"
LEADER_TIMEOUT_S = 1.0


def _leader_config(tmp: Path, nats_url: str) -> Path:
    doc: dict[str, Any] = tomllib.loads((ETC / "leader.toml").read_text())
    doc["fleet_db"] = str(tmp / "leader" / "fleet.db")
    doc["bus"] = {"servers": [nats_url], "name": "qtd-leader"}
    doc.pop("caps", None)  # this test is about leader loss, not cap trips
    doc["notify"].pop("destinations", None)
    doc["notify"].pop("quiet_hours", None)
    doc["liveness"]["heartbeat_interval_s"] = 0.2
    path = tmp / "leader.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


def _start_leader(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "qtd.cli", "leader", "--config",
                                 str(cfg)], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def _web_url(log: Path, start: int) -> str:
    async def found() -> str | None:
        m = re.search(rb"leader\.web url=(http://\S+)", log.read_bytes()[start:])
        return m.group(1).decode() if m else None
    await wait_for(found, 60)
    url = await found()
    assert url is not None
    return url.rstrip("/")


def _fleet_count(db: Path, node: str = "node-a") -> int:
    """The agent's events in fleet.db (the leader also stores its own, e.g. alerts)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
        return int(con.execute("SELECT count(*) FROM events WHERE node = ?", (node,))
                   .fetchone()[0])


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
async def test_leader_killed_agents_fail_safe_and_restart_double_counts_nothing(
        tmp_path: Path) -> None:
    nats = EmbeddedNatsServer(tmp_path / "nats")
    await nats.start()
    log = tmp_path / "leader.log"
    cfg_path = _leader_config(tmp_path, nats.url)
    leader = _start_leader(cfg_path, log)
    try:
        await _web_url(log, 0)
        agent_cfg = write_fleet(tmp_path / "fleet", {"b1": {}, "b2": {"qty": 3.0}},
                                bus_url=nats.url, market="speed = 3000.0")
        agent_cfg.write_text(agent_cfg.read_text().replace(
            'failsafe = "NONE"', f'failsafe = "REDUCING"\nleader_timeout_s = {LEADER_TIMEOUT_S}'))
        # 400 bars at 20 ms: an 8 s feed; the leader is back (ACTIVE) ~3 s into it, so the
        # restarted leader consumes ~5 s of live trading before the feed ends
        async with running_agent(agent_cfg, items={"goog_1d": synthetic_bars(400)}) as agent:
            def global_state() -> TradingState:
                return agent.risk.states.get(Scope.GLOBAL)

            await wait_for(lambda: agent.store.last_seq > 100, 30)
            await wait_for(lambda: global_state() is TradingState.ACTIVE, 10)
            leader.send_signal(signal.SIGKILL)
            leader.wait(timeout=10)
            killed_ns, killed = time.time_ns(), time.monotonic()
            await wait_for(lambda: global_state() is TradingState.REDUCING, 30)
            detected_s = time.monotonic() - killed
            during_from = agent.store.last_seq
            await asyncio.sleep(0.5)
            assert agent.store.last_seq > during_from, "the agent stopped while REDUCING"

            start = log.stat().st_size
            leader = _start_leader(cfg_path, log)
            url = await _web_url(log, start)
            await wait_for(lambda: global_state() is TradingState.ACTIVE, 30)
            feed = next(iter(agent.feeds.values()))
            await wait_for(feed.done.is_set, 120)
            await wait_for(lambda: _drained(agent.store), 30)
        db_path = tmp_path / "fleet" / "state" / "events.db"
        stored_count = len(await store_events(db_path))
        await wait_for(lambda: _fleet_count(tmp_path / "leader" / "fleet.db") >= stored_count,
                       60)
        await asyncio.sleep(0.3)
        assert _fleet_count(tmp_path / "leader" / "fleet.db") == stored_count
        bots = {b["bot"]: b for b in _get_json(f"{url}/api/bots")}
    finally:
        stop_process(leader)
        await nats.stop()

    stored = await store_events(db_path)
    changes = [e for e in stored if isinstance(e, TradingStateChanged)
               and e.scope is Scope.GLOBAL and e.ts_event >= killed_ns]
    assert [c.new for c in changes][:2] == [TradingState.REDUCING, TradingState.ACTIVE]
    store = await EventStore.open(db_path, readonly=True)
    try:
        proj = await Projections().rebuild(store.replay_batches())
    finally:
        await store.close()
    for bot in ("b1", "b2"):
        fills = sum(1 for e in stored if isinstance(e, Fill) and e.bot == bot)
        realized = sum((p.net_realized for p in proj.positions.values() if p.bot == bot),
                       Decimal(0))
        assert bots[bot]["agg"]["fills"] == fills > 0
        assert abs(bots[bot]["agg"]["realized"] - float(realized)) < 1e-6
    print(f"\nleader loss: SIGKILL -> agent REDUCING in {detected_s * 1000:.0f} ms "
          f"(leader_timeout_s = {LEADER_TIMEOUT_S})")


async def _drained(store: EventStore) -> bool:
    return await store.watermark() == store.last_seq
