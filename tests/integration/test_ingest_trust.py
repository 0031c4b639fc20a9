"""The leader trusts an event only for what its sender may say (issue 21, findings 2 and 4).

On the shipped ``etc/nats-server.conf`` (auth on, agents node-a and node-b), a real leader
process and a real node-b agent process:

- ``agent-node-a`` may publish only under ``qtd.evt.node-a.>``, but writes ``node="node-b"``
  in the payload and ``Nats-Msg-Id: node-b:<inc>:<seq>`` pre-claiming node-b's next 200
  seqs (huge QQQ fills). The leader refuses every one (subject, payload and Msg-Id nodes must
  agree), counts them per subject node and claimed node, pages P1, never applies them (no
  fleet-cap kill), and every one of node-b's real events lands in fleet.db;
- a *different* event under an origin fleet.db already holds (a store that went backwards
  and reused its seqs) is kept out and paged P1; an identical re-send is a plain duplicate.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

from qtd.control.transport import read_kills
from qtd.events import Fill, Side, decode, to_json
from qtd.store import EventStore
from tests.agent_rig import last_seq_of, seq_above, store_events, wait_for
from tests.shipped import (
    agent_config,
    leader_config,
    leader_web_url,
    processes,
    qtd_process,
    shipped_nats,
)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        body = r.read()
    return body.decode() if url.endswith("/metrics") else json.loads(body)


async def _get_async(url: str) -> Any:
    return await asyncio.to_thread(_get, url)


def _fleet_rows(db: Path, node: str) -> list[tuple[str, int, bytes]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [(r[0], int(r[1]), bytes(r[2])) for r in conn.execute(
            "SELECT incarnation, seq, payload FROM events WHERE node = ? ORDER BY seq",
            (node,))]
    finally:
        conn.close()


def _fill(node: str, seq: int, qty: str = "2000", trade: str = "t") -> Fill:
    return Fill(node=node, bot="revert-qqq", ts_event=1, ts_init=1, seq=seq,
                client_order_id=f"{node}.revert-qqq.x.{seq}", trade_id=f"{trade}{seq}",
                account="paper-main", venue="paper", symbol="QQQ", side=Side.BUY,
                qty=Decimal(qty), price=Decimal("500"))


async def _incarnation(db: Path) -> str:
    store = await EventStore.open(db, readonly=True)
    try:
        return store.incarnation
    finally:
        await store.close()


async def test_forged_events_are_refused_counted_paged_and_drop_nothing(tmp_path: Path
                                                                        ) -> None:
    async with shipped_nats(tmp_path / "nats", ("node-a", "node-b")) as nats_srv:
        lcfg = leader_config(tmp_path, nats_srv.url, caps=True)
        llog = tmp_path / "leader.log"
        bcfg = agent_config(tmp_path / "b", "node-b", nats_srv.url, {"flip": {"qty": 1.0}})
        bdb = tmp_path / "b" / "state" / "events.db"
        with processes() as procs:
            procs.append(qtd_process(["leader", "--config", str(lcfg)], llog))
            web = await leader_web_url(llog)
            procs.append(qtd_process(["agent", "--config", str(bcfg)], tmp_path / "b.log"))
            await wait_for(lambda: seq_above(bdb, 5), 60)
            inc = await _incarnation(bdb)
            start = await last_seq_of(bdb)

            rogue = await nats_srv.connect("agent-node-a")
            js = rogue.jetstream()
            claimed = range(start + 200, start + 400)  # node-b's next ids, pre-claimed
            taken = 0  # claims JetStream stored (node-b had not used the id yet)
            for seq in claimed:
                ack = await js.publish("qtd.evt.node-a.revert-qqq.Fill",
                                       to_json(_fill("node-b", seq)),
                                       headers={"Nats-Msg-Id": f"node-b:{inc}:{seq}"})
                taken += not ack.duplicate
            # one node disagreeing at a time: the payload, then the Msg-Id
            await js.publish("qtd.evt.node-a.revert-qqq.Fill", to_json(_fill("node-b", 1)),
                             headers={"Nats-Msg-Id": "node-a:rogue:1"})
            await js.publish("qtd.evt.node-a.revert-qqq.Fill", to_json(_fill("node-a", 2)),
                             headers={"Nats-Msg-Id": f"node-b:{inc}:{start + 450}"})
            await js.publish("qtd.evt.node-a.revert-qqq.Fill", to_json(_fill("node-a", 3)),
                             headers={"Nats-Msg-Id": "garbage"})
            forged = taken + 3
            assert taken > 100, "node-b used the ids before they were claimed: no attack"

            await wait_for(lambda: seq_above(bdb, start + 460), 120)  # past every claim
            procs[1].terminate()  # node-b stops cleanly: final flush to JetStream
            await asyncio.to_thread(procs[1].wait, 60)
            mine = await store_events(bdb)
            fleet_db = tmp_path / "leader" / "fleet.db"

            def landed() -> bool:
                return len(_fleet_rows(fleet_db, "node-b")) >= len(mine)

            await wait_for(landed, 60)
            rows = _fleet_rows(fleet_db, "node-b")
            assert [(r[0], r[1]) for r in rows] == [(inc, e.seq) for e in mine]
            assert [decode(r[2]) for r in rows] == mine  # node-b's own events, every one

            metrics = await _get_async(f"{web}/metrics")
            m = re.search(r'qtd_forged_events_total\{claimed_node="node-b",'
                          r'subject_node="node-a"\} (\S+)', metrics)
            assert m is not None and float(m.group(1)) == taken + 1, metrics[-2000:]
            m = re.search(r'qtd_forged_events_total\{claimed_node="node-a",'
                          r'subject_node="node-a"\} (\S+)', metrics)
            assert m is not None and float(m.group(1)) == 2
            snap = await _get_async(f"{web}/api/snapshot")
            assert snap["ingest"]["forged"] == forged
            alerts = await _get_async(f"{web}/api/alerts")
            assert [(a["key"], a["severity"], a["node"]) for a in alerts
                    if a["key"].startswith("forged:")] == [("forged:node-a", "P1", "node-a")]
            assert not [p for p in snap["positions"] if p["symbol"] == "QQQ"]
            leader_nc = await nats_srv.connect("leader")
            kills = await read_kills(leader_nc)  # (node-b's fast flips may trip order_spike)
            assert not [k for k in kills.kills if "QQQ" in k.reason], kills
            assert b"symbol_exposure" not in llog.read_bytes()  # no cap saw the forgeries
            assert _fleet_rows(fleet_db, "node-a") == []


async def test_a_different_event_under_a_stored_msg_id_is_refused_and_paged(
    tmp_path: Path,
) -> None:
    async with shipped_nats(tmp_path / "nats", ("node-a",)) as nats_srv:
        lcfg = leader_config(tmp_path, nats_srv.url)
        llog = tmp_path / "leader.log"
        with processes() as procs:
            procs.append(qtd_process(["leader", "--config", str(lcfg)], llog))
            web = await leader_web_url(llog)
            agent = await nats_srv.connect("agent-node-a")
            js = agent.jetstream()
            subject = "qtd.evt.node-a.revert-qqq.Fill"
            first = _fill("node-a", 7, qty="10")
            await js.publish(subject, to_json(first), headers={"Nats-Msg-Id": "node-a:i1:7"})
            # same origin (node-a, i1, 7) under Msg-Ids JetStream does not dedupe
            await js.publish(subject, to_json(first), headers={"Nats-Msg-Id": "node-a:i1:07"})
            other = _fill("node-a", 7, qty="50", trade="u")
            await js.publish(subject, to_json(other), headers={"Nats-Msg-Id": "node-a:i1:007"})

            async def counted() -> bool:  # both later events judged, alerts raised
                ingest = (await _get_async(f"{web}/api/snapshot"))["ingest"]
                alerts = await _get_async(f"{web}/api/alerts")
                return bool(ingest["duplicates"] + ingest.get("conflicts", 0) >= 2
                            and (alerts or not ingest.get("conflicts")))

            await wait_for(counted, 60)
            rows = _fleet_rows(tmp_path / "leader" / "fleet.db", "node-a")
            assert [decode(r[2]) for r in rows] == [first]  # the first stays the record
            alerts = await _get_async(f"{web}/api/alerts")
            assert [(a["key"], a["severity"]) for a in alerts] == [("conflict:node-a", "P1")]
            ingest = (await _get_async(f"{web}/api/snapshot"))["ingest"]
            assert (ingest["duplicates"], ingest.get("conflicts")) == (1, 1)
