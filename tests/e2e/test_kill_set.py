"""The kill state is a set: a narrower kill never replaces a wider one, and an agent that
starts applies every active kill (issue 21, finding 1).

Real processes on the shipped NATS config (auth on): a leader and agents node-a and node-b.
A fleet cap (symbol exposure, L4) trips on the first fills; node-b is stopped cleanly; the
operator kills the fleet (``qtd kill``, GLOBAL "global A"), then one bot of node-a
(STRATEGY "strategy B"). node-b starts again: it applies all three kills and sends no order.
The leader's ``/api/kill`` lists all three. A resume that does not say which kill is refused
and lists them; releasing the strategy kill leaves node-a GLOBAL HALTED; releasing the global
kill leaves the cap's symbol kill in force.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from qtd.control import NodeRequest
from qtd.control.transport import read_kills, request
from qtd.events import KillAck, OrderIntent
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


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _last_seq(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
        return int(con.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])


async def test_kills_accumulate_and_a_restarting_agent_applies_every_one(
        tmp_path: Path) -> None:
    async with shipped_nats(tmp_path / "nats", ("node-a", "node-b")) as nats:
        ops = await nats.connect("leader")  # the login `qtd kill` needs today
        login = ["--server", nats.url, "--creds", str(creds_for(nats.url, "leader"))]
        lcfg = leader_config(tmp_path, nats.url, caps={
            "symbol_exposure": {"limit": 1.0, "level": "L4"}})
        with processes() as procs:
            procs.append(qtd_process(["leader", "--config", str(lcfg)], tmp_path / "leader.log"))
            web = await leader_web_url(tmp_path / "leader.log")
            cfgs = {n: agent_config(tmp_path / n, n, nats.url, {f"bot-{n[-1]}": {}},
                                    market="speed = 864000.0")
                    for n in ("node-a", "node-b")}
            agents = {n: qtd_process(["agent", "--config", str(c)], tmp_path / f"{n}.log")
                      for n, c in cfgs.items()}
            procs.extend(agents.values())

            # The cap trips on the first fills: one SYMBOL kill in the set.
            async def cap_kill() -> bool:
                return any(k.cap for k in (await read_kills(ops)).kills)
            await wait_for(cap_kill, 60)
            (cap,) = (await read_kills(ops)).kills
            assert (cap.scope.value, cap.key) == ("SYMBOL", "GOOG")

            # node-b stops cleanly; the operator kills the fleet, then one bot.
            agents["node-b"].terminate()
            assert await asyncio.to_thread(agents["node-b"].wait, 30) == 0
            db_b = tmp_path / "node-b" / "state" / "events.db"
            before = _last_seq(db_b)
            out = run_qtd(["kill", *login, "--reason", "global A",
                           "--operator", "alice", "--wait", "0", "--json"])
            assert out.returncode == 0, out.stderr
            glob = json.loads(out.stdout.strip().splitlines()[-1])["kill_id"]
            out = run_qtd(["kill", *login, "--scope", "strategy", "--key", "bot-a",
                           "--reason", "strategy B", "--operator", "bob", "--wait", "0", "--json"])
            assert out.returncode == 0, out.stderr
            printed = json.loads(out.stdout.strip().splitlines()[-1])
            strat = printed["kill_id"]
            assert [k["kill_id"] for k in printed["active"]] == [cap.id, glob, strat]
            kills = (await read_kills(ops)).kills
            assert [k.id for k in kills] == [cap.id, glob, strat]

            # node-b starts again: every kill applied before any order.
            start = (tmp_path / "node-b.log").stat().st_size
            agents["node-b"] = qtd_process(["agent", "--config", str(cfgs["node-b"])],
                                           tmp_path / "node-b.log")
            procs.append(agents["node-b"])
            await log_match(tmp_path / "node-b.log", rb"agent node-b ready",
                            start=start)
            reply = await request(ops, "node-b", "status", NodeRequest(operator="t"))
            states = {(s["scope"], s["key"]): s["state"] for s in reply.data["states"]}
            assert states[("GLOBAL", "")] == "HALTED", states
            assert states[("STRATEGY", "bot-a")] == "HALTED", states
            assert states[("SYMBOL", "GOOG")] == "HALTED", states

            # The leader shows all three, and a resume must say which.
            async def listed() -> bool:
                ids = [k["kill_id"] for k in _get(f"{web}/api/kill")["kills"]]
                return ids == [cap.id, glob, strat]
            await wait_for(listed, 20)
            lead = str(lcfg)
            out = run_qtd(["resume", "--config", lead, "--operator", "carol",
                           "--reason", "which one?"])
            assert out.returncode != 0 and "3 kills are active" in out.stderr + out.stdout
            assert all(k in out.stderr + out.stdout for k in (cap.id, glob, strat))

            out = run_qtd(["resume", "--config", lead, "--operator", "carol",
                           "--reason", "bot fixed", "--kill-id", strat, "--json"])
            assert out.returncode == 0, out.stderr
            body = json.loads(out.stdout)
            assert body["released"] == [strat] and body["resumed"] is False
            assert [k["kill_id"] for k in body["still_active"]] == [cap.id, glob]
            reply = await request(ops, "node-a", "status", NodeRequest(operator="t"))
            assert reply.data["global"] == "HALTED"  # the global kill still holds node-a
            # An agent refuses to lift a scope the set still holds, whoever asks.
            refused = await request(ops, "node-a", "resume", NodeRequest(
                operator="mallory", reason="sneak"))
            assert not refused.ok and glob in refused.message

            out = run_qtd(["resume", "--config", lead, "--operator", "carol",
                           "--reason", "global clear", "--scope", "global"])
            assert out.returncode == 0, out.stderr
            said = out.stdout.splitlines()  # the human summary
            assert said[0] == f"released 1 kill(s): {glob}", said
            assert "agents asked to resume GLOBAL:" in said, said
            assert any(line.split()[:2] == ["node-a", "ok:"] for line in said), said
            assert "still active (1): trading stays halted there" in said, said
            assert any(line.split()[:2] == [cap.id, "SYMBOL:GOOG"] for line in said), said
            for node in ("node-a", "node-b"):
                reply = await request(ops, node, "status", NodeRequest(operator="t"))
                states = {(s["scope"], s["key"]): s["state"] for s in reply.data["states"]}
                assert reply.data["global"] == "ACTIVE", (node, reply.data)
                assert states[("SYMBOL", "GOOG")] == "HALTED", (node, states)
            assert [k.id for k in (await read_kills(ops)).kills] == [cap.id]
            # Removed from the set by hand: the leader's view follows the set.
            out = run_qtd(["kill", *login, "--release", "--kill-id", cap.id])
            assert out.returncode == 0 and f"removed kill {cap.id}" in out.stdout, out

            async def cleared() -> bool:
                return _get(f"{web}/api/kill")["kills"] == []
            await wait_for(cleared, 20)
        # node-b, restarted into three kills, never sent an order.
        after = [e for e in await store_events(db_b) if e.seq > before]
        assert after, "node-b stored nothing after its restart"
        assert not [e for e in after if isinstance(e, OrderIntent)]
        acked = {e.kill_id for e in after if isinstance(e, KillAck)}
        assert {cap.id, glob, strat} <= acked
