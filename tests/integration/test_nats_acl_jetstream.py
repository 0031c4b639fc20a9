"""etc/nats-server.conf's reply inboxes (issue 21, 6), on a real nats-server running the
shipped config with real ``qtd leader`` and ``qtd agent`` processes: each user reads only its
own inbox prefix. An agent cannot subscribe to ``_INBOX.>`` nor to another node's, the
leader's, the operator's or the deployer's; the leader's pulls, the deployer's CLI and the
operator's CLI work on theirs, and an agent still receives deploys.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.client import Client

from qtd.bus import EVENTS_STREAM, ensure_jetstream
from qtd.bus.jetstream import ensure_deploy_kv
from tests.agent_rig import wait_for, write_fleet
from tests.shipped import (
    ShippedNats,
    agent_config,
    leader_config,
    log_match,
    password,
    processes,
    qtd_process,
    run_qtd,
    shipped_nats,
)

NODES = ("node-a", "node-b")


async def _denied(errors: list[str], what: str) -> None:
    needle = what.lower()
    try:
        await wait_for(lambda: any("permissions violation" in e.lower() and needle in e.lower()
                                   for e in errors), timeout_s=5)
    except TimeoutError:
        raise AssertionError(f"no permissions violation for {what!r}; errors: {errors}") from None


async def _buckets(server: ShippedNats) -> Client:
    """The leader's connection, with the stream and every bucket created."""
    leader = await server.connect("leader")
    js = leader.jetstream()
    await ensure_jetstream(js, "qtd")
    await ensure_deploy_kv(js)
    return leader


async def test_each_user_reads_only_its_own_inbox(tmp_path: Path) -> None:
    async with shipped_nats(tmp_path / "nats", NODES) as server:
        await (await _buckets(server)).close()
        errors: list[str] = []
        rogue = await server.connect("agent-node-a", errors)
        for subject in ("_INBOX.>", "_INBOX.*", "_INBOX_agent-node-b.>", "_INBOX_leader.>",
                        "_INBOX_operator.>", "_INBOX_deployer.>", "*.>", ">"):
            await rogue.subscribe(subject)
            await _denied(errors, f'subscription to "{subject}"')
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
    return leader_config(tmp, url, bus={"user": user, "password": password(user),
                                        "name": f"qtd-{user}"})
