"""The operator pulls the kill switch (issue 22, operator stories), on real processes with the
shipped configs: ``etc/nats-server.conf`` with auth on, ``etc/leader.toml``, agents logged in
as ``agent-<node>``, and ``qtd kill`` logged in as ``operator``.

- The operator kills the fleet: every agent is HALTED and the command says ``2 of 2``.
- One agent is SIGSTOPped: the kill exits 3 naming it with its last heartbeat age, the leader
  pages P1 (``kill:unacked``), and once SIGCONTed the agent is HALTED.
- NATS is down: ``qtd kill --local --config <node's agent.toml>`` halts that node (its own
  kill file), and only that node.
- No leader: the kill counts the agents whose heartbeats it hears.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from qtd.bus import ensure_jetstream
from qtd.control import NodeRequest
from qtd.control.transport import request
from qtd.events import Scope, TradingState, TradingStateChanged
from tests.agent_rig import store_events, wait_for
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


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _as_operator(url: str) -> list[str]:
    return ["--server", url, "--creds", str(creds_for(url, "operator"))]


async def _global_state(nc: Client, node: str) -> str:
    reply = await request(nc, node, "status", NodeRequest(operator="test"), timeout_s=5)
    return str(reply.data["global"])


async def test_operator_kills_the_fleet_and_is_told_who_did_not_acknowledge(
        tmp_path: Path) -> None:
    async with shipped_nats(tmp_path / "nats", NODES) as nats:
        ops = await nats.connect("leader")  # the test reads agent states as the leader
        lcfg = leader_config(tmp_path, nats.url)
        with processes() as procs:
            procs.append(qtd_process(["leader", "--config", str(lcfg)], tmp_path / "leader.log"))
            web = await leader_web_url(tmp_path / "leader.log")
            agents = {n: qtd_process(
                ["agent", "--config", str(agent_config(tmp_path / n, n, nats.url,
                                                       {f"bot-{n[-1]}": {}}))],
                tmp_path / f"{n}.log") for n in NODES}
            procs.extend(agents.values())
            for n in NODES:
                await log_match(tmp_path / f"{n}.log", rf"agent {n} ready".encode())

            async def both_alive() -> bool:
                return sorted(x["node"] for x in _get(f"{web}/api/nodes") if x["alive"]) \
                    == list(NODES)
            await wait_for(both_alive, 30)

            # (a) The fleet: both acknowledge, the command says so and returns.
            out = run_qtd(["kill", *_as_operator(nats.url), "--reason", "drill",
                           "--operator", "alice"])
            assert out.returncode == 0, out.stdout + out.stderr
            assert "2 of 2 agents acknowledged in" in out.stdout, out.stdout
            assert "durable on 2 of 2 in" in out.stdout, out.stdout
            for n in NODES:  # both acks of each real agent, in force first
                assert re.search(rf"{n}\s+HALTED\s+in force after \d+\.\d ms, durable after "
                                 r"\d+\.\d ms", out.stdout), out.stdout
            assert "GLOBAL" in out.stdout and "Traceback" not in out.stderr
            for n in NODES:
                assert await _global_state(ops, n) == "HALTED"
            out = run_qtd(["resume", "--config", str(lcfg), "--operator", "alice",
                           "--reason", "drill over", "--all"])
            assert out.returncode == 0, out.stdout + out.stderr
            for n in NODES:
                assert await _global_state(ops, n) == "ACTIVE"

            # (b) node-b frozen: exit 3 naming it with its heartbeat age; P1; then HALTED.
            os.kill(agents["node-b"].pid, signal.SIGSTOP)
            try:
                out = run_qtd(["kill", *_as_operator(nats.url), "--reason",
                               "frozen agent", "--operator", "alice", "--wait", "3"])
                assert out.returncode == 3, out.stdout + out.stderr
                assert "1 of 2 agents acknowledged" in out.stdout, out.stdout
                assert re.search(r"node-b\s+last heartbeat \d+\.\d s ago", out.stdout), \
                    out.stdout
                kill_id = re.search(r"kill ([0-9a-f]{16}):", out.stdout)
                assert kill_id is not None, out.stdout
                assert await _global_state(ops, "node-a") == "HALTED"

                async def paged() -> bool:
                    return any(a["key"] == "kill:unacked" and a["severity"] == "P1"
                               for a in _get(f"{web}/api/alerts"))
                await wait_for(paged, 20)
            finally:
                os.kill(agents["node-b"].pid, signal.SIGCONT)

            async def b_halted() -> bool:
                return await _global_state(ops, "node-b") == "HALTED"
            await wait_for(b_halted, 30)
            await log_match(tmp_path / "node-b.log", f"kill {kill_id.group(1)} applied".encode())


async def test_kill_local_halts_its_node_with_nats_down(tmp_path: Path) -> None:
    async with shipped_nats(tmp_path / "nats", NODES) as nats:
        cfgs = {n: agent_config(tmp_path / n, n, nats.url, {f"bot-{n[-1]}": {}}) for n in NODES}
        for c in cfgs.values():  # no leader made the stream: don't wait 5 s for it at start
            c.write_text(c.read_text().replace("bus_wait_s = 5.0", "bus_wait_s = 0.5"))
        with processes() as procs:
            procs.extend(qtd_process(["agent", "--config", str(c)], tmp_path / f"{n}.log")
                         for n, c in cfgs.items())
            for n in NODES:
                await log_match(tmp_path / f"{n}.log", rf"agent {n} ready".encode())
            nats.proc.terminate()  # NATS down
            assert await asyncio.to_thread(nats.proc.wait, 30) is not None

            out = run_qtd(["kill", "--local", "--config", str(cfgs["node-a"]), "--reason",
                           "nats down", "--operator", "alice"])
            assert out.returncode == 0, out.stdout + out.stderr
            assert f"node-a: wrote kill file {tmp_path / 'node-a' / 'kill'}" in out.stdout
            await log_match(tmp_path / "node-a.log", rb"kill file applied: GLOBAL:")
        # Stopped (NATS still down): node-a halted by the file, node-b never.
        halted = {}
        for n in NODES:
            events = await store_events(tmp_path / n / "state" / "events.db")
            halted[n] = [e for e in events if isinstance(e, TradingStateChanged)
                         and e.scope is Scope.GLOBAL and e.new is TradingState.HALTED]
        assert [(e.reason, e.operator) for e in halted["node-a"]] == [
        ("kill switch: nats down", "alice")], halted
        assert halted["node-b"] == [], halted


async def test_without_a_leader_the_kill_counts_the_agents_it_hears(tmp_path: Path) -> None:
    async with shipped_nats(tmp_path / "nats", NODES) as nats:
        await ensure_jetstream((await nats.connect("leader")).jetstream())  # bucket only
        with processes() as procs:
            procs.extend(qtd_process(
                ["agent", "--config", str(agent_config(tmp_path / n, n, nats.url,
                                                       {f"bot-{n[-1]}": {}}))],
                tmp_path / f"{n}.log") for n in NODES)
            for n in NODES:
                await log_match(tmp_path / f"{n}.log", rf"agent {n} ready".encode())
            out = run_qtd(["kill", *_as_operator(nats.url), "--reason", "no leader",
                           "--operator", "alice", "--json"])
            assert out.returncode == 0, out.stdout + out.stderr
            body = json.loads(out.stdout)
            assert (body["roster"], body["acknowledged"], body["agents"]) == (
                "heartbeats", 2, 2), body
            assert sorted(a["node"] for a in body["acks"]) == list(NODES)
            assert {a["state"] for a in body["acks"]} == {"HALTED"}
            assert body["not_durable"] == [] and all(
                a["durable_ms"] >= a["after_ms"] > 0 for a in body["acks"]), body
