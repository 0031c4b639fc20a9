"""The outbox audit under the shipped ACL (issue 21, finding 5), on real processes: the
shipped ``etc/nats-server.conf`` with auth on, a real agent process, real SQLite files.

``agent-node-a`` may read its own node's last event in ``QTD_EVENTS`` (a direct get by
subject) and nothing else of the stream; an agent (re)connecting audits without "cannot read
the stream", and re-sends what the stream lost. (The loss is made with ``delete_msg``, which
leaves the deleted ids in JetStream's duplicate window, unlike a NATS host crash: the re-send
lands because the outbox re-takes an id JetStream holds for an event it does not have,
:mod:`qtd.outbox_ids`.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import pytest

from qtd.bus import EVENTS_STREAM, ensure_jetstream
from tests.agent_rig import seq_above, store_events, stream_events, wait_for
from tests.shipped import agent_config, log_match, processes, qtd_process, shipped_nats

BOTS = {"flip": {"qty": 1.0}, "flop": {"qty": 2.0}}


async def _node_stream(js: Any, node: str) -> list[tuple[str, Any]]:
    return [(mid, ev) for mid, ev in await stream_events(js) if ev.node == node]


async def test_audit_reads_its_own_node_only_and_resends_what_the_stream_lost(
    tmp_path: Path,
) -> None:
    async with shipped_nats(tmp_path / "nats", ("node-a", "node-b")) as srv:
        leader = await srv.connect("leader")
        ljs = leader.jetstream()
        await ensure_jetstream(ljs)
        errors: list[str] = []
        rogue = await srv.connect("agent-node-a", errors)
        rjs = rogue.jetstream()
        for subject, body in (("$JS.API.DIRECT.GET.QTD_EVENTS.qtd.evt.node-b.>", b""),
                              ("$JS.API.DIRECT.GET.QTD_EVENTS", b'{"seq": 1}'),
                              ("$JS.API.STREAM.MSG.GET.QTD_EVENTS", b'{"seq": 1}')):
            with pytest.raises(nats.errors.TimeoutError):
                await rogue.request(subject, body, timeout=0.5)
            await wait_for(lambda s=subject: any(s.lower() in e.lower() for e in errors), 5)
        # a body cannot widen the allowed subject-form request to another node
        reply = await rogue.request("$JS.API.DIRECT.GET.QTD_EVENTS.qtd.evt.node-a.>",
                                    b'{"next_by_subj": "qtd.evt.node-b.>", "seq": 1}',
                                    timeout=2)
        assert reply.headers and reply.headers.get("Status") == "408", reply.headers
        with pytest.raises(nats.js.errors.NotFoundError):  # allowed, nothing there yet
            await rjs.get_last_msg(EVENTS_STREAM, "qtd.evt.node-a.>", direct=True)

        cfg = agent_config(tmp_path / "a", "node-a", srv.url, BOTS)
        db = tmp_path / "a" / "state" / "events.db"
        log = tmp_path / "a.log"
        with processes() as procs:
            procs.append(qtd_process(["agent", "--config", str(cfg)], log))
            await wait_for(lambda: seq_above(db, 200), 60)
            procs[0].terminate()
            await asyncio.to_thread(procs[0].wait, 60)
        before = await _node_stream(ljs, "node-a")
        stored = await store_events(db)
        assert [ev.seq for _, ev in before] == [ev.seq for ev in stored]
        # the NATS host "crashes" before its fsync: the stream loses the node's last 40
        info = await ljs.stream_info(EVENTS_STREAM)
        for sseq in range(info.state.last_seq - 39, info.state.last_seq + 1):
            await ljs.delete_msg(EVENTS_STREAM, sseq)
        with processes() as procs:
            procs.append(qtd_process(["agent", "--config", str(cfg)], log))
            await log_match(log, rb"only up to seq \d+, the watermark is \d+: it lost 40 ")
            await log_match(log, rb"agent node-a ready")
            procs[0].terminate()
            await asyncio.to_thread(procs[0].wait, 60)
        assert b"cannot read the stream" not in log.read_bytes()
        after = await _node_stream(ljs, "node-a")
        got = [ev.seq for _, ev in after]
        assert sorted(set(got)) == [ev.seq for ev in await store_events(db)]  # none missing
