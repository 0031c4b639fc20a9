"""End to end: ``qtd up`` as a user runs it, judged from the stores it leaves behind.

Two runs on one state directory (the second resumes the first). After each: every agent
traded; the leader's fleet.db holds exactly the agents' stored events, each once, keyed by
(node, incarnation, seq); the leader's final PnL per bot and in total equals the PnL rebuilt
from each agent's own store; no nats-server, leader or agent of this state directory runs.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from qtd.events import Fill
from qtd.projections import Projections
from qtd.store import EventStore
from qtd.up.procs import cmdline, stop_leftovers

pytestmark = pytest.mark.slow
NODES = ("node-1", "node-2")
Origin = tuple[str, str, int]


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    yield state
    # A failed run may leave children behind (their pids are in pids.json): stop them.
    asyncio.run(stop_leftovers(state / "pids.json", str(state), timeout_s=5.0))


def _up(state: Path, duration: float) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "qtd.cli", "up", "--duration", str(duration),
            "--state-dir", str(state), "--agents", "2", "--speed", "40", "--stop-timeout", "10"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)


async def _agent(db: Path) -> tuple[set[Origin], Counter[str], dict[str, Decimal], str]:
    store = await EventStore.open(db, readonly=True)
    try:
        origins: set[Origin] = set()
        fills: Counter[str] = Counter()
        async for ev in store.replay():
            origins.add((ev.node, store.incarnation, ev.seq))
            if type(ev) is Fill:
                fills[ev.bot] += 1
        proj = await Projections().rebuild(store.replay_batches())
        realized: dict[str, Decimal] = {}
        for pos in proj.positions.values():
            realized[pos.bot] = realized.get(pos.bot, Decimal(0)) + pos.net_realized
        return origins, fills, realized, store.incarnation
    finally:
        await store.close()


def _leader_origins(fleet_db: Path) -> list[Origin]:
    conn = sqlite3.connect(f"file:{fleet_db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT node, incarnation, seq FROM events WHERE node != 'leader'")
        return [(str(n), str(i), int(s)) for n, i, s in rows]
    finally:
        conn.close()


def _running_from(state: Path) -> list[str]:
    mine = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and str(state) in cmdline(int(proc.name)):
            mine.append(f"{proc.name}: {cmdline(int(proc.name))}")
    return mine


def _check_run(state: Path, run: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "stopped: node-1 exit 0, node-2 exit 0, leader exit 0" in run.stdout
    assert _running_from(state) == [] and not (state / "pids.json").exists()
    agents = {n: asyncio.run(_agent(state / n / "events.db")) for n in NODES}
    for node, (_, fills, _, _) in agents.items():
        assert sum(fills.values()) > 0, f"{node} did not trade"
    at_leader = _leader_origins(state / "leader" / "fleet.db")
    assert len(at_leader) == len(set(at_leader)), "an event reached the leader twice"
    assert set(at_leader) == set().union(*(a[0] for a in agents.values()))
    snap = json.loads((state / "leader" / "snapshot.json").read_text())
    bots = {(b["node"], b["bot"]): b["agg"] for b in snap["bots"]}
    total = Decimal(0)
    for node, (_, fills, realized, _) in agents.items():
        for bot, pnl in realized.items():
            assert bots[(node, bot)]["realized"] == pytest.approx(float(pnl), abs=1e-6)
            assert bots[(node, bot)]["fills"] == fills[bot]
            total += pnl
    assert snap["totals"]["realized"] == pytest.approx(float(total), abs=1e-6)
    assert snap["totals"]["fills"] == sum(sum(a[1].values()) for a in agents.values())
    return {node: a[3] for node, a in agents.items()}


def test_up_trades_reaches_the_leader_once_and_resumes(state: Path) -> None:
    first = _check_run(state, _up(state, 10))
    events_first = len(_leader_origins(state / "leader" / "fleet.db"))
    second = _check_run(state, _up(state, 6))
    assert second == first, "the second run must reopen the same stores, not start blind"
    assert len(_leader_origins(state / "leader" / "fleet.db")) > events_first
