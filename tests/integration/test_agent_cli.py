"""`qtd kill` over NATS (KV + broadcast, acks printed) and with --local (kill file)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from nats.aio.client import Client

from qtd.bus import EmbeddedNatsServer, ensure_jetstream
from qtd.cli import main
from qtd.control.transport import read_kills
from qtd.events import Scope, TradingState
from qtd.risk.kill_file import parse_kill_file
from tests.agent_rig import running_agent, synthetic_bars, wait_for, write_fleet


def test_kill_local_writes_the_kill_file_of_the_agent_config(tmp_path: Path) -> None:
    cfg = write_fleet(tmp_path, {"b1": {}})  # kill_file = "kill", relative to the config
    path = tmp_path / "kill"
    assert main(["kill", "--local", "--config", str(cfg), "--scope", "strategy",
                 "--key", "b1", "--reason", "runaway", "--operator", "alice"]) == 0
    cmd = parse_kill_file(path.read_bytes())
    assert (cmd.scope, cmd.key, cmd.reason, cmd.operator) == (Scope.STRATEGY, "b1", "runaway",
                                                              "alice")
    assert main(["kill", "--local", "--config", str(cfg), "--release"]) == 0
    assert not path.exists()
    assert main(["kill", "--local", "--config", str(cfg)]) == 78  # no reason
    assert main(["kill", "--scope", "symbol", "--reason", "x", "--local"]) == 78  # no key


def test_kill_local_release_says_what_it_removed(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_fleet(tmp_path, {"b1": {}})
    assert main(["kill", "--local", "--config", str(cfg), "--release"]) == 0
    out = capsys.readouterr().out
    assert f"node-a: no kill file at {tmp_path / 'kill'}: nothing to remove" in out
    assert "halted" not in out  # nothing had halted
    assert main(["kill", "--local", "--config", str(cfg), "--reason", "drill"]) == 0
    capsys.readouterr()
    assert main(["kill", "--local", "--config", str(cfg), "--release"]) == 0
    out = capsys.readouterr().out
    assert f"node-a: removed kill file {tmp_path / 'kill'}: GLOBAL (drill)" in out
    assert "trading stays halted on node-a until `qtd resume`" in out


def test_kill_local_refuses_a_file_no_agent_watches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QTD_STATE", raising=False)
    stray = tmp_path / "stray.kill"
    assert main(["kill", "--local", "--kill-file", str(stray), "--reason", "x"]) == 78
    err = capsys.readouterr().err
    assert "no agent config" in err and "--config" in err and len(err.splitlines()) == 1
    cfg = write_fleet(tmp_path / "a", {"b1": {}})
    assert main(["kill", "--local", "--config", str(cfg), "--kill-file", str(stray),
                 "--reason", "x"]) == 78
    assert "no agent watches it" in capsys.readouterr().err
    assert not stray.exists()


def test_kill_local_finds_the_qtd_up_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`qtd up`'s state dir: etc/node-N.toml with absolute kill files; every node, or
    --node; $QTD_STATE or ./qtd-state."""
    etc = tmp_path / "qtd-state" / "etc"
    etc.mkdir(parents=True)
    for n in ("node-1", "node-2"):
        (tmp_path / "qtd-state" / n).mkdir()
        (etc / f"{n}.toml").write_text(
            f'node = "{n}"\nkill_file = "{tmp_path / "qtd-state" / n / "qtd.kill"}"\n'
            f'[bus]\npassword_credential = "not-here"\nuser = "u"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QTD_STATE", raising=False)
    assert main(["kill", "--local", "--node", "node-2", "--reason", "one"]) == 0
    assert not (tmp_path / "qtd-state" / "node-1" / "qtd.kill").exists()
    assert parse_kill_file((tmp_path / "qtd-state" / "node-2" / "qtd.kill").read_bytes()
                           ).reason == "one"
    assert main(["kill", "--local", "--node", "node-9", "--reason", "x"]) == 78
    assert "node-1, node-2" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path / "qtd-state")  # elsewhere: $QTD_STATE names the fleet
    monkeypatch.setenv("QTD_STATE", str(tmp_path / "qtd-state"))
    assert main(["kill", "--local", "--reason", "all"]) == 0
    for n in ("node-1", "node-2"):
        assert parse_kill_file((tmp_path / "qtd-state" / n / "qtd.kill").read_bytes()
                               ).reason == "all"


async def test_kill_over_nats_reaches_a_running_agent_and_prints_its_ack(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client, capsys: object
) -> None:
    await ensure_jetstream(nats_client.jetstream())
    cfg = write_fleet(tmp_path, {"b1": {}}, bus_url=nats_server.url, market="speed = 6000.0")
    async with running_agent(cfg, items={"goog_1d": synthetic_bars(2000)}) as agent:
        args = ["kill", "--config", str(cfg), "--reason", "cli test", "--operator", "dan",
                "--wait", "5", "--expect", "1", "--json"]
        rc = await asyncio.to_thread(main, args)
        assert rc == 0
        await wait_for(lambda: agent.risk.states.get(Scope.GLOBAL) is TradingState.HALTED)
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # type: ignore[attr-defined]
    assert out["acks"][0]["node"] == "node-a" and out["acks"][0]["state"] == "HALTED"
    (kill,) = (await read_kills(nats_client)).kills
    assert kill.id == out["kill_id"] and kill.operator == "dan"
    # --release names what it removes; the set keeps anything else.
    assert await asyncio.to_thread(main, ["kill", "--config", str(cfg), "--release"]) == 78
    assert await asyncio.to_thread(main, ["kill", "--config", str(cfg), "--release",
                                          "--kill-id", kill.id]) == 0
    assert (await read_kills(nats_client)).kills == ()
