"""Kill switch, fleet caps, liveness and paging on a real nats-server with fake agents, pages
delivered through Apprise ``json://`` to a local HTTP receiver."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from qtd.agent.killround import kill_round
from qtd.bus import CONTROL_BUCKET, KILL_KEY, EmbeddedNatsServer, ensure_jetstream
from qtd.bus.rejects import REJECTED
from qtd.commands.kill import format_report, report_json
from qtd.control import new_kill
from qtd.control.transport import read_kills, release_kills, send_kill
from qtd.events import AckStage, KillAck, KillSwitch, RiskBreach, Scope, Side
from qtd.leader.config import CapsConfig, KillConfig, LossCap, SelfTradeCap
from qtd.leader.daemon import Leader, running_leader
from tests.integration.leader_peer import PageReceiver, agents, leader_config, wait_for

NODES = ["node-a", "node-b", "node-c", "node-d"]


@pytest.fixture
def receiver() -> Iterator[PageReceiver]:
    r = PageReceiver()
    yield r
    r.close()


async def _audit(leader: Leader, kind: type) -> list[object]:
    return [e async for b in leader.db.replay_all() for e in b if isinstance(e, kind)]


async def test_kill_reaches_every_agent_and_unacked_agent_is_paged(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client,
    receiver: PageReceiver,
) -> None:
    cfg = leader_config(tmp_path, nats_server, page_url=receiver.url)
    async with agents(tmp_path, nats_server, NODES) as peers, running_leader(cfg) as leader:
        peers[-1].answer_kills = False
        await wait_for(lambda: set(leader.view.heartbeats) == set(NODES), what="heartbeats")
        rnd = await leader.kill.trigger_kill(Scope.GLOBAL, "", "test kill", "alice")
        await wait_for(lambda: all(p.kills for p in peers), what="kill at every agent")
        assert {p.kills[0].id for p in peers} == {rnd.kill_id}
        kv = await nats_client.jetstream().key_value(CONTROL_BUCKET)
        stored = msgspec.json.decode((await kv.get(KILL_KEY)).value)["kills"]
        assert [k["id"] for k in stored] == [rnd.kill_id]
        await wait_for(lambda: len(rnd.acks) == 3, what="acks")
        assert leader.view.kill.acked == NODES[:3] and leader.view.kill.pending == ["node-d"]
        await wait_for(lambda: "kill:unacked" in leader.alerts.open, 3.0, "P1 alert")
        await wait_for(lambda: any("node-d" in b["message"] for b in receiver.bodies), 3.0,
                       "P1 page naming node-d")
        page = next(b for b in receiver.bodies if "node-d" in b["message"])
        assert page["title"].startswith("[P1]")
        reply = await nats_client.request("qtd.ctl.leader.resume", msgspec.json.encode(
            {"operator": "alice", "reason": "all clear"}), timeout=5)
        body = msgspec.json.decode(reply.data)
        assert body["ok"] and body["agents"]["node-a"].startswith("ok")
        assert all(p.resumes and p.resumes[0]["operator"] == "alice" for p in peers)
        assert not leader.view.kill.active and "kill:unacked" not in leader.alerts.open
        refused = await nats_client.request("qtd.ctl.leader.resume", b"{}", timeout=5)
        assert msgspec.json.decode(refused.data)["ok"] is False  # no operator, no reason
        kills = await _audit(leader, KillSwitch)
        assert [k.active for k in kills] == [True, False] and kills[1].operator == "alice"


async def test_daily_loss_cap_trips_a_kill_and_pages_with_pnl_context(
    tmp_path: Path, nats_server: EmbeddedNatsServer, receiver: PageReceiver,
) -> None:
    caps = CapsConfig(daily_loss=LossCap(limit=150.0, level="L1"))
    cfg = leader_config(tmp_path, nats_server, caps=caps, page_url=receiver.url)
    async with agents(tmp_path, nats_server, NODES[:2]) as peers, running_leader(cfg) as leader:
        await wait_for(lambda: len(leader.view.heartbeats) == 2, what="heartbeats")
        await peers[0].trade("momo", "SPY", Side.BUY, "10", "100")
        await peers[0].trade("momo", "SPY", Side.SELL, "5", "80")  # realized -100
        await peers[1].trade("meanrev", "QQQ", Side.BUY, "1", "50")
        # today: realized 5 x (80 - 100) = -100, the open 5 SPY at mark 80 another -100
        await wait_for(lambda: all(p.kills for p in peers), what="cap kill at agents")
        assert peers[0].kills[0].reason.startswith("fleet cap daily_loss")
        assert peers[0].kills[0].scope is Scope.GLOBAL
        breach = await _audit(leader, RiskBreach)
        assert [b.check for b in breach] == ["daily_loss"]
        await wait_for(lambda: any("daily_loss" in b["message"] for b in receiver.bodies),
                       what="cap page")
        text = next(b["message"] for b in receiver.bodies if "daily_loss" in b["message"])
        assert "PnL today: fleet -200.00 USD" in text
        assert "node-a/momo acct1 SPY qty 5" in text
        cap = next(c for c in leader.status.snapshot().caps if c.name == "daily_loss")
        assert cap.tripped and cap.value == pytest.approx(200.0)


async def test_self_trade_risk_kills_the_account(
    tmp_path: Path, nats_server: EmbeddedNatsServer,
) -> None:
    caps = CapsConfig(self_trade=SelfTradeCap(window_s=5.0, level="L2"))
    cfg = leader_config(tmp_path, nats_server, caps=caps)
    async with agents(tmp_path, nats_server, NODES[:2]) as peers, running_leader(cfg) as leader:
        await peers[0].trade("a", "SPY", Side.BUY, "1", "100", account="shared")
        await peers[1].trade("b", "SPY", Side.SELL, "1", "100", account="shared")
        await wait_for(lambda: all(p.kills for p in peers), what="self-trade kill")
        kill = peers[0].kills[0]
        assert (kill.scope, kill.key) == (Scope.ACCOUNT, "shared")
        assert leader.view.kill.scope == "ACCOUNT"


async def test_missing_heartbeat_pages_p2_and_recovery_closes_it(
    tmp_path: Path, nats_server: EmbeddedNatsServer, receiver: PageReceiver,
) -> None:
    cfg = leader_config(tmp_path, nats_server, page_url=receiver.url, hb_timeout_s=0.4)
    async with agents(tmp_path, nats_server, NODES[:2]) as peers, running_leader(cfg) as leader:
        await peers[1].trade("momo", "SPY", Side.BUY, "3", "10")
        await wait_for(lambda: len(leader.view.heartbeats) == 2, what="heartbeats")
        peers[1].heartbeats = False
        await wait_for(lambda: "hb:node-b" in leader.alerts.open, 3.0, "P2 alert")
        assert leader.alerts.open["hb:node-b"].severity == "P2"
        assert "hb:node-a" not in leader.alerts.open
        await wait_for(lambda: any(b["title"].startswith("[P2]") for b in receiver.bodies),
                       what="P2 page")
        peers[1].heartbeats = True
        await wait_for(lambda: "hb:node-b" not in leader.alerts.open, 3.0, "recovery")
        await wait_for(lambda: any("RECOVERED" in b["title"] for b in receiver.bodies),
                       what="recovery page")
        snap = leader.status.snapshot()
        assert [n.alive for n in snap.nodes] == [True, True]


async def test_agent_trip_through_jetstream_is_paged_and_closed_when_active_again(
    tmp_path: Path, nats_server: EmbeddedNatsServer, receiver: PageReceiver,
) -> None:
    """A P2 an agent raised itself (a reconciliation left its account REDUCING) reaches the
    operator through the leader; a denial does not page; ACTIVE again closes the alert."""
    from qtd.events import Severity, TradingState, TradingStateChanged

    cfg = leader_config(tmp_path, nats_server, page_url=receiver.url)
    async with agents(tmp_path, nats_server, ["node-a"]) as (peer,), running_leader(cfg) as leader:
        await wait_for(lambda: "node-a" in leader.view.heartbeats, what="heartbeat")
        t = 1_700_000_000_000_000_000
        await peer.append(
            RiskBreach(node="node-a", ts_event=t, ts_init=t, check="max_order_qty",
                       scope=Scope.STRATEGY, scope_key="b1", limit=1.0, value=2.0, unit="qty",
                       severity=Severity.P2, action="deny", message="one order denied"),
            RiskBreach(node="node-a", ts_event=t, ts_init=t, check="reconcile",
                       scope=Scope.ACCOUNT, scope_key="acct1", limit=0.0, value=1.0,
                       unit="discrepancies", severity=Severity.P2, action="reducing",
                       message="reconcile acct1: position mismatches: SPY"))
        key = "breach:node-a:reconcile:ACCOUNT:acct1"
        await wait_for(lambda: key in leader.alerts.open, 5.0, "the agent's P2 alert")
        await wait_for(lambda: any("reconcile" in b["title"] for b in receiver.bodies), 5.0,
                       "the P2 page")
        page = next(b for b in receiver.bodies if "reconcile" in b["title"])
        assert page["title"].startswith("[P2]") and "position mismatches" in page["message"]
        assert not any("max_order_qty" in k for k in leader.alerts.open)  # denials don't page
        await peer.append(TradingStateChanged(
            node="node-a", ts_event=t + 1, ts_init=t + 1, scope=Scope.ACCOUNT,
            scope_key="acct1", old=TradingState.REDUCING, new=TradingState.ACTIVE,
            reason="operator resume", operator="alice"))
        await wait_for(lambda: key not in leader.alerts.open, 5.0, "the alert closed")


async def test_concurrent_kill_writers_never_overwrite_each_other(
        nats_client: Client) -> None:
    """Compare-and-set on the kill key: 20 writers at once (operator CLIs, cap trips) all
    land in the set; a value written by an older qtd (one KillCommand) reads as a set of
    one; releasing one kill leaves the others."""
    await ensure_jetstream(nats_client.jetstream())
    kv = await nats_client.jetstream().key_value(CONTROL_BUCKET)
    legacy = new_kill(reason="written by an older qtd")
    await kv.put(KILL_KEY, msgspec.json.encode(legacy))
    assert [k.id for k in (await read_kills(nats_client)).kills] == [legacy.id]
    kills = [new_kill(reason=f"writer {i}", scope=Scope.SYMBOL, key=f"S{i}")
             for i in range(20)]
    await asyncio.gather(*(send_kill(nats_client, k) for k in kills))
    held = await read_kills(nats_client)
    assert held.ids() == {legacy.id, *(k.id for k in kills)}
    gone = await release_kills(nats_client, [kills[3].id])
    assert [k.id for k in gone] == [kills[3].id]
    assert (await read_kills(nats_client)).ids() == held.ids() - {kills[3].id}
    await kv.put(KILL_KEY, b"\x00garbage")  # fail safe: an unreadable set is a GLOBAL kill
    (unreadable,) = (await read_kills(nats_client)).kills
    assert unreadable.scope is Scope.GLOBAL and "undecodable" in unreadable.reason


async def test_an_agent_cannot_acknowledge_a_kill_for_another_node(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client,
    receiver: PageReceiver,
) -> None:
    """A kill ack counts for the node its subject names: an ack on node-a's subject that
    says node-d is refused and counted, node-d stays missing and is paged."""
    cfg = leader_config(tmp_path, nats_server, page_url=receiver.url)
    async with agents(tmp_path, nats_server, NODES) as peers, running_leader(cfg) as leader:
        peers[-1].answer_kills = False
        await wait_for(lambda: set(leader.view.heartbeats) == set(NODES), what="heartbeats")
        before = REJECTED.counts["kill_ack"]
        rnd = await leader.kill.trigger_kill(Scope.GLOBAL, "", "test kill", "alice")
        await nats_client.publish("qtd.ack.kill.node-a", msgspec.json.encode(
            {"node": "node-d", "kill_id": rnd.kill_id, "state": "HALTED"}))
        await wait_for(lambda: len(rnd.acks) == 3, what="the three real acks")
        await wait_for(lambda: "kill:unacked" in leader.alerts.open, 3.0, "P1 alert")
        assert "node-d" not in rnd.acks and rnd.missing() == ["node-d"]
        assert REJECTED.counts["kill_ack"] == before + 1


async def test_an_agent_without_its_durable_ack_counts_halted_and_is_paged(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client,
    receiver: PageReceiver,
) -> None:
    """node-c acknowledges the kill in force but never durable (its store hangs): the leader
    counts it halted, pages P1 naming it and the kill after ``durable_timeout_s``, and closes
    the page when the durable ack comes late; ``qtd kill``'s report names it not durable
    (exit status as before: every agent is halted) and times both acks of the others."""
    cfg = leader_config(tmp_path, nats_server, page_url=receiver.url,
                        kill=KillConfig(ack_timeout_s=1.0, durable_timeout_s=0.3))
    both = (AckStage.IN_FORCE, AckStage.DURABLE)
    async with agents(tmp_path, nats_server, ["node-a", "node-b"], ack_stages=both), \
            agents(tmp_path, nats_server, ["node-c"], ack_stages=(AckStage.IN_FORCE,)) as (c,), \
            running_leader(cfg) as leader:
        await wait_for(lambda: len(leader.view.heartbeats) == 3, what="heartbeats")
        report = await kill_round(nats_client, new_kill(reason="drill", operator="alice"),
                                  timeout_s=0.5)
        kill_id = report.kill.id
        assert report.complete() and report.not_durable() == ["node-c"]
        durable = {a.ack.node: a.durable_ms for a in report.acks}
        assert durable["node-c"] is None and all(durable[f"node-{n}"] for n in "ab")
        text = format_report(report)
        assert "node-c               HALTED    in force after" in text and "NOT durable" in text
        assert "in force but not durable after" in text and "durable on 2 of 3" in text
        body = report_json(report)
        assert body["complete"] and body["not_durable"] == ["node-c"]
        assert body["durable_in_ms"] == report.durable_in_ms() > 0
        rnd = leader.kill.active[kill_id]
        assert sorted(rnd.acks) == ["node-a", "node-b", "node-c"] and rnd.missing() == []
        assert leader.view.kill.pending == []  # halted on the in-force ack
        await wait_for(lambda: "kill:undurable" in leader.alerts.open, 3.0, "P1 alert")
        assert "kill:unacked" not in leader.alerts.open
        await wait_for(lambda: any("node-c" in b["message"] for b in receiver.bodies), 3.0,
                       "P1 page naming node-c")
        page = next(b for b in receiver.bodies if "node-c" in b["message"])
        assert page["title"].startswith("[P1]") and kill_id in page["message"]
        assert "node-a" not in page["message"]
        audits = await _wait_audits(leader, 3)
        assert {a.node: a.stage for a in audits} == {
            "node-a": AckStage.DURABLE, "node-b": AckStage.DURABLE, "node-c": AckStage.IN_FORCE}
        late = msgspec.structs.replace(audits[0], node="node-c", stage=AckStage.DURABLE)
        await c.nc.publish("qtd.ack.kill.node-c", msgspec.json.encode(late))
        await wait_for(lambda: "kill:undurable" not in leader.alerts.open, 3.0, "closed")


async def _wait_audits(leader: Leader, n: int) -> list[KillAck]:
    for _ in range(150):
        acks = [a for a in await _audit(leader, KillAck) if isinstance(a, KillAck)]
        if len(acks) >= n:
            return acks
        await asyncio.sleep(0.02)
    raise AssertionError("no KillAck audit in fleet.db")
