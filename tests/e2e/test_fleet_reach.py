"""Operator commands reach the fleet ``qtd up`` started, with no connection option at all.

A real ``qtd up`` (one agent, one bot, a private nats-server on a random port) runs in a
working directory; from there, and from elsewhere with ``$QTD_STATE`` or ``--context``, the
operator's commands find it through ``qtd-state/context.json``: ``kill`` halts the agent
(its acknowledgement comes back), ``resume``, ``alerts`` and ``versions`` reach the leader,
``events``/``positions`` read a node's store and ``report``/``surveil`` the leader's
fleet.db. Once the fleet is stopped, a NATS command says so in one line (exit 75, naming
the URL it would have dialled) while the stores stay readable. An unreachable ``--server``
is one line too, with its password masked.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from qtd.fleetctx import read_context
from qtd.up.configs import free_port
from tests.shipped import ETC, ROOT, log_match

pytestmark = pytest.mark.slow


def _small_etc(tmp: Path) -> Path:
    """etc/ with one bot (its strategy path made absolute)."""
    etc = tmp / "etc"
    (etc / "bots").mkdir(parents=True)
    for name in ("leader.toml", "agent.toml", "risk.toml"):
        shutil.copy(ETC / name, etc / name)
    bot = (ETC / "bots" / "momo-goog.toml").read_text()
    (etc / "bots" / "momo-goog.toml").write_text(bot.replace(
        '"../../strategies/ma_cross.py"', f'"{ROOT / "strategies" / "ma_cross.py"}"'))
    return etc


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "QTD_STATE"}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def qtd(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``qtd ARGS`` run in ``cwd`` (the timeout only stops a hang)."""
    return subprocess.run([sys.executable, "-m", "qtd.cli", *args], cwd=cwd, env=_env(**env),
                          capture_output=True, text=True, timeout=120, check=False)


def _ok(res: subprocess.CompletedProcess[str], codes: tuple[int, ...] = (0,)) -> str:
    assert res.returncode in codes, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def _one_line(res: subprocess.CompletedProcess[str], code: int) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == code and len(lines) == 1, \
        f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    assert "Traceback" not in res.stdout + res.stderr
    return lines[0]


async def test_operator_commands_find_the_fleet_qtd_up_started(tmp_path: Path) -> None:
    work, other = tmp_path / "work", tmp_path / "other"
    work.mkdir()
    other.mkdir()
    log = tmp_path / "up.log"
    with log.open("ab") as out:
        up = subprocess.Popen([sys.executable, "-m", "qtd.cli", "up", "--agents", "1",
                               "--config", str(_small_etc(tmp_path)), "--stop-timeout", "10"],
                              cwd=work, env=_env(), stdout=out, stderr=subprocess.STDOUT)
    state = work / "qtd-state"
    try:
        await log_match(log, rb"operate this fleet from this directory", timeout_s=120)
        ctx = read_context(state)
        assert list(ctx.nodes) == ["node-1"] and ctx.nodes["node-1"].bots == ("momo-goog",)
        await log_match(state / "logs" / "node-1.log", rb"nats.connected", timeout_s=120)
        await log_match(state / "logs" / "leader.log", rb"leader\.web url", timeout_s=120)

        killed = _ok(await asyncio.to_thread(qtd, ["kill", "--reason", "reach", "--operator",
                                                   "t", "--wait", "30", "--expect", "1"],
                                             work))
        assert "node-1" in killed, killed
        # independent of each other: side by side
        alerts, resumed, versions, events, positions, report, surveil = await asyncio.gather(
            asyncio.to_thread(qtd, ["alerts"], other, QTD_STATE=str(state)),
            asyncio.to_thread(qtd, ["resume", "--operator", "t", "--reason", "reach",
                                    "--all", "--context", str(state)], other),
            asyncio.to_thread(qtd, ["versions"], work),
            asyncio.to_thread(qtd, ["events", "--node", "node-1", "--tail", "3"], work),
            asyncio.to_thread(qtd, ["positions", "--node", "node-1"], work),
            asyncio.to_thread(qtd, ["report", "execution"], work),
            asyncio.to_thread(qtd, ["surveil"], work))
        _ok(alerts)
        _ok(resumed)
        _ok(versions, (0, 3))
        _ok(events)
        _ok(positions)
        _ok(report)
        _ok(surveil, (0, 3))
    finally:
        up.send_signal(signal.SIGINT)
        await asyncio.to_thread(up.wait, 120)

    alerts, kill, events = await asyncio.gather(
        asyncio.to_thread(qtd, ["alerts"], work),
        asyncio.to_thread(qtd, ["kill", "--reason", "x"], work),
        asyncio.to_thread(qtd, ["events", "--node", "node-1", "--tail", "1"], work))
    line = _one_line(alerts, 75)
    assert f"its NATS {ctx.nats_url} is gone" in line, line
    line = _one_line(kill, 75)
    assert ctx.nats_url in line, line
    _ok(events)


async def test_an_unreachable_server_is_one_line_with_the_password_masked(
        tmp_path: Path) -> None:
    url = f"nats://operator:hunter2@127.0.0.1:{free_port()}"
    commands = (["kill", "--reason", "x"], ["alerts"], ["versions"], ["history", "b"])
    # Each one dials for its whole connect timeout: run them side by side.
    results = await asyncio.gather(*(asyncio.to_thread(qtd, [*argv, "--server", url],
                                                       tmp_path) for argv in commands))
    for res in results:
        line = _one_line(res, 75)
        assert "hunter2" not in res.stdout + res.stderr
        assert "nats://***@127.0.0.1:" in line, line
