"""The kill report's arithmetic and summary (N of M, missing agents, complete)."""

from __future__ import annotations

import msgspec

from qtd.agent.killround import AckSeen, AgentSeen, KillReport
from qtd.commands.kill import format_report
from qtd.control import new_kill
from qtd.events import AckStage, KillAck, Scope, TradingState
from qtd.leader.killround import AckWire


def _ack(node: str, kill_id: str) -> KillAck:
    return KillAck(node=node, ts_event=1, ts_init=1, kill_id=kill_id, scope=Scope.GLOBAL,
                   scope_key="", reason="r", state=TradingState.HALTED)


def test_report_counts_roster_and_names_the_missing() -> None:
    kill = new_kill(reason="drill", operator="alice")
    report = KillReport(
        kill=kill, active=(kill,), acks=[AckSeen(ack=_ack("node-a", kill.id), after_ms=5.0)],
        roster=[AgentSeen(node="node-a", heartbeat_age_s=0.4),
                AgentSeen(node="node-c", heartbeat_age_s=200.0, alive=False)],
        roster_source="leader", ended_ms=12.0)
    assert (len(report.acks), report.agents(), report.complete()) == (1, 2, False)
    assert [a.node for a in report.missing()] == ["node-c"]
    text = format_report(report)
    assert "1 of 2 agents acknowledged in 5 ms (agents known to the leader)" in text
    assert "node-c               last heartbeat 3 min 20 s ago (heartbeat stale" in text
    none = msgspec.structs.replace(report, acks=[], roster=[], roster_source="heartbeats")
    assert not none.complete() and "0 of 0 agents acknowledged" in format_report(none)


def test_an_ack_from_an_agent_older_than_stage_reads_as_durable() -> None:
    """An agent that predates the in-force ack sends one ack, after its fsyncs, without
    ``stage``: the CLI and the leader read it as durable (and so in force)."""
    old = msgspec.json.encode(_ack("node-a", "k1"))
    fields = msgspec.json.decode(old)
    del fields["stage"]
    wire = msgspec.json.encode(fields)
    assert msgspec.json.decode(wire, type=KillAck).stage is AckStage.DURABLE
    assert msgspec.json.decode(wire, type=AckWire).stage == AckStage.DURABLE
