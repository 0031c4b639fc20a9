"""The demo fleet (``qtd up``: the sample bots on bundled real data through paper brokers)
trades, and surveillance finds nothing in what it leaves behind: neither ``qtd surveil`` on
the leader's fleet.db and each agent's store, nor the leader's own continuous run (no
``surveil:`` alert in fleet.db)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from qtd.events import Alert
from qtd.quality.event_files import read_events
from tests.shipped import DemoRun

pytestmark = pytest.mark.slow


def _qtd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qtd.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


async def test_demo_fleet_has_no_surveillance_findings(demo_up: DemoRun) -> None:
    # the session's shared demo run (tests/conftest.py): 2 agents, 40 bars/s
    state, up = demo_up
    assert up.returncode == 0, up.stderr[-2000:]
    fleet = state / "leader" / "fleet.db"
    dbs = (fleet, *sorted(state.glob("node-*/events.db")))
    *surveils, report = await asyncio.gather(  # they only read the stores: side by side
        *(asyncio.to_thread(_qtd, "surveil", "--db", str(db), "--json") for db in dbs),
        asyncio.to_thread(_qtd, "report", "execution", "--db", str(fleet), "--json"))
    assert len(surveils) == 3
    for res in surveils:
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        doc = json.loads(res.stdout)
        assert doc["findings"] == [] and doc["events"] > 0
    ex = json.loads(report.stdout)
    fills = sum(r["fills"] for r in ex["rows"])
    assert len(ex["rows"]) >= 3 and fills >= 5  # the fleet really traded
    keys = [ev.key async for batch in read_events(fleet) for ev in batch
            if isinstance(ev, Alert)]
    assert not [k for k in keys if k.startswith("surveil:")]
