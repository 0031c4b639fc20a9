"""The permission matrix: every operator command x every shipped NATS user, on a real
nats-server running the SHIPPED etc/nats-server.conf (auth on), a real ``qtd leader`` and a
real ``qtd agent``, each command run as an operator types it (``python -m qtd.cli ...``,
``--server URL --creds FILE``).

Each cell is *allowed* (the command did its work) or *refused* with exactly one line that
names the user and the refused permission (exit 2, no traceback). The allowed users of each
command must be exactly those :data:`qtd.commands.fleet.LOGINS` (and the README) name. The
store commands (events, positions, report, surveil) read files and need no NATS login.

The matrix is printed (``pytest -s``) and written to ``<tmp>/matrix.txt`` (and to
``$QTD_MATRIX_FILE`` when set).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from qtd.bus import ensure_jetstream
from qtd.bus.jetstream import ensure_deploy_kv
from qtd.commands.fleet import LOGINS
from qtd.control import new_kill
from qtd.control.transport import send_kill
from qtd.events import Heartbeat, to_json
from tests.agent_rig import wait_for, write_fleet
from tests.shipped import (
    ShippedNats,
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

USERS = ("agent-node-a", "leader", "operator", "deployer")
NATS_COMMANDS = ("kill", "resume", "alerts", "ack", "versions", "history", "deploy",
                 "rollback")
STORE_COMMANDS = ("events", "positions", "report", "surveil")
# Commands whose cells may all run side by side: reads, writes that commute (kills add to a
# set; acknowledging an alert twice is acknowledging it) and rollback (only the deployer
# may, the others are refused before anything is published; the setup left two versions
# to go back to). resume needs a kill of its own to release, deploy a change of its own (a
# deploy that changes nothing publishes nothing, so it would not be refused): their users
# run in turn, after these.
SIDE_BY_SIDE = ("kill", "alerts", "ack", "versions", "history", "rollback")
IN_TURN = ("resume", "deploy")
PARALLEL = 8  # qtd processes at a time
OK_CODES = {"kill": (0, 3), "versions": (0, 3)}  # 3: agents missing / versions behind


@dataclass
class Cell:
    allowed: bool
    code: int
    line: str


def _login(url: str, user: str) -> tuple[list[str], dict[str, str]]:
    return ["--server", url, "--creds", str(creds_for(url, user))], {}


def _argv(command: str, user: str, repo: Path, alert_id: str) -> list[str]:
    if command == "kill":
        return ["kill", "--reason", f"matrix {user}", "--operator", "m", "--wait", "10",
                "--expect", "1"]
    if command == "resume":
        return ["resume", "--operator", "m", "--reason", "matrix", "--all"]
    if command == "alerts":
        return ["alerts", "--json"]
    if command == "ack":
        return ["ack", alert_id, "--operator", "m"]
    if command == "versions":
        return ["versions"]
    if command == "history":
        return ["history", "b1"]
    if command == "deploy":
        return ["deploy", str(repo), "--no-smoke", "-m", f"matrix {user}"]
    return ["rollback", "b1", "--no-smoke", "-m", f"matrix {user}"]


def _cell(command: str, user: str, res: object) -> Cell:
    code, out, err = res.returncode, res.stdout, res.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in out + err, f"{command} as {user}: traceback\n{out}\n{err}"
    if code in OK_CODES.get(command, (0,)):
        return Cell(True, code, out.strip().splitlines()[-1] if out.strip() else "")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, f"{command} as {user}: exit {code}\n{out}\n{err}"
    assert f"NATS login {user} may not " in lines[0], lines[0]
    return Cell(False, code, lines[0])


async def _alert_id(server: ShippedNats, web: str) -> str:
    """The leader's open alert for node-b's missing heartbeat: one heartbeat, then none
    (read from the status page's API: the matrix runs ``qtd alerts`` itself)."""
    node_b = await server.connect("agent-node-b")
    now = time.time_ns()
    await node_b.publish("qtd.hb.node-b", to_json(Heartbeat(node="node-b", ts_event=now,
                                                            ts_init=now, role="agent")))
    await node_b.flush()
    found: list[str] = []

    def opened() -> bool:
        with urllib.request.urlopen(f"{web}/api/alerts", timeout=10) as resp:
            found[:] = [a["alert_id"] for a in json.loads(resp.read())
                        if a["key"] == "hb:node-b" and a["status"] != "closed"]
        return bool(found)

    await wait_for(lambda: asyncio.to_thread(opened), 60, step_s=0.1)
    return found[0]


async def _setup(server: ShippedNats, repo: Path) -> None:
    """Buckets; bot b1 deployed twice (a version to roll back to)."""
    leader = await server.connect("leader")
    await ensure_jetstream(leader.jetstream(), "qtd")
    await ensure_deploy_kv(leader.jetstream())
    argv, env = _login(server.url, "deployer")
    for qty in (1.0, 2.0):
        write_fleet(repo, {"b1": {"qty": qty}})
        res = await asyncio.to_thread(run_qtd, ["deploy", str(repo), "--no-smoke", "-m",
                                                "setup", *argv], **env)
        assert res.returncode == 0, res.stdout + res.stderr


def _table(cells: dict[tuple[str, str], Cell]) -> str:
    width = max(len(u) for u in USERS) + 2
    head = f"{'command':<10}" + "".join(f"{u:<{width}}" for u in USERS)
    rows = [head, "-" * len(head)]
    for command in NATS_COMMANDS:
        rows.append(f"{command:<10}" + "".join(
            f"{'allowed' if cells[command, u].allowed else 'refused':<{width}}"
            for u in USERS))
    for command in STORE_COMMANDS:
        rows.append(f"{command:<10}" + "".join(f"{'file read':<{width}}" for _ in USERS))
    rows += ["", "refusals (the one line each command printed, exit 2):"]
    rows += [f"  {c} as {u}: {cell.line}" for (c, u), cell in cells.items()
             if not cell.allowed]
    rows += ["", "store commands read SQLite files (--db, or the qtd up fleet's): no NATS "
             "login; checked once on the agent's events.db"]
    return "\n".join(rows)


async def _side_by_side_cells(url: str, repo: Path,
                             alert_id: str) -> dict[tuple[str, str], Cell]:
    """Every cell of the :data:`SIDE_BY_SIDE` commands, :data:`PARALLEL` at a time (the
    kill row first: a refused kill waits out a JetStream request)."""
    gate = asyncio.Semaphore(PARALLEL)
    pairs = [(c, u) for c in SIDE_BY_SIDE for u in USERS]

    async def one(command: str, user: str) -> object:
        argv, env = _login(url, user)
        async with gate:
            return await asyncio.to_thread(
                run_qtd, [*_argv(command, user, repo, alert_id), *argv], **env)

    results = await asyncio.gather(*(one(c, u) for c, u in pairs))
    return {(c, u): _cell(c, u, res) for (c, u), res in zip(pairs, results, strict=True)}


async def _store_commands(db: Path) -> None:
    """The store commands (they read the file), side by side."""
    argvs = (["events", "--tail", "3"], ["positions"], ["report", "execution"], ["surveil"])
    results = await asyncio.gather(*(asyncio.to_thread(run_qtd, [*argv, "--db", str(db)])
                                     for argv in argvs))
    for res in results:
        assert res.returncode in (0, 3), res.stdout + res.stderr  # surveil: 3 = findings


async def test_every_command_as_every_shipped_user(tmp_path: Path) -> None:
    async with shipped_nats(tmp_path / "nats", ("node-a", "node-b")) as server:
        repo = tmp_path / "repo"
        await _setup(server, repo)
        with processes() as procs:
            lead = leader_config(tmp_path, server.url, liveness={"heartbeat_timeout_s": 1.0})
            procs.append(qtd_process(["leader", "--config", str(lead)],
                                     tmp_path / "leader.log"))
            agent = agent_config(tmp_path / "node-a", "node-a", server.url,
                                 {"flip": {"qty": 1.0}})
            procs.append(qtd_process(["agent", "--config", str(agent)],
                                     tmp_path / "node-a.log"))
            await log_match(tmp_path / "node-a.log", rb"nats.connected")
            web = await leader_web_url(tmp_path / "leader.log")
            alert_id = await _alert_id(server, web)
            watcher = await server.connect("leader")
            cells = await _side_by_side_cells(server.url, repo, alert_id)
            n = 0
            for command in IN_TURN:
                for user in USERS:
                    if command == "resume":  # something to resume
                        await send_kill(watcher, new_kill(reason="to resume", operator="t"))
                    if command == "deploy":  # a change for every attempt
                        n += 1
                        write_fleet(repo, {"b1": {"qty": float(10 + n)}})
                    argv, env = _login(server.url, user)
                    res = await asyncio.to_thread(
                        run_qtd, [*_argv(command, user, repo, alert_id), *argv], **env)
                    cells[command, user] = _cell(command, user, res)
            await _store_commands(tmp_path / "node-a" / "state" / "events.db")
        cells = {(c, u): cells[c, u] for c in NATS_COMMANDS for u in USERS}  # table order
        table = _table(cells)
        print("\n" + table)
        (tmp_path / "matrix.txt").write_text(table + "\n")
        if os.environ.get("QTD_MATRIX_FILE"):
            Path(os.environ["QTD_MATRIX_FILE"]).write_text(table + "\n")
        for command in NATS_COMMANDS:
            allowed = {u for u in USERS if cells[command, u].allowed}
            expected = {u.replace("agent-<node>", "agent-node-a") for u in LOGINS[command]}
            assert allowed == expected, (command, allowed, expected, table)
