"""Standby leader on a real nats-server: two leader instances compete for the KV lease; only
the holder pages, trips caps and kills; when it dies the standby takes over (warm: its own
consumer and fleet.db), counts nothing twice, and catches a self-trade that happened while
no leader was active."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import nats.js.errors
import pytest
from nats.aio.client import Client

from qtd.bus import EmbeddedNatsServer
from qtd.errors import OperationalError
from qtd.events import Scope, Side
from qtd.leader.config import CapsConfig, LeaderConfig, LeaseConfig, SelfTradeCap
from qtd.leader.daemon import Leader, running_leader, start_leader
from qtd.leader.lease import LeaseRecord
from qtd.projections import Projections
from tests.integration.leader_peer import FakeAgent, PageReceiver, agents, leader_config, wait_for
from tests.integration.test_leader_ingest import _crash

NODES = ["node-a", "node-b", "node-c"]
TTL_S, RENEW_S, WINDOW_S = 1.0, 0.2, 3.0


@pytest.fixture
def receivers() -> Iterator[tuple[PageReceiver, PageReceiver]]:
    a, b = PageReceiver(), PageReceiver()
    yield a, b
    a.close()
    b.close()


def _cfg(tmp: Path, server: EmbeddedNatsServer, instance: str, url: str) -> LeaderConfig:
    base = leader_config(tmp / instance, server,
                         caps=CapsConfig(self_trade=SelfTradeCap(window_s=WINDOW_S, level="L2")),
                         page_url=url)
    return msgspec.structs.replace(base, lease=LeaseConfig(
        enabled=True, instance=instance, ttl_s=TTL_S, renew_s=RENEW_S))


async def _holder(nc: Client) -> str:
    kv = await nc.jetstream().key_value("qtd_leader")
    return msgspec.json.decode((await kv.get("active")).value, type=LeaseRecord).holder


class Sampler:
    """Samples both leaders' ``active`` every millisecond; records any overlap."""

    def __init__(self, *leaders: Leader) -> None:
        self.leaders = leaders
        self.samples = 0
        self.both: list[int] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            if sum(1 for x in self.leaders if x.active) > 1:
                self.both.append(self.samples)
            self.samples += 1
            await asyncio.sleep(0.001)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def _agent_marks(leader: Leader) -> dict[tuple[str, str], int]:
    return {k: v for k, v in leader.db.marks().items() if k[0] != "leader"}


def _cap_pages(r: PageReceiver) -> list[str]:
    """Pages of a self-trade cap trip (not their recovery pages after a resume)."""
    return [b["message"] for b in r.bodies
            if "self_trade" in b["message"] and "RECOVERED" not in b["title"]]


async def _positions(p: FakeAgent) -> list[tuple[object, ...]]:
    proj = await Projections().rebuild(p.store.replay_batches())
    return sorted((x.as_tuple() for x in proj.positions.values()), key=str)


async def _trade(peers: list[FakeAgent], rounds: int) -> None:
    for i in range(rounds):
        for k, p in enumerate(peers):
            side = Side.BUY if (i + k) % 3 else Side.SELL
            await p.trade(f"bot{i % 2}", "QQQ", side, "1", f"{100 + i % 5}",
                          account=f"{p.node}-bot{i % 2}")  # one account per bot
        await asyncio.sleep(0.01)


async def test_standby_takes_over_one_active_at_a_time_without_double_counting(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client,
    receivers: tuple[PageReceiver, PageReceiver],
) -> None:
    ra, rb = receivers
    cfg_a = _cfg(tmp_path, nats_server, "a", ra.url)
    cfg_b = _cfg(tmp_path, nats_server, "b", rb.url)
    async with agents(tmp_path, nats_server, NODES) as peers:
        a = await start_leader(cfg_a)
        await wait_for(lambda: a.active, what="first leader active")
        b = await start_leader(cfg_b)
        sampler = Sampler(a, b)
        try:
            trading = asyncio.create_task(_trade(peers, 60))
            assert await _holder(nats_client) == "a" and not b.active
            await peers[0].trade("x", "SPY", Side.BUY, "1", "100", account="shared1")
            await peers[1].trade("y", "SPY", Side.SELL, "1", "100", account="shared1")
            await wait_for(lambda: all(p.kills for p in peers), what="kill from the active")
            await wait_for(lambda: len(_cap_pages(ra)) == 1, what="page from the active")
            first = peers[0].kills[0]
            assert (first.scope, first.key) == (Scope.ACCOUNT, "shared1")
            await wait_for(lambda: _agent_marks(b) == _agent_marks(a), what="standby caught up")
            await wait_for(lambda: b.view.kill.active, what="standby saw the kill")
            reply = await nats_client.request("qtd.ctl.leader.resume", msgspec.json.encode(
                {"operator": "alice", "reason": "checked"}), timeout=5)
            assert msgspec.json.decode(reply.data)["ok"]  # answered by the active one only
            await asyncio.sleep(WINDOW_S)  # shared1 leaves the self-trade window
            assert rb.bodies == [] and not b.caps.tripped  # the standby paged nothing
            await _crash(a)  # no lease release: the standby must wait the lease out
            await peers[0].trade("x", "IWM", Side.BUY, "1", "50", account="shared2")
            await peers[2].trade("z", "IWM", Side.SELL, "1", "50", account="shared2")
            await wait_for(lambda: b.active, what="standby takeover")
            assert await _holder(nats_client) == "b"
            await wait_for(lambda: all(len(p.kills) == 2 for p in peers),
                           what="self-trade seen while no leader was active, killed on takeover")
            second = peers[2].kills[1]
            assert (second.scope, second.key) == (Scope.ACCOUNT, "shared2")
            await wait_for(lambda: len(_cap_pages(rb)) == 1, what="page from the new active")
            await trading
            await wait_for(lambda: all(b.db.marks().get((p.node, p.store.incarnation))
                                       == p.store.last_seq for p in peers), what="caught up")
            await asyncio.sleep(0.3)  # a late duplicate or extra kill would show up now
            for p in peers:  # the new active leader counted every event exactly once
                got = sorted((x.as_tuple() for x in
                              b.view.projections[p.node].positions.values()), key=str)
                assert got == await _positions(p), p.node
                assert await b.db.count(p.node) == await p.store.count()
            assert b.status.snapshot().totals.fills == sum(p.counter for p in peers)
        finally:
            await sampler.stop()
            await b.stop()
        assert sampler.samples > 1000 and sampler.both == []  # never two active leaders
        assert [len(p.kills) for p in peers] == [2, 2, 2]
        assert len(_cap_pages(ra)) == 1 and len(_cap_pages(rb)) == 1
        assert not any("shared1" in m for m in _cap_pages(rb))


