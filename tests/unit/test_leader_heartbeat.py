"""What an agent takes for the leader's heartbeat on ``<prefix>.hb.leader`` (issue 21, 3):
a pure function, no I/O."""

from __future__ import annotations

import msgspec
import pytest

from qtd.agent.loops import leader_heartbeat
from qtd.control import NodeReply
from qtd.events import Heartbeat, to_json

LEADER_HB = to_json(Heartbeat(node="leader", ts_event=1, ts_init=1, role="leader"))


def test_a_plain_leader_heartbeat_counts() -> None:
    hb = leader_heartbeat(LEADER_HB, None, "")
    assert hb is not None and hb.role == "leader"
    assert leader_heartbeat(LEADER_HB, {}, "") is not None  # nats-py: no headers may be {}


@pytest.mark.parametrize(("data", "headers", "reply"), [
    (b"", {"Status": "100", "Description": "Idle Heartbeat"}, ""),  # consumer idle hb
    (b"", {"Status": "100", "Description": "FlowControl Request"}, "$JS.FC.KV.x.y"),
    (LEADER_HB, {"Nats-Stream": "KV_qtd_sources", "Nats-Sequence": "3"}, ""),  # direct get
    (LEADER_HB, None, "$JS.ACK.KV_qtd_control.forged.1.1.1.1.0"),  # a push delivery
    (b'{"type":"io.nats.jetstream.api.v1.account_info_response","memory":0}', None, ""),
    (b'{"stream":"QTD_EVENTS","seq":5}', None, ""),  # a PubAck sent there as reply
    (msgspec.json.encode(NodeReply(ok=True, node="node-b", verb="status")), None, ""),
    (to_json(Heartbeat(node="node-a", ts_event=1, ts_init=1, role="agent")), None, ""),
    (b"", None, ""),
    (b"\xff garbage", None, ""),
])
def test_anything_else_on_the_subject_does_not(data: bytes, headers: dict[str, str] | None,
                                               reply: str) -> None:
    assert leader_heartbeat(data, headers, reply) is None
