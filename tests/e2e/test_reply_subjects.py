"""A server's reply is not a command (issue 21, findings 3 and 6, the reply-subject hole).

nats-server does not check a request's reply subject against the requester's publish
permissions. On the shipped config, agent-node-a may publish only under its own subjects,
yet it can name ``qtd.ctl.kill`` as the reply subject of an event publish (JetStream's
publish acknowledgement then lands on the kill subject) or ``qtd.ctl.node-b.flatten`` as the
reply subject of a JetStream API call. Real agent processes must read neither as a kill or a
command: node-a and node-b stay ACTIVE and keep their positions; the messages are counted
and logged.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import msgspec
import pytest

from qtd.bus import ensure_jetstream
from qtd.control import NodeRequest
from qtd.control.transport import request
from tests.agent_rig import wait_for
from tests.shipped import agent_config, log_match, processes, qtd_process, shipped_nats

pytestmark = pytest.mark.slow


async def test_server_replies_sent_to_control_subjects_change_nothing(tmp_path: Path) -> None:
    async with shipped_nats(tmp_path / "nats", ("node-a", "node-b")) as nats:
        leader = await nats.connect("leader")
        await ensure_jetstream(leader.jetstream(), "qtd")  # as the leader does at start
        with processes() as procs:
            for node in ("node-a", "node-b"):
                cfg = agent_config(tmp_path / node, node, nats.url, {f"bot-{node[-1]}": {}},
                                   market="speed = 864000.0")
                procs.append(qtd_process(["agent", "--config", str(cfg)],
                                         tmp_path / f"{node}.log"))
            for node in ("node-a", "node-b"):
                await log_match(tmp_path / f"{node}.log", f"agent {node} ready".encode())

            rogue = await nats.connect("agent-node-a")
            # 1. The stream's publish acknowledgement, aimed at the kill subject.
            await rogue.publish("qtd.evt.node-a._.Junk", b"{}", reply="qtd.ctl.kill")
            # 2. A JetStream API response, aimed at node-b's flatten and halt verbs.
            for verb in ("flatten", "halt"):
                await rogue.publish("$JS.API.STREAM.INFO.QTD_EVENTS", b"",
                                    reply=f"qtd.ctl.node-b.{verb}")
            # 3. An API error (a request body that is not JSON), aimed at the kill subject.
            await rogue.publish("$JS.API.STREAM.INFO.QTD_EVENTS", b"not json",
                                reply="qtd.ctl.kill")
            await rogue.flush()

            await log_match(tmp_path / "node-a.log", rb"bad_message kind=kill", 20)

            await log_match(tmp_path / "node-b.log", rb"bad_message kind=command.*"
                            rb"qtd\.ctl\.node-b\.halt", 20)
            # A message with headers (a stream republish, a direct get) is no command either.
            await leader.publish("qtd.ctl.node-b.flatten", msgspec.json.encode(
                NodeRequest(operator="x", reason="y")), headers={"Nats-Stream": "S"})
            await log_match(tmp_path / "node-b.log", rb"bad_message kind=command.*headers", 20)
            await asyncio.sleep(1.0)  # room for a wrongly applied kill to show
            for node in ("node-a", "node-b"):
                reply = await request(leader, node, "status", NodeRequest(operator="t"))
                assert reply.data["global"] == "ACTIVE", (node, reply.data["states"])
                assert all(s["state"] == "ACTIVE" for s in reply.data["states"]), reply.data
            for node in ("node-a", "node-b"):
                log = (tmp_path / f"{node}.log").read_text()
                assert not re.search(r"kill \S+ applied", log), log[-2000:]
                assert log.count("bad_message kind=kill") == 2, log[-2000:]

            # A real halt from an allowed sender still works, and needs who and why.
            bad = await request(leader, "node-b", "halt", NodeRequest(operator="ops"))
            assert not bad.ok and "reason" in bad.message
            ok = await request(leader, "node-b", "halt", NodeRequest(
                operator="ops", reason="check"))
            assert ok.ok and ok.data["state"] == "HALTED"

            async def halted() -> bool:
                st = await request(leader, "node-b", "status", NodeRequest(operator="t"))
                return bool(st.data["global"] == "HALTED")
            await wait_for(halted, 10)
