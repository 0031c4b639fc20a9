"""etc/nats-server.conf against JetStream consumers and reply inboxes (issue 21, 3 and 6).

On a real nats-server running the shipped config, with real ``qtd leader`` and ``qtd agent``
processes where the finding is about them:

- no user but the leader may create a JetStream consumer: nats-server lets whoever may
  create one point its deliver subject anywhere (``qtd.hb.leader``, ``qtd.ctl.kill``)
  without checking that user's permissions;
- with the leader SIGKILLed, nothing another user can put on ``qtd.hb.leader`` (a consumer's
  idle heartbeats, JetStream API replies and agent command replies sent there as the reply
  subject of a request) keeps an agent out of its fail-safe;
- each user reads only its own inbox prefix: an agent cannot subscribe to ``_INBOX.>`` nor
  to another node's, the leader's, the operator's or the deployer's; the leader's pulls, the
  deployer's CLI and the operator's CLI work on theirs, and an agent still receives deploys.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy

from qtd.bus import CONTROL_BUCKET, EVENTS_STREAM, ensure_jetstream
from qtd.bus.jetstream import DEPLOY_BUCKET, SOURCES_BUCKET, ensure_deploy_kv
from qtd.control import NodeRequest
from qtd.control.transport import request
from qtd.events import Heartbeat, to_json
from tests.agent_rig import wait_for, write_fleet
from tests.shipped import (
    ShippedNats,
    agent_config,
    creds_for,
    denied,
    leader_config,
    log_match,
    processes,
    qtd_process,
    run_qtd,
    shipped_nats,
)

NODES = ("node-a", "node-b")
STREAMS = (f"KV_{CONTROL_BUCKET}", f"KV_{DEPLOY_BUCKET}", f"KV_{SOURCES_BUCKET}",
           EVENTS_STREAM)
FORGED_DELIVERIES = ("qtd.hb.leader", "qtd.ctl.kill")
LEADER_TIMEOUT_S = 1.0
FORGE_S = 4.0  # seconds of forging after the agents noticed the leader is gone


async def _buckets(server: ShippedNats) -> Client:
    """The leader's connection, with the stream and every bucket created."""
    leader = await server.connect("leader")
    js = leader.jetstream()
    await ensure_jetstream(js, "qtd")
    await ensure_deploy_kv(js)
    return leader


async def _try_consumer(nc: Client, stream: str, deliver: str, durable: str | None) -> Any:
    cfg = ConsumerConfig(deliver_subject=deliver, durable_name=durable, idle_heartbeat=0.5,
                         flow_control=True, deliver_policy=DeliverPolicy.ALL)
    return await nc.jetstream(timeout=1.0).add_consumer(stream, cfg)


async def test_no_user_but_the_leader_can_create_a_consumer(tmp_path: Path) -> None:
    async with shipped_nats(tmp_path, NODES) as server:
        leader = await _buckets(server)
        got: list[str] = []

        async def on_msg(m: Any) -> None:
            got.append(m.subject)

        for subject in FORGED_DELIVERIES:
            await leader.subscribe(subject, cb=on_msg)
        for user in ("agent-node-a", "deployer", "operator"):
            errors: list[str] = []
            nc = await server.connect(user, errors)
            tries = [_try_consumer(nc, stream, deliver, durable)
                     for stream in STREAMS for deliver in FORGED_DELIVERIES
                     for durable in (None, "forged")]
            results = await asyncio.gather(*tries, return_exceptions=True)
            created = [r for r in results if not isinstance(r, BaseException)]
            assert created == [], f"{user} created consumers: {created}"
            await denied(errors, "$JS.API.CONSUMER.CREATE.")
            with pytest.raises(nats.errors.TimeoutError):  # the legacy durable API too
                await nc.request(f"$JS.API.CONSUMER.DURABLE.CREATE.KV_{CONTROL_BUCKET}.forged",
                                 b'{"stream_name":"KV_qtd_control","config":{"durable_name":'
                                 b'"forged","deliver_subject":"qtd.ctl.kill"}}', timeout=0.5)
            await denied(errors, "$JS.API.CONSUMER.DURABLE.CREATE.")
        js = leader.jetstream()
        for stream in STREAMS:
            assert (await js.stream_info(stream)).state.consumer_count == 0, stream
        await asyncio.sleep(1.0)  # an idle heartbeat every 0.5 s, had a consumer been made
        assert got == []


def _agent(tmp: Path, node: str, url: str) -> Path:
    cfg = agent_config(tmp / node, node, url, {"flip": {"qty": 1.0}})
    cfg.write_text(cfg.read_text().replace(
        'failsafe = "NONE"', f'failsafe = "REDUCING"\nleader_timeout_s = {LEADER_TIMEOUT_S}'))
    return cfg


async def _forge_leader_heartbeats(server: ShippedNats, stop: asyncio.Event,
                                   sent: list[int]) -> None:
    """Put on qtd.hb.leader everything users other than the leader can make arrive there;
    ``sent[0]`` counts the attempts."""
    rogue = await server.connect("agent-node-a")
    op = await server.connect("operator")
    dep = await server.connect("deployer")
    hb = to_json(Heartbeat(node="leader", ts_event=time.time_ns(), ts_init=time.time_ns(),
                           role="leader"))
    with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):  # refused today
        await _try_consumer(rogue, f"KV_{CONTROL_BUCKET}", "qtd.hb.leader", "forged-hb")
    while not stop.is_set():
        await rogue.publish("qtd.hb.leader", hb)  # refused by the ACL
        await rogue.publish("$JS.API.INFO", b"", reply="qtd.hb.leader")
        await rogue.publish(f"$JS.API.STREAM.INFO.KV_{CONTROL_BUCKET}", b"",
                            reply="qtd.hb.leader")
        await dep.publish(f"$JS.API.STREAM.INFO.KV_{DEPLOY_BUCKET}", b"", reply="qtd.hb.leader")
        await op.publish("qtd.ctl.node-b.status", b"{}", reply="qtd.hb.leader")
        sent[0] += 5
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


