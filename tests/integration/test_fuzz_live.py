"""Fuzz the live subscriptions of a running leader and agent on a real nats-server.

Mutated and random payloads (seeded; the seed is printed) are published on every subject the
leader reads (JetStream events, heartbeats, PnL ticks, kill acks) and on the agent's control
subjects. Afterwards:

- the leader counted every unreadable message by kind (``REJECTED``, exported on /metrics as
  ``qtd_bad_messages_total``), and its fleet figures, kill state and alerts did not change;
- the agent answered every malformed control request with ``ok = false`` and audited it
  (``CommandAudit``), and its trading states did not change;
- both are still running and the agent's real events still reach the leader.
"""

from __future__ import annotations

import asyncio
import os
import random
from decimal import Decimal
from pathlib import Path

import msgspec
from nats.aio.client import Client

from qtd.bus import EmbeddedNatsServer, ensure_jetstream
from qtd.bus.rejects import REJECTED
from qtd.events import (
    DECODE_ERRORS,
    CommandAudit,
    Heartbeat,
    KillAck,
    PnLSnapshot,
    RiskBreach,
    Scope,
    TradingState,
    to_json,
)
from qtd.leader.daemon import running_leader
from qtd.leader.killround import AckWire
from tests.agent_rig import running_agent, synthetic_bars, wait_for, write_fleet
from tests.factories import fill
from tests.integration.leader_peer import leader_config

SEED = int(os.environ.get("QTD_FUZZ_SEED", "20261125"))
PER_SUBJECT = 150


def _mutate(rng: random.Random, valid: bytes) -> bytes:
    """One malformed message: random bytes, a truncated or bit-flipped valid one, or valid
    JSON with a field of the wrong type."""
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 200))
    if kind == 1:
        return valid[: rng.randrange(1, max(2, len(valid) - 1))]
    if kind == 2:
        b = bytearray(valid)
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(b))
            b[i] = rng.choice(b'{}[]":,0x\xff')
        return bytes(b)
    doc = msgspec.json.decode(valid)
    key = rng.choice(sorted(doc))
    doc[key] = rng.choice([[1, 2], {"x": 1}, -1e308, "NaN", None, True, "x" * 300])
    if key == "kind":
        doc[key] = rng.choice(["NoSuchEvent", 5, ""])
    return msgspec.json.encode(doc)


def _readable(data: bytes, typ: type) -> bool:
    try:
        msgspec.json.decode(data, type=typ)
    except DECODE_ERRORS:
        return False
    return True


async def test_leader_and_agent_reject_and_count_malformed_messages(
        tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client) -> None:
    rng = random.Random(SEED)
    print(f"\nfuzz live: seed {SEED}")
    js = nats_client.jetstream()
    await ensure_jetstream(js)
    cfg = write_fleet(tmp_path / "fleet", {"r1": {}}, strategy="rester",
                      bus_url=nats_server.url, market="speed = 6000.0")
    async with running_leader(leader_config(tmp_path, nats_server)) as leader, \
            running_agent(cfg, items={"goog_1d": synthetic_bars(30)}) as agent:
        # the rester's one order is placed (its worker may start after the first events)
        # and the leader has every event up to it
        await wait_for(lambda: "node-a" in leader.view.projections
                       and any(agent.proj.orders.open_orders())
                       and leader.db.marks().get(("node-a", agent.store.incarnation))
                       == agent.store.last_seq, 30)
        before = msgspec.to_builtins(leader.status.snapshot().totals)
        states_before = dict(agent.risk.states.items()) if hasattr(
            agent.risk.states, "items") else None
        audits_before = len(await agent.store.query(kind="CommandAudit"))
        counts_before = dict(REJECTED.counts)

        valid = {
            "heartbeat": ("qtd.hb.node-z", to_json(Heartbeat(node="node-z", ts_event=1,
                                                             ts_init=1, role="agent")),
                          Heartbeat),
            "pnl": ("qtd.pnl.node-z.bot", to_json(PnLSnapshot(
                node="node-z", bot="bot", ts_event=1, ts_init=1, account="a",
                realized=Decimal(0), unrealized=Decimal(0), fees=Decimal(0))), PnLSnapshot),
            "kill_ack": ("qtd.ack.kill.node-z", to_json(KillAck(
                node="node-z", ts_event=1, ts_init=1, kill_id="k", scope=Scope.GLOBAL,
                scope_key="", reason="r", state=TradingState.HALTED)),
                         AckWire),  # what the leader reads of an ack
        }
        sent = {k: 0 for k in (*valid, "event")}
        for kind, (subject, body, typ) in valid.items():
            for _ in range(PER_SUBJECT):
                data = _mutate(rng, body)
                if _readable(data, typ) or (kind == "heartbeat" and _readable(data, RiskBreach)):
                    continue  # a mutation that is still a valid message: not a fuzz input
                await nats_client.publish(subject, data)
                sent[kind] += 1
        event_body = to_json(fill("cz", "tz", qty="1", price="1", bot="bot"))
        for i in range(PER_SUBJECT):
            data = _mutate(rng, event_body)
            if _readable(data, type(fill("c", "t", qty="1", price="1"))):
                continue
            await js.publish("qtd.evt.node-z.bot.Fill", data,
                             headers={"Nats-Msg-Id": f"node-z:fuzz:{i + 1}"})
            sent["event"] += 1
        ctl_replies = []
        for verb in ("status", "halt", "resume", "flatten", "reload"):
            for _ in range(20):
                data = _mutate(rng, b'{"operator": "o", "reason": "r", "scope": "GLOBAL"}')
                if _readable(data, dict):
                    data = b"\xff" + data
                ctl_replies.append(await nats_client.request(f"qtd.ctl.node-a.{verb}", data,
                                                             timeout=5))
        await nats_client.flush()

        def all_counted() -> bool:
            return all(REJECTED.counts[k] - counts_before.get(k, 0) >= n
                       for k, n in sent.items())
        try:
            await wait_for(all_counted, 30)
        except TimeoutError:
            got = {k: REJECTED.counts[k] - counts_before.get(k, 0) for k in sent}
            raise AssertionError(f"not all counted: sent {sent}, counted {got}") from None
        await asyncio.sleep(0.3)
        delta = {k: REJECTED.counts[k] - counts_before.get(k, 0) for k in sent}
        assert delta == sent, (delta, sent)
        assert msgspec.to_builtins(leader.status.snapshot().totals) == before
        assert not leader.status.snapshot().kill.active
        assert "node-z" not in {n.node for n in leader.status.snapshot().nodes}
        replies = [msgspec.json.decode(r.data) for r in ctl_replies]
        assert all(r["ok"] is False and "bad request" in r["message"] for r in replies)
        audits = [e for e in await agent.store.query(kind="CommandAudit")
                  if isinstance(e, CommandAudit)]
        assert len(audits) - audits_before == len(ctl_replies)
        assert agent.risk.states.get(Scope.GLOBAL) is TradingState.ACTIVE
        if states_before is not None:
            assert dict(agent.risk.states.items()) == states_before
        # Both still work: a real control request and the agent's real events.
        ok = await nats_client.request("qtd.ctl.node-a.status", b"{}", timeout=5)
        assert msgspec.json.decode(ok.data)["ok"] is True
    print(f"fuzz live: inputs per subject {sent}, ctl {len(ctl_replies)}; "
          f"all rejected and counted")
