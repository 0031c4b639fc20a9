"""The kill round (`qtd kill`) on the shipped NATS config: an acknowledgement counts only for
the node whose subject it came on."""

from __future__ import annotations

from pathlib import Path

import msgspec
from nats.aio.msg import Msg

from qtd.agent.killround import kill_round
from qtd.bus import ensure_jetstream
from qtd.control import decode_kill, new_kill
from qtd.events import KillAck, Scope, TradingState
from tests.shipped import shipped_nats


def _ack(node: str, kill_id: str) -> KillAck:
    return KillAck(node=node, ts_event=1, ts_init=1, kill_id=kill_id, scope=Scope.GLOBAL,
                   scope_key="", reason="r", state=TradingState.HALTED)


async def test_an_agent_cannot_acknowledge_for_another_node(tmp_path: Path) -> None:
    async with shipped_nats(tmp_path, ("node-a", "node-b")) as nats:
        await ensure_jetstream((await nats.connect("leader")).jetstream())
        rogue = await nats.connect("agent-node-a")

        async def forge(msg: Msg) -> None:  # node-a claims node-b's ack, then its own
            kill = decode_kill(msg.data)
            for node in ("node-b", "node-a"):
                await rogue.publish("qtd.ack.kill.node-a",
                                    msgspec.json.encode(_ack(node, kill.id)))
        await rogue.subscribe("qtd.ctl.kill", cb=forge)
        await rogue.flush()
        op = await nats.connect("operator")
        report = await kill_round(op, new_kill(reason="forged acks"), timeout_s=2, expect=2)
        assert sorted(report.acked()) == ["node-a"]
