"""A real agent applying its local kill file logs it as one JSON line (issue 21, finding 12:
the log call had 3 arguments for 4 placeholders and printed ``--- Logging error ---``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from qtd.bus import ensure_jetstream
from qtd.events import Scope
from qtd.risk.kill_file import write_kill_file
from tests.shipped import agent_config, log_match, processes, qtd_process, shipped_nats


async def test_a_kill_file_kill_is_logged_as_json(tmp_path: Path) -> None:
    async with shipped_nats(tmp_path / "nats") as nats:
        leader = await nats.connect("leader")
        await ensure_jetstream(leader.jetstream(), "qtd")
        cfg = agent_config(tmp_path / "fleet", "node-a", nats.url, {"b1": {}})
        log = tmp_path / "agent.log"
        with processes() as procs:
            procs.append(qtd_process(["agent", "--config", str(cfg)], log))
            await log_match(log, rb"agent node-a ready")
            write_kill_file(cfg.parent / "kill", scope=Scope.STRATEGY, key="b1",
                            reason="runaway b1")
            await log_match(log, rb"kill file applied")
    text = log.read_text()
    assert "Logging error" not in text
    line = next(x for x in text.splitlines() if "kill file applied" in x)
    doc = json.loads(line)
    assert doc["level"] == "WARNING" and doc["node"] == "node-a"
    assert re.fullmatch(r"kill file applied: STRATEGY:b1: runaway b1; \d+ cancels", doc["msg"])
