"""etc/nats-server.conf's accounts hold against a real nats-server.

The shipped config is started as it is, with only what a test must change: a free port, a
temporary store directory, no monitoring port and logins issued from a test keyring
(as ``qtd node init`` and ``qtd node add`` issue them). Then:

- a real qtd agent logged in as ``agent-node-a`` starts, trades and publishes its events into
  QTD_EVENTS, answers a control request and acknowledges a kill (the permissions are enough);
- the same user is refused everything the issue forbids: publishing under another node's
  subjects (events, heartbeats, kill acks), setting or clearing the kill key, purging or
  deleting streams, commanding or listening to another agent; and the leader sees none of it;
- the operator user may write the kill key (``qtd kill``) but no other control key,
  commands no agent directly, and cannot purge or delete the control bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client

from qtd.bus import EVENTS_STREAM, ensure_jetstream
from qtd.control import NodeRequest, new_kill
from qtd.control.transport import CONTROL_BUCKET, KILL_KEY, read_kills, request, send_kill
from qtd.deploy.fleet import Fleet
from qtd.events import Scope, TradingState
from tests.agent_rig import running_agent, wait_for, write_fleet
from tests.shipped import creds_for, denied, shipped_nats, user_inbox


@contextlib.asynccontextmanager
async def _server(tmp: Path) -> AsyncIterator[str]:
    async with shipped_nats(tmp) as server:
        yield server.url


async def _connect(url: str, user: str, errors: list[str]) -> Client:
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    return await nats.connect(url, user_credentials=str(creds_for(url, user)), error_cb=on_error,
                              allow_reconnect=False, connect_timeout=2,
                              inbox_prefix=user_inbox(user))


async def test_agent_user_can_run_an_agent_and_nothing_more(tmp_path: Path) -> None:
    async with _server(tmp_path) as url:
        leader_errors: list[str] = []
        leader = await _connect(url, "leader", leader_errors)
        js = leader.jetstream()
        await ensure_jetstream(js, "qtd")
        seen: list[str] = []

        async def on_msg(m: object) -> None:
            seen.append(m.subject)  # type: ignore[attr-defined]

        await leader.subscribe("qtd.>", cb=on_msg)

        # A real agent, as agent-node-a, trades and publishes into the stream.
        cfg = write_fleet(tmp_path / "fleet", {"flip": {"qty": 1.0}}, node="node-a",
                          bus_url=url)
        creds = creds_for(url, "agent-node-a")
        cfg.write_text(cfg.read_text().replace("[bus]\n", f'[bus]\ncreds_file = "{creds}"\n'))
        async with running_agent(cfg) as agent:
            async def fills_in_stream() -> bool:
                info = await js.stream_info(EVENTS_STREAM, subjects_filter="qtd.evt.node-a.>")
                return any(s.endswith(".Fill") for s in (info.state.subjects or {}))
            await wait_for(fills_in_stream, timeout_s=30)
            reply = await request(leader, "node-a", "status", NodeRequest(operator="t",
                                                                              reason="acl"))
            assert reply.ok, reply
            acks = await send_kill(leader, new_kill(reason="acl test", operator="t"),
                                   wait_acks_s=10, expect=1)
            assert [a.node for a in acks] == ["node-a"]
            assert acks[0].state is TradingState.HALTED
            assert agent.risk.states.get(Scope.GLOBAL) is TradingState.HALTED

        # The same user, by hand: everything outside its node is refused.
        errors: list[str] = []
        rogue = await _connect(url, "agent-node-a", errors)
        rjs = rogue.jetstream()
        seen.clear()
        for subject in ("qtd.evt.node-b.bot.Fill", "qtd.hb.node-b", "qtd.ack.kill.node-b",
                        "qtd.pnl.node-b.bot", "qtd.ctl.kill", "qtd.ctl.node-b.halt"):
            await rogue.publish(subject, b"{}")
            await denied(errors, subject)
        with pytest.raises(nats.errors.TimeoutError):  # the KV put never reaches the stream
            await rogue.request(f"$KV.{CONTROL_BUCKET}.{KILL_KEY}", b"{}", timeout=0.5)
        await denied(errors, f"$KV.{CONTROL_BUCKET}.{KILL_KEY}")
        for api in (f"$JS.API.STREAM.PURGE.KV_{CONTROL_BUCKET}",
                    f"$JS.API.STREAM.DELETE.{EVENTS_STREAM}",
                    f"$JS.API.STREAM.UPDATE.{EVENTS_STREAM}",
                    f"$JS.API.STREAM.MSG.DELETE.KV_{CONTROL_BUCKET}"):
            with pytest.raises(nats.errors.TimeoutError):
                await rjs._api_request(api, b"{}", timeout=0.5)
            await denied(errors, api)
        await rogue.subscribe("qtd.ctl.node-b.*")
        await denied(errors, "qtd.ctl.node-b.*")
        await rogue.subscribe("qtd.evt.>")
        await denied(errors, "qtd.evt.>")
        await rogue.flush()
        await asyncio.sleep(0.2)
        assert seen == [], seen  # the leader received none of the forged messages
        (kill,) = (await read_kills(leader)).kills
        assert kill.reason == "acl test"  # still the leader's kill
        stream = await js.stream_info(f"KV_{CONTROL_BUCKET}")
        assert stream.state.messages >= 1
        # Its own node's subjects still work on this connection.
        await rogue.publish("qtd.hb.node-a", b"{}")
        await rogue.flush()
        await wait_for(lambda: "qtd.hb.node-a" in seen)
        await rogue.close()

        # The operator CLI user may write the kill key (qtd kill, issue 22) but no other key
        # of the control bucket, command no agent directly and publish no events.
        op_errors: list[str] = []
        op = await _connect(url, "operator", op_errors)
        for subject in (f"$KV.{CONTROL_BUCKET}.preflight.node-a", "qtd.ctl.node-a.halt",
                        "qtd.evt.node-a.bot.Fill", "qtd.hb.leader"):
            await op.publish(subject, b"{}")
            await denied(op_errors, subject)
        ojs = op.jetstream()
        for api in (f"$JS.API.STREAM.PURGE.KV_{CONTROL_BUCKET}",
                    f"$JS.API.STREAM.DELETE.KV_{CONTROL_BUCKET}"):
            with pytest.raises(nats.errors.TimeoutError):
                await ojs._api_request(api, b"{}", timeout=0.5)
            await denied(op_errors, api)
        await op.close()

        # Deploys: the deployer writes the deploy buckets; an agent reads but cannot write them;
        # the deployer cannot touch the kill key.
        dep_errors: list[str] = []
        dep = await _connect(url, "deployer", dep_errors)
        fleet = await Fleet.open(dep.jetstream())
        await fleet.sources.put("abc123", b"source bytes")
        await fleet.deploy.put("desired.b1", b"{}")
        with pytest.raises(nats.errors.TimeoutError):
            await dep.request(f"$KV.{CONTROL_BUCKET}.{KILL_KEY}", b"", timeout=0.5)
        await denied(dep_errors, f"$KV.{CONTROL_BUCKET}.{KILL_KEY}")
        await dep.close()
        agent_errors: list[str] = []
        reader = await _connect(url, "agent-node-a", agent_errors)
        seen_by_agent = await Fleet.open(reader.jetstream())
        assert await seen_by_agent.source("abc123") == b"source bytes"
        assert (await seen_by_agent.deploy.get("desired.b1")).value == b"{}"
        with pytest.raises(nats.errors.TimeoutError):
            await reader.request("$KV.qtd_deploy.desired.b1", b"forged", timeout=0.5)
        await denied(agent_errors, "$KV.qtd_deploy.desired.b1")
        await reader.close()

        # No user at all: refused (raw protocol; nats-py leaks the socket of a refused
        # connect, which pytest's -W error would report).
        host, port = url.removeprefix("nats://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            info = msgspec.json.decode((await reader.readline()).removeprefix(b"INFO "))
            assert info["auth_required"] is True
            writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
            await writer.drain()
            answer = await asyncio.wait_for(reader.readline(), 5)
            assert b"Authorization Violation" in answer, answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        assert leader_errors == []
        await leader.close()
