"""Resume that cannot be silently undone (issue 22, item 4): operator stories on real
processes with the shipped configs (NATS auth on).

A leader and agents node-a and node-b, each holding 10 or 11 GOOG (1,000 USD and more). The fleet's
gross-exposure cap is 500 USD at L1: it kills the fleet on the first fills.

(a) The operator (the ``operator`` login) runs ``qtd resume`` while the cap is still
    breached: refused, naming the cap, its value, its limit and what to do; nothing is
    released (the kill stays in the set, every agent stays HALTED).
(b) The operator raises the cap for the rest of the trading day (``qtd caps raise``, audited
    in fleet.db) and resumes: the resume holds — the leader measures the cap again and again
    and trips nothing, every agent is ACTIVE — and still holds after a leader restart (the
    override is rebuilt from fleet.db; without it the restarted leader would trip at once).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import textwrap
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from nats.aio.client import Client

from qtd.control import NodeRequest
from qtd.control.transport import read_kills, request
from qtd.events import CapOverride, decode
from tests.agent_rig import wait_for
from tests.shipped import (
    agent_config,
    creds_for,
    leader_config,
    leader_web_url,
    log_match,
    processes,
    qtd_process,
    run_qtd,
    shipped_nats,
)

pytestmark = pytest.mark.slow
NODES = ("node-a", "node-b")
HOLDER = '''
    from qtd.strategy import Strategy

    class Holder(Strategy):
        """Holds qty from the first bar on, one more every other 5 bars (new fills: the
        leader's exposure marks move)."""

        class Params(Strategy.Params):
            qty: float = 10.0

        def on_start(self):
            self.n = 0

        def on_bar(self, bar):
            self.n += 1
            self.target_position(self.params.qty + (self.n // 5) % 2)
'''


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _operator_config(tmp: Path, url: str) -> Path:
    """A leader config whose [bus] logs in as the shipped ``operator`` login (what `qtd
    resume` and `qtd caps` read their connection from)."""
    path = leader_config(tmp / "operator", url)
    doc = tomllib.loads(path.read_text())
    doc["bus"].update(creds_file=str(creds_for(url, "operator")), name="qtd-operator")
    path.write_text(tomli_w.dumps(doc))
    return path


async def _qtd(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_qtd, list(args))


async def _states(ops: Client) -> dict[str, str]:
    out = {}
    for node in NODES:
        reply = await request(ops, node, "status", NodeRequest(operator="test"))
        out[node] = reply.data["global"]
    return out


async def _cap_measured_twice(web: str) -> dict[str, Any]:
    """Wait until the leader measured the gross-exposure cap on two new marks (its value
    changed twice), then return it: the caps ran on the current fleet after that point."""
    seen: list[float] = []

    def cap() -> dict[str, Any]:
        caps = _get(f"{web}/api/snapshot")["caps"]
        return next(c for c in caps if c["name"] == "gross_exposure")

    async def moved() -> bool:
        value = (await asyncio.to_thread(cap))["value"]
        if not seen or seen[-1] != value:
            seen.append(value)
        return len(seen) >= 3
    await wait_for(moved, 60, 0.2)
    return await asyncio.to_thread(cap)


async def test_resume_is_refused_while_the_cap_holds_and_holds_once_it_is_raised(
        tmp_path: Path) -> None:
    async with shipped_nats(tmp_path / "nats", NODES) as nats:
        ops = await nats.connect("leader")
        lcfg = leader_config(tmp_path, nats.url, caps={
            "gross_exposure": {"limit": 500.0, "level": "L1"}})
        opcfg = str(_operator_config(tmp_path, nats.url))
        with processes() as procs:
            leader = qtd_process(["leader", "--config", str(lcfg)], tmp_path / "leader.log")
            procs.append(leader)
            web = await leader_web_url(tmp_path / "leader.log")
            for n in NODES:
                cfg = agent_config(tmp_path / n, n, nats.url, {f"hold-{n[-1]}": {
                    "_strategy": "holder"}}, market="speed = 864000.0")
                (tmp_path / n / "strategies" / "holder.py").write_text(
                    textwrap.dedent(HOLDER))
                procs.append(qtd_process(["agent", "--config", str(cfg)],
                                         tmp_path / f"{n}.log"))

            async def cap_kill() -> bool:
                return any(k.cap for k in (await read_kills(ops)).kills)
            await wait_for(cap_kill, 90)
            (kill,) = (await read_kills(ops)).kills
            assert (kill.scope.value, kill.cap) == ("GLOBAL", "gross_exposure")

            async def halted() -> bool:
                return set((await _states(ops)).values()) == {"HALTED"}
            await wait_for(halted, 30)

            # (a) Resume while the cap is breached: refused with the reason, nothing resumed.
            out = await _qtd("resume", "--config", opcfg, "--operator", "carol",
                             "--reason", "back to work")
            said = out.stdout + out.stderr
            assert out.returncode != 0, said
            assert "nothing released" in said and kill.id in said
            assert "fleet cap gross_exposure is still breached" in said
            assert "against limit 500.00 USD" in said
            assert "qtd caps raise gross_exposure --limit L" in said
            assert "Traceback" not in said
            assert [k.id for k in (await read_kills(ops)).kills] == [kill.id]
            assert await _states(ops) == {n: "HALTED" for n in NODES}
            assert [k["kill_id"] for k in _get(f"{web}/api/kill")["kills"]] == [kill.id]

            # (b) Raise the cap for the trading day (audited), then resume: it holds.
            out = await _qtd("caps", "raise", "gross_exposure", "--limit", "1000000",
                             "--operator", "carol", "--reason", "the GOOG holding is intended",
                             "--config", opcfg)
            assert out.returncode == 0, out.stdout + out.stderr
            assert "raised gross_exposure" in out.stdout
            assert "500.00 -> 1,000,000.00 USD by carol: the GOOG holding is intended" \
                in out.stdout
            out = await _qtd("resume", "--config", opcfg, "--operator", "carol",
                             "--reason", "cap raised for today", "--json")
            assert out.returncode == 0, out.stdout + out.stderr
            body = json.loads(out.stdout)
            assert body["resumed"] is True and body["released"] == [kill.id]
            cap = await _cap_measured_twice(web)
            assert cap["value"] > 500.0 and cap["limit"] == 1_000_000.0
            assert not cap["tripped"] and cap["override"]["operator"] == "carol"
            assert cap["override"]["configured_limit"] == 500.0
            assert (await read_kills(ops)).kills == ()
            assert await _states(ops) == {n: "ACTIVE" for n in NODES}
            listed = await _qtd("caps", "--config", opcfg)
            assert listed.returncode == 0 and "raised from 500.00" in listed.stdout, listed

            # A leader restart rebuilds the override from fleet.db: still no trip.
            leader.terminate()
            assert await asyncio.to_thread(leader.wait, 30) == 0
            start = (tmp_path / "leader.log").stat().st_size
            procs.append(qtd_process(["leader", "--config", str(lcfg)],
                                     tmp_path / "leader.log"))
            m = await log_match(tmp_path / "leader.log", rb"leader\.web url=(http://[^\s\"]+)",
                                start=start)
            web = m.group(1).decode().rstrip("/")
            cap = await _cap_measured_twice(web)
            assert cap["limit"] == 1_000_000.0 and not cap["tripped"]
            assert (await read_kills(ops)).kills == ()
            assert await _states(ops) == {n: "ACTIVE" for n in NODES}

    with sqlite3.connect(f"file:{tmp_path / 'leader' / 'fleet.db'}?mode=ro", uri=True) as con:
        rows = con.execute("SELECT node, payload FROM events WHERE kind = 'CapOverride'"
                           ).fetchall()
    [(node, payload)] = rows
    ev = decode(payload)
    assert isinstance(ev, CapOverride) and node == "leader"
    assert (ev.cap, ev.old_limit, ev.new_limit, ev.operator, ev.reason) == (
        "gross_exposure", 500.0, 1_000_000.0, "carol", "the GOOG holding is intended")