async def _status(leader: Client, node: str) -> dict[str, Any]:
    reply = await request(leader, node, "status", NodeRequest(operator="t", reason="acl"))
    assert reply.ok, reply
    return reply.data


async def test_only_the_leader_keeps_agents_out_of_their_failsafe(tmp_path: Path) -> None:
    async with shipped_nats(tmp_path / "nats", NODES) as server:
        await (await _buckets(server)).close()
        with processes() as procs:
            logs = {node: tmp_path / f"{node}.log" for node in NODES}
            for node in NODES:
                procs.append(qtd_process(["agent", "--config", str(_agent(tmp_path, node,
                                                                           server.url))],
                                         logs[node]))
            for node in NODES:  # no leader yet
                await log_match(logs[node], rb"leader absent")
            leader = qtd_process(["leader", "--config", str(leader_config(tmp_path,
                                                                           server.url))],
                                 tmp_path / "leader.log")
            procs.append(leader)
            back = {node: (await log_match(logs[node], rb"leader back")).end()
                    for node in NODES}  # the real leader's heartbeat counts

            stop, forged = asyncio.Event(), [0]
            forger = asyncio.create_task(_forge_leader_heartbeats(server, stop, forged))
            try:
                await asyncio.sleep(0.5)
                leader.send_signal(signal.SIGKILL)
                leader.wait()
                for node in NODES:
                    await log_match(logs[node], rb"leader absent", start=back[node])
                await asyncio.sleep(FORGE_S)
            finally:
                stop.set()
                await forger
            watcher = await server.connect("leader")
            for node in NODES:
                data = await _status(watcher, node)
                assert data["global"] == "REDUCING", (node, data)
                assert data["leader_silence_s"] >= FORGE_S, (node, data)
                after = logs[node].read_bytes()[back[node]:]
                assert b"leader back" not in after, (node, after[-2000:])
                print(f"\n{node}: leader SIGKILLed, {forged[0]} forgery attempts aimed "
                      f"at qtd.hb.leader; GLOBAL {data['global']}, leader silence "
                      f"{data['leader_silence_s']:.1f} s")


async def test_each_user_reads_only_its_own_inbox(tmp_path: Path) -> None:
    async with shipped_nats(tmp_path / "nats", NODES) as server:
        await (await _buckets(server)).close()
        errors: list[str] = []
        rogue = await server.connect("agent-node-a", errors)
        for subject in ("_INBOX.>", "_INBOX.*", "_INBOX_agent-node-b.>", "_INBOX_leader.>",
                        "_INBOX_operator.>", "_INBOX_deployer.>", "*.>", ">"):
            await rogue.subscribe(subject)
            await denied(errors, f'subscription to "{subject}"')
        # its own inbox works: a JetStream API round trip
        info = await rogue.jetstream(timeout=5).stream_info(EVENTS_STREAM)
        assert info.config.name == EVENTS_STREAM

        with processes() as procs:
            node_b = agent_config(tmp_path / "node-b", "node-b", server.url,
                                  {"b1": {"qty": 1.0}}, extra="params_poll_s = 0.1\n",
                                  market="speed = 86400.0\nloop = true")
            procs.append(qtd_process(["agent", "--config", str(node_b)],
                                     tmp_path / "node-b.log"))
            procs.append(qtd_process(["leader", "--config", str(leader_config(tmp_path,
                                                                               server.url))],
                                     tmp_path / "leader.log"))
            deployer = _user_config(tmp_path / "deployer", server.url, "deployer")
            operator = _user_config(tmp_path / "operator", server.url, "operator")

            async def leader_knows_node_b() -> bool:  # from the leader's pulls
                done = await asyncio.to_thread(run_qtd, ["versions", "--config",
                                                         str(deployer)])
                return "node-b" in done.stdout

            await wait_for(leader_knows_node_b, 60, step_s=0.5)
            write_fleet(tmp_path / "repo", {"b1": {"qty": 4.0}})
            done = await asyncio.to_thread(run_qtd, ["deploy", str(tmp_path / "repo"),
                                                     "--no-smoke", "-m", "acl",
                                                     "--config", str(deployer)])
            assert done.returncode == 0, done.stdout + done.stderr
            await log_match(tmp_path / "node-b.log", rb"deploy: b1 runs v1")
            done = await asyncio.to_thread(run_qtd, ["alerts", "--config", str(operator)])
            assert done.returncode == 0, done.stdout + done.stderr
        assert not [e for e in errors if "_inbox_agent-node-a" in e.lower()], errors


def _user_config(tmp: Path, url: str, user: str) -> Path:
    """A leader-shaped TOML whose [bus] logs in as ``user`` (what the CLIs read)."""
    return leader_config(tmp, url, bus={"creds_file": str(creds_for(url, user)),
                                        "name": f"qtd-{user}"})
