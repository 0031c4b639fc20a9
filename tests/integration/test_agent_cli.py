"""`qtd kill` over NATS (KV + broadcast, acks printed) and with --local (kill file)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from nats.aio.client import Client

from qtd.agent.control import read_kills
from qtd.bus import EmbeddedNatsServer, ensure_jetstream
from qtd.cli import main
from qtd.events import Scope, TradingState
from qtd.risk.kill import parse_kill_file
from tests.agent_rig import running_agent, synthetic_bars, wait_for, write_fleet


def test_kill_local_writes_the_kill_file(tmp_path: Path, capsys: object) -> None:
    path = tmp_path / "qtd.kill"
    assert main(["kill", "--local", "--kill-file", str(path), "--scope", "strategy",
                 "--key", "b1", "--reason", "runaway", "--operator", "alice"]) == 0
    cmd = parse_kill_file(path.read_bytes())
    assert (cmd.scope, cmd.key, cmd.reason, cmd.operator) == (Scope.STRATEGY, "b1", "runaway",
                                                              "alice")
    assert main(["kill", "--local", "--kill-file", str(path), "--release"]) == 0
    assert not path.exists()
    assert main(["kill", "--local", "--kill-file", str(path)]) == 78  # no reason
    assert main(["kill", "--scope", "symbol", "--reason", "x", "--local"]) == 78  # no key


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
