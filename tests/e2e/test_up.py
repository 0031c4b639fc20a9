"""End to end: ``qtd up`` as a user runs it, judged from the stores it leaves behind.

Two runs on one state directory (the second resumes the first). The first is stopped with
Ctrl-C (SIGINT) once every agent's store holds fills, the E-mini tick bot's included (a
three-minute guard only stops a hang); the second runs for ``--duration``. After each:
every agent traded; a clean stop leaves no event unpublished (the agent stops market data
before its final outbox flush); the leader's fleet.db holds exactly the events JetStream
acknowledged to the agents (their outbox watermark), each once, keyed by (node,
incarnation, seq); the leader's final fills and PnL per bot and in total equal those rebuilt
from each agent's own store; no nats-server, leader or agent of this state directory runs.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

import pytest

from qtd.events import AnyEvent, Fill
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


ARGV = [sys.executable, "-m", "qtd.cli", "up", "--agents", "2", "--speed", "40",
        "--stop-timeout", "10"]


def _up(state: Path, duration: float) -> subprocess.CompletedProcess[str]:
    argv = [*ARGV, "--duration", str(duration), "--state-dir", str(state)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)


def _fills_so_far(state: Path) -> dict[str, int]:
    """bot -> fills in the agents' stores right now (read-only; the agents keep writing)."""
    counts: dict[str, int] = {}
    for node in NODES:
        db = state / node / "events.db"
        if not db.exists():
            continue
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute("SELECT bot, count(*) FROM events WHERE kind = 'Fill' "
                                "GROUP BY bot").fetchall()
        except sqlite3.OperationalError:  # schema not created yet
            rows = []
        finally:
            conn.close()
        counts[node] = sum(n for _, n in rows)
        counts.update({str(bot): int(n) for bot, n in rows})
    return counts


def _up_until_traded(state: Path, bot: str) -> subprocess.CompletedProcess[str]:
    """``qtd up`` until both agents and ``bot`` have fills, then Ctrl-C (SIGINT)."""
    argv = [*ARGV, "--state-dir", str(state)]
    out, err = state.parent / "up.out", state.parent / "up.err"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(argv, stdout=fo, stderr=fe, text=True)
        guard = time.monotonic() + 180  # a hang guard, not a speed limit
        while proc.poll() is None and time.monotonic() < guard:
            fills = _fills_so_far(state)
            if all(fills.get(n, 0) for n in (*NODES, bot)):
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    return subprocess.CompletedProcess(argv, proc.returncode, out.read_text(), err.read_text())


class Agent(NamedTuple):
    """What one agent's store holds, split at its outbox watermark: JetStream acknowledged
    every event up to it; later ones are kept in the store and sent at the next start."""

    acked: set[Origin]
    unacked: set[Origin]
    fills: Counter[str]  # every fill in the store, by bot
    acked_fills: Counter[str]
    acked_realized: dict[str, Decimal]
    incarnation: str


async def _agent(db: Path) -> Agent:
    store = await EventStore.open(db, readonly=True)
    try:
        wm = await store.watermark("jetstream")
        acked: set[Origin] = set()
        unacked: set[Origin] = set()
        fills: Counter[str] = Counter()
        acked_fills: Counter[str] = Counter()
        async for ev in store.replay():
            origin = (ev.node, store.incarnation, ev.seq)
            (acked if ev.seq <= wm else unacked).add(origin)
            if type(ev) is Fill:
                fills[ev.bot] += 1
                acked_fills[ev.bot] += ev.seq <= wm

        async def acked_batches() -> AsyncIterator[list[AnyEvent]]:
            async for batch in store.replay_batches():
                yield [ev for ev in batch if ev.seq <= wm]

        proj = await Projections().rebuild(acked_batches())
        realized: dict[str, Decimal] = {}
        for pos in proj.positions.values():
            realized[pos.bot] = realized.get(pos.bot, Decimal(0)) + pos.net_realized
        return Agent(acked, unacked, fills, acked_fills, realized, store.incarnation)
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


def _check_run(state: Path, run: subprocess.CompletedProcess[str]) -> dict[str, Agent]:
    """The run's exit, its processes gone, and the leader's record against the stores: every
    event JetStream acknowledged is at the leader exactly once (and nothing else is), and the
    leader's fills and realized PnL per bot and in total equal those rebuilt from the
    acknowledged part of each agent's own store. Events an agent stored after its final
    flush (it logs how many) stay in its store until its next start."""
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "stopped: node-1 exit 0, node-2 exit 0, leader exit 0" in run.stdout
    assert _running_from(state) == [] and not (state / "pids.json").exists()
    agents = {n: asyncio.run(_agent(state / n / "events.db")) for n in NODES}
    for node, a in agents.items():
        assert sum(a.fills.values()) > 0, f"{node} did not trade"
        # A clean stop stops market data before the final flush: nothing is left behind, so
        # the leader's record equals each agent's whole store.
        assert not a.unacked, f"{node}: {len(a.unacked)} events left unpublished at stop"
    at_leader = _leader_origins(state / "leader" / "fleet.db")
    assert len(at_leader) == len(set(at_leader)), "an event reached the leader twice"
    assert set(at_leader) == set().union(*(a.acked for a in agents.values()))
    snap = json.loads((state / "leader" / "snapshot.json").read_text())
    bots = {(b["node"], b["bot"]): b["agg"] for b in snap["bots"]}
    total = Decimal(0)
    for node, a in agents.items():
        for bot, pnl in a.acked_realized.items():
            assert bots[(node, bot)]["realized"] == pytest.approx(float(pnl), abs=1e-6)
            assert bots[(node, bot)]["fills"] == a.acked_fills[bot]
            total += pnl
    assert snap["totals"]["realized"] == pytest.approx(float(total), abs=1e-6)
    assert snap["totals"]["fills"] == sum(sum(a.acked_fills.values()) for a in agents.values())
    return agents


def _fills_by_bot(agents: dict[str, Agent]) -> Counter[str]:
    total: Counter[str] = Counter()
    for a in agents.values():
        total += a.fills
    return total


def test_up_trades_reaches_the_leader_once_and_resumes(state: Path) -> None:
    first = _check_run(state, _up_until_traded(state, "tick-es"))
    # The E-mini tick bot builds its short bars from replayed ticks and traded too.
    assert _fills_by_bot(first)["tick-es"] > 0
    events_first = len(_leader_origins(state / "leader" / "fleet.db"))
    second = _check_run(state, _up(state, 6))
    assert {n: a.incarnation for n, a in second.items()} == {
        n: a.incarnation for n, a in first.items()
    }, "the second run must reopen the same stores, not start blind"
    assert len(_leader_origins(state / "leader" / "fleet.db")) > events_first
    # What the first run left unacknowledged in a store was sent when the agent came back.
    for node, a in first.items():
        assert a.unacked <= second[node].acked, f"{node}: kept events not re-sent"