async def test_graceful_stop_hands_the_lease_over_at_once(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client,
    receivers: tuple[PageReceiver, PageReceiver],
) -> None:
    ra, rb = receivers
    cfg_a = _cfg(tmp_path, nats_server, "a", ra.url)
    cfg_b = _cfg(tmp_path, nats_server, "b", rb.url)
    slow = LeaseConfig(enabled=True, instance="b", ttl_s=30.0, renew_s=0.2)
    cfg_a = msgspec.structs.replace(cfg_a, lease=msgspec.structs.replace(slow, instance="a"))
    cfg_b = msgspec.structs.replace(cfg_b, lease=slow)
    a = await start_leader(cfg_a)
    try:
        await wait_for(lambda: a.active, what="a active")
        async with running_leader(cfg_b) as b:
            await asyncio.sleep(0.5)
            assert not b.active and await _holder(nats_client) == "a"
            with pytest.raises(OperationalError, match="standby"):
                await b.kill.trigger_kill(Scope.GLOBAL, "", "from the standby", "bob")
            await a.stop()
            # a 30 s lease: only the release lets b in within this wait
            await wait_for(lambda: b.active, 5.0, "takeover after release")
            assert await _holder(nats_client) == "b" and not a.active
    finally:
        if a.active:
            await a.stop()


def _toml(tmp: Path, server: EmbeddedNatsServer, instance: str) -> Path:
    path = tmp / f"leader-{instance}.toml"
    path.write_text(f"""
fleet_db = "{tmp / instance / 'fleet.db'}"
[bus]
servers = ["{server.url}"]
name = "qtd-leader-{instance}"
[ingest]
fetch_timeout_s = 0.05
[liveness]
check_interval_s = 0.05
heartbeat_interval_s = 0.2
[lease]
enabled = true
instance = "{instance}"
ttl_s = {TTL_S}
renew_s = {RENEW_S}
""")
    return path


async def _status_replies(nc: Client) -> list[dict[str, object]]:
    """Every reply to one ``status`` request within 0.5 s (a standby must stay silent)."""
    inbox = nc.new_inbox()
    got: list[dict[str, object]] = []

    async def on_reply(msg: object) -> None:
        got.append(msgspec.json.decode(msg.data))  # type: ignore[attr-defined]

    sub = await nc.subscribe(inbox, cb=on_reply)
    await nc.publish("qtd.ctl.leader.status", b"{}", reply=inbox)
    await asyncio.sleep(0.5)
    await sub.unsubscribe()
    return got


async def test_sigkilled_leader_process_is_replaced_by_the_standby_process(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client,
) -> None:
    procs = {}
    try:
        for name in ("p1", "p2"):
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "qtd.cli", "leader", "--config",
                 str(_toml(tmp_path, nats_server, name))],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if name == "p1":
                await wait_for_async(lambda: _holder(nats_client), "p1", "p1 holds the lease")
        await asyncio.sleep(1.0)  # p2 is up and competing
        [reply] = await _status_replies(nats_client)
        assert (reply["instance"], reply["active"]) == ("p1", True)
        procs["p1"].send_signal(signal.SIGKILL)  # no release: p2 must wait the lease out
        procs["p1"].wait(10)
        await wait_for_async(lambda: _holder(nats_client), "p2", "p2 takes the lease over")
        [reply] = await _status_replies(nats_client)
        assert (reply["instance"], reply["active"]) == ("p2", True)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
                p.wait(10)


async def wait_for_async(get: object, want: str, what: str, timeout_s: float = 20.0) -> None:
    """Poll the coroutine function ``get`` until it returns ``want``; fail naming ``what``
    after ``timeout_s`` (a hang guard)."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                with contextlib.suppress(nats.js.errors.KeyNotFoundError,
                                         nats.js.errors.NotFoundError):  # no lease key yet
                    if await get() == want:  # type: ignore[operator]
                        return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}") from None
