"""``qtd deploy --canary`` end to end: a real nats-server, a real agent in this event loop
(its own SQLite store, paper broker, replayed bars), the real deploy CLI, and (for the
rollback) a real leader paging a local HTTP receiver.

The bot holds a target position every bar (``target_position(qty × side)``) on a rising
market. The incumbent holds 10 long. A good candidate (20 long) ramps 10 % → 25 % → 50 % →
100 % and becomes the bot's version; a bad one (10 short) loses money and is rolled back.
Shares move between ``b1`` and ``b1~canary`` by :class:`~qtd.events.PositionTransfer`, not
by trading (no wash trades: :mod:`qtd.quality.surveil` over the agent's store finds
nothing); each step's split is read back from the fills and transfers in the store."""

from __future__ import annotations

import io
import textwrap
from decimal import ROUND_DOWN, Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client

from qtd.admit import admit_bot
from qtd.agent.canary_ramps import canary_bot
from qtd.agent.daemon import Agent
from qtd.bus import EmbeddedNatsServer
from qtd.cli import build_parser
from qtd.commands.deploy import run_deploy
from qtd.control import NodeReply, NodeRequest
from qtd.events import (
    BotVersion,
    CanaryStep,
    Fill,
    OrderIntent,
    ParamsChanged,
    PositionTransfer,
    Scope,
    TradingStateChanged,
)
from qtd.feeds import Bar
from qtd.gates import GateResult, write_gate
from qtd.leader.daemon import Leader, running_leader
from qtd.quality.surveil import Surveillance
from qtd.runner import BotState
from tests.agent_rig import running_agent, wait_for, write_fleet
from tests.integration.leader_peer import PageReceiver, leader_config

HOLDER = '''
    from qtd.strategy import Strategy

    class Holder(Strategy):
        """Holds qty x side every bar."""

        class Params(Strategy.Params):
            qty: float = 10.0
            side: int = 1

        def on_bar(self, bar):
            self.target_position(self.params.qty * self.params.side)
'''
STEPS = (0.10, 0.25, 0.50, 1.0)
CANARY = ("params_poll_s = 0.1\n[canary]\nstep_s = 1.0\nmin_observations = 3\nwindow = 3\n"
          "check_s = 0.1\ncapital = 10000.0\nperiods_per_year = 1000.0\n")
MARKET = "speed = 600.0"  # one-minute bars, 10 per second


def _rising(n: int = 4000, symbol: str = "GOOG") -> list[Bar]:
    """A market that rises every bar (by 0.08 and 0.02 in turn): long gains, short loses."""
    start, step = 1_600_000_000_000_000_000, 60_000_000_000
    out = []
    for i in range(n):
        px = Decimal(10_000 + 5 * i + 3 * (i % 2)) / 100
        out.append(Bar(symbol, start + i * step, step, px, px, px, px, Decimal(1000)))
    return out


def _fleet(root: Path, params: dict[str, Any], **kw: Any) -> Path:
    cfg = write_fleet(root, {"b1": {**params, "_strategy": "holder"}}, **kw)
    (root / "strategies" / "holder.py").write_text(textwrap.dedent(HOLDER))
    return cfg


def _canary_node(tmp_path: Path, url: str) -> Path:
    """node-a's fleet on the bus at ``url``: b1 holding 10, the canary settings, and the
    market at 10 bars a second."""
    return _fleet(tmp_path / "node-a", {"qty": 10.0}, node="node-a", bus_url=url,
                  market=MARKET, extra=CANARY)


async def _repo(root: Path, params: dict[str, Any]) -> Path:
    """The operator's checkout: b1 as a live bot with ``params`` and a passed gate."""
    _fleet(root, params)
    bot = root / "bots" / "b1.toml"
    adm = await admit_bot(bot, smoke=False)
    write_gate(bot, GateResult(passed=True, checks=[], source_hash=adm.source_hash,
                               params_hash=adm.params_hash))
    bot.write_text('stage = "live"\n' + bot.read_text())
    return bot


async def _deploy(bot: Path, url: str, canary: bool = True) -> str:
    args = build_parser().parse_args(["deploy", str(bot), "--no-smoke", "--stage", "live",
                                      *(["--canary"] if canary else []), "-m", "canary",
                                      "--server", url])
    out = io.StringIO()
    code = await run_deploy(args, out)
    assert code == 0, out.getvalue()
    return out.getvalue()


def _lots(x: Decimal) -> Decimal:
    return x.to_integral_value(rounding=ROUND_DOWN)


def _holdings(events: list[Any], before: int) -> dict[str, Decimal]:
    """Each bot's position from the store's fills and transfers with ``seq < before``."""
    held: dict[str, Decimal] = {}
    for e in events:
        if e.seq >= before:
            break
        if isinstance(e, Fill):
            held[e.bot] = held.get(e.bot, Decimal(0)) + e.side.sign * e.qty
        elif isinstance(e, PositionTransfer):
            held[e.from_bot] = held.get(e.from_bot, Decimal(0)) - e.qty
            held[e.to_bot] = held.get(e.to_bot, Decimal(0)) + e.qty
    return held


def _split_per_step(events: list[Any], old_qty: Decimal, new_qty: Decimal) -> list[tuple[
        float, Decimal, Decimal, Decimal, Decimal]]:
    """For each ramp step: (share, candidate's position when the step ended, its expected
    floor(new × share), incumbent's position, expected floor(old × (1 - share)))."""
    steps = [e for e in events if isinstance(e, CanaryStep)]
    out = []
    for cur, nxt in pairwise(steps):
        if cur.action not in ("start", "advance"):
            continue
        held = _holdings(events, nxt.seq)
        f = Decimal(str(cur.fraction))
        out.append((cur.fraction, held.get(canary_bot("b1"), Decimal(0)), _lots(new_qty * f),
                    held.get("b1", Decimal(0)), _lots(old_qty * (1 - f))))
    return out


def _transfers(events: list[Any]) -> list[tuple[str, str, Decimal]]:
    return [(e.from_bot, e.to_bot, e.qty) for e in events if isinstance(e, PositionTransfer)]


def _intents(events: list[Any], bot: str, after: int = 0, before: int | None = None
             ) -> list[OrderIntent]:
    return [e for e in events if isinstance(e, OrderIntent) and e.bot == bot
            and after < e.seq and (before is None or e.seq < before)]


def _no_wash(events: list[Any]) -> None:
    """The fleet's own surveillance, run over the agent's whole store, finds nothing."""
    findings = Surveillance().feed_many(events)
    assert findings == [], [(f.pattern, f.message) for f in findings]


async def test_a_healthy_canary_ramps_to_100_and_becomes_the_running_version(
    tmp_path: Path, nats_server: EmbeddedNatsServer
) -> None:
    url = nats_server.url
    cfg = _canary_node(tmp_path, url)
    bot = await _repo(tmp_path / "repo", {"qty": 20.0})
    async with running_leader(leader_config(tmp_path, nats_server)) as leader, \
            running_agent(cfg, items={"goog_1d": _rising()}) as a:
        leader.versions.deadline_s = 0.5  # a ramp outlives any deploy deadline
        slot = a.supervisor.slots["b1"]
        old = slot.content_hash
        await wait_for(lambda: a.deploys.running.get("b1") == 0)
        await wait_for(lambda: _held(a, "b1") == 10)
        out = await _deploy(bot, url)
        assert "CANARY" in out
        await wait_for(lambda: a.canary.is_active("b1"))
        assert slot.content_hash == old  # the candidate runs beside the incumbent
        await wait_for(lambda: _statuses(leader) == ["canary"], 10.0)  # not "behind"
        await wait_for(lambda: a.deploys.running.get("b1") == 1, 30.0)
        new = slot.content_hash
        assert new != old and slot.runner is not None and slot.runner.params_hash == new
        assert not a.canary.is_active("b1") and slot.runner.ctx.share == 1
        await wait_for(lambda: _held(a, "b1") == 20, 10.0)  # the whole allocation again
        assert _held(a, canary_bot("b1")) == 0
        _risk_follows(a)
        assert slot.runner.ctx.positions["GOOG"].qty == 20
        # the leader's fleet view applied the transfers: b1 20, the candidate flat, and the
        # fleet's realized PnL is the agent's
        await wait_for(lambda: _leader_held(leader, "b1") == 20, 10.0)
        assert _leader_held(leader, canary_bot("b1")) == 0
        assert _leader_realized(leader) == sum(
            (p.net_realized for p in a.proj.positions.values()), Decimal(0))
        await wait_for(lambda: _statuses(leader) == ["ok"], 10.0)
        assert not [k for k in leader.alerts.open if k.startswith(("deploy:", "version:"))]
        events = await a.store.query()
    steps = [(e.action, e.fraction) for e in events if isinstance(e, CanaryStep)]
    assert steps == [("start", 0.1), ("advance", 0.25), ("advance", 0.5), ("advance", 1.0),
                     ("promote", 1.0)]
    versions = [(e.version, e.how, e.content_hash) for e in events if isinstance(e, BotVersion)]
    assert versions == [(0, "start", old), (1, "canary", new)]
    swap = [e for e in events if isinstance(e, ParamsChanged) and e.bot == "b1"]
    assert [(e.old_hash, e.new_hash) for e in swap] == [(old, new)]
    split = _split_per_step(events, Decimal(10), Decimal(20))
    assert [s[0] for s in split] == list(STEPS)
    for share, cand, cand_want, inc, inc_want in split:
        assert (cand, inc) == (cand_want, inc_want), share
    _assert_never_above(events, Decimal(20))
    # shares moved by transfers (the incumbent keeps floor(10 × (1 - share)) of its 10, the
    # rest goes to the candidate), and at promotion the candidate's 20 went to b1
    cb = canary_bot("b1")
    assert _transfers(events) == [("b1", cb, Decimal(1)), ("b1", cb, Decimal(2)),
                                  ("b1", cb, Decimal(2)), ("b1", cb, Decimal(5)),
                                  (cb, "b1", Decimal(20))]
    # no order because a share changed: the incumbent did not trade from the start of the
    # ramp on; the candidate only bought toward its own (larger) target; nothing reduce-only
    start = next(e.seq for e in events if isinstance(e, CanaryStep))
    assert _intents(events, "b1", after=start) == []
    cand = _intents(events, cb)
    assert cand and {e.side.value for e in cand} == {"BUY"}
    assert not [e for e in events if isinstance(e, OrderIntent) and e.reduce_only]
    assert sum(e.qty for e in cand) == 20 - 10  # it bought only what b1 did not give it
    _no_wash(events)


async def test_a_losing_canary_is_rolled_back_paged_and_the_incumbent_keeps_running(
    tmp_path: Path, nats_server: EmbeddedNatsServer
) -> None:
    url = nats_server.url
    cfg = _canary_node(tmp_path, url)
    bot = await _repo(tmp_path / "repo", {"qty": 10.0, "side": -1})
    receiver = PageReceiver()
    try:
        async with running_leader(leader_config(tmp_path, nats_server, page_url=receiver.url)) \
                as leader, running_agent(cfg, items={"goog_1d": _rising()}) as a:
            slot = a.supervisor.slots["b1"]
            old = slot.content_hash
            await wait_for(lambda: _held(a, "b1") == 10)
            await _deploy(bot, url)
            await wait_for(lambda: a.canary.is_active("b1"))
            await wait_for(lambda: "deploy:node-a:b1" in leader.alerts.open, 30.0)
            alert = leader.alerts.open["deploy:node-a:b1"]
            assert alert.severity.value == "P2" and alert.trigger == "canary_rollback"
            assert "rolling Sharpe" in alert.message and "candidate PnL realized" in \
                alert.message
            await wait_for(lambda: any("rolled back the canary of b1" in b["title"]
                                       for b in receiver.bodies), 10.0)
            page = next(b for b in receiver.bodies if "rolled back the canary" in b["title"])
            assert "PnL today: bot node-a/b1~canary" in page["message"]
            await wait_for(lambda: _statuses(leader) == ["refused"], 10.0)
            await wait_for(lambda: not a.canary.is_active("b1"), 10.0)
            assert slot.runner is not None and slot.runner.ctx.share == 1
            assert slot.content_hash == old and slot.runner.params_hash == old
            await wait_for(lambda: _held(a, "b1") == 10, 10.0)  # the incumbent keeps running
            assert _held(a, canary_bot("b1")) == 0
            events = await a.store.query()
        # a restarted agent reads the same desired (canary) version: never retried here
        async with running_agent(cfg, items={"goog_1d": _rising()}) as again:
            await wait_for(lambda: again.deploys.polled)
            await wait_for(lambda: _held(again, "b1") == 10)
            assert not again.canary.is_active("b1")
            assert again.supervisor.slots["b1"].content_hash == old
            after = await again.store.query(kind="CanaryStep")
    finally:
        receiver.close()
    assert len(after) == 2  # the start and rollback of the first run only
    steps = [e for e in events if isinstance(e, CanaryStep)]
    assert [s.action for s in steps] == ["start", "rollback"]
    rb = steps[-1]
    assert rb.fraction == 0.0 and rb.sharpe is not None and rb.sharpe < 0.5
    assert rb.realized + rb.unrealized < 0  # it lost money
    assert [(e.version, e.how) for e in events if isinstance(e, BotVersion)] == [(0, "start")]
    # at 10 %: the incumbent gave 1 of its 10 (it holds 9); the candidate, given 1 long,
    # sold 2 on its own signal (target floor(-10 x 0.1) = -1)
    split = _split_per_step(events, Decimal(10), Decimal(-10))
    assert split == [(0.1, Decimal(-1), Decimal(-1), Decimal(9), Decimal(9))]
    cb = canary_bot("b1")
    assert _transfers(events) == [("b1", cb, Decimal(1)), (cb, "b1", Decimal(-1))]
    assert [(e.side.value, e.qty) for e in _intents(events, cb)] == [("SELL", Decimal(2))]
    assert not [e for e in events if isinstance(e, OrderIntent) and e.reduce_only]
    # the rollback gave the candidate's -1 back to b1 (9 - 1 = 8) before b1 traded again:
    # b1 then bought 2 to its own target of 10
    back = next(e for e in events if isinstance(e, PositionTransfer) and e.to_bot == "b1")
    assert back.seq > rb.seq
    start = next(e.seq for e in events if isinstance(e, CanaryStep))
    assert _intents(events, "b1", after=start, before=back.seq) == []
    regrow = _intents(events, "b1", after=back.seq)
    assert [(e.side.value, e.qty) for e in regrow] == [("BUY", Decimal(2))]


async def _until_step(cfg: Path, bot: Path, url: str, fraction: float) -> str:
    """Run the agent, deploy ``bot`` as a canary, stop the agent (cleanly) once the ramp
    reached ``fraction``; returns the incumbent's content hash."""
    async with running_agent(cfg, items={"goog_1d": _rising()}) as a:
        old = a.supervisor.slots["b1"].content_hash
        await wait_for(lambda: _held(a, "b1") == 10)
        await _deploy(bot, url)
        await wait_for(lambda: a.canary.is_active("b1"))
        c = a.canary.active["b1"]
        await wait_for(lambda: c.ramp.allocation == fraction and c.applied == fraction
                       and _held(a, canary_bot("b1")) == 20 * fraction, 20.0)
    return old


async def test_a_restarted_agent_resumes_the_ramp_with_the_candidates_position(
    tmp_path: Path, nats_server: EmbeddedNatsServer
) -> None:
    url = nats_server.url
    cfg = _canary_node(tmp_path, url)
    bot = await _repo(tmp_path / "repo", {"qty": 20.0})
    old = await _until_step(cfg, bot, url, 0.25)
    async with running_agent(cfg, items={"goog_1d": _rising()}) as a:
        slot = a.supervisor.slots["b1"]
        assert slot.runner is not None and slot.runner.ctx.share == Decimal("0.75")  # held
        assert _held(a, canary_bot("b1")) == 5  # seeded from the store
        assert _held(a, "b1") == 7
        _risk_follows(a)  # the engine's per-bot exposure replayed the transfers too
        await wait_for(lambda: a.deploys.running.get("b1") == 1, 30.0)
        assert slot.content_hash != old
        await wait_for(lambda: _held(a, "b1") == 20, 10.0)
        _risk_follows(a)
        events = await a.store.query()
    steps = [(e.action, e.fraction) for e in events if isinstance(e, CanaryStep)]
    assert steps == [("start", 0.1), ("advance", 0.25), ("start", 0.25), ("advance", 0.5),
                     ("advance", 1.0), ("promote", 1.0)]
    resumed = [e for e in events if isinstance(e, CanaryStep)][2]
    assert "resumed at 25% after a restart" in resumed.reason
    _assert_never_above(events, Decimal(20))
    cb = canary_bot("b1")
    # resumed without moving the 25 % again; the last transfer is the promotion's 20
    assert _transfers(events)[:2] == [("b1", cb, Decimal(1)), ("b1", cb, Decimal(2))]
    assert _transfers(events)[-1] == (cb, "b1", Decimal(20))
    assert not [e for e in events if isinstance(e, OrderIntent) and e.reduce_only]
    _no_wash(events)


async def test_a_shutdown_stops_the_bots_without_rolling_their_canary_back(
    tmp_path: Path, nats_server: EmbeddedNatsServer
) -> None:
    url = nats_server.url
    cfg = _canary_node(tmp_path, url)
    bot = await _repo(tmp_path / "repo", {"qty": 20.0})
    async with running_agent(cfg, items={"goog_1d": _rising()}) as a:
        slot = a.supervisor.slots["b1"]
        await wait_for(lambda: _held(a, "b1") == 10)
        await _deploy(bot, url)
        await wait_for(lambda: _held(a, canary_bot("b1")) == 2, 10.0)
        a.request_shutdown()  # as systemctl stop: the bots stop first
        await wait_for(lambda: slot.state is not BotState.RUNNING, 10.0)
        await a.canary.check_once()  # a canary pass falling in that window
        assert a.canary.is_active("b1")
    rec = (tmp_path / "node-a" / "state" / "deploy" / "b1" / "canary.json").read_text()
    assert '"status":"running"' in rec  # the next start resumes it


async def test_a_candidate_left_by_a_restart_is_flattened_when_the_deploy_moved_on(
    tmp_path: Path, nats_server: EmbeddedNatsServer
) -> None:
    url = nats_server.url
    cfg = _canary_node(tmp_path, url)
    bot = await _repo(tmp_path / "repo", {"qty": 20.0})
    await _until_step(cfg, bot, url, 0.25)
    bot = await _repo(tmp_path / "repo", {"qty": 4.0})  # while the node is down: v2
    await _deploy(bot, url, canary=False)
    async with running_agent(cfg, items={"goog_1d": _rising()}) as a:
        await wait_for(lambda: a.deploys.running.get("b1") == 2, 20.0)
        await wait_for(lambda: _held(a, canary_bot("b1")) == 0 and _held(a, "b1") == 4, 20.0)
        slot = a.supervisor.slots["b1"]
        assert slot.runner is not None and slot.runner.ctx.share == 1
        assert not a.canary.held_back and not a.canary.orphans
        events = await a.store.query()
    cb = canary_bot("b1")
    # the leftover 5 went back to b1 by transfer (no reduce-only round trip)
    assert _transfers(events)[-1] == (cb, "b1", Decimal(5))
    assert not [e for e in events if isinstance(e, OrderIntent) and e.reduce_only]
    back = next(e.seq for e in events if isinstance(e, PositionTransfer) and e.to_bot == "b1")
    assert _intents(events, cb, after=back) == []
    _assert_never_above(events, Decimal(20))
    rec = (tmp_path / "node-a" / "state" / "deploy" / "b1" / "canary.json").read_text()
    assert '"status":"rolled_back"' in rec  # never resumed


async def test_halting_the_bot_rolls_the_canary_back_and_hands_its_position_over_untraded(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    url = nats_server.url
    cfg = _canary_node(tmp_path, url)
    bot = await _repo(tmp_path / "repo", {"qty": 20.0})

    async def ctl(verb: str) -> None:
        await _ctl(nats_client, verb, "b1")

    async with running_agent(cfg, items={"goog_1d": _rising()}) as a:
        slot = a.supervisor.slots["b1"]
        await wait_for(lambda: _held(a, "b1") == 10)
        await _deploy(bot, url)
        await wait_for(lambda: a.canary.is_active("b1"))
        await wait_for(lambda: _held(a, canary_bot("b1")) == 2, 10.0)
        await ctl("halt")
        # a transfer is not a trade: the candidate's 2 go to b1 under the halt, at once
        await wait_for(lambda: not a.canary.is_active("b1"), 10.0)
        assert _held(a, canary_bot("b1")) == 0 and _held(a, "b1") == 11
        assert slot.runner is not None and slot.runner.ctx.share == 1
        assert slot.runner.ctx.positions["GOOG"].qty == 11
        _risk_follows(a)
        for _ in range(5):  # several checks: the halt holds, b1 trades nothing
            await a.canary.check_once()
        assert _held(a, "b1") == 11
        await ctl("resume")
        await wait_for(lambda: _held(a, "b1") == 10, 10.0)  # b1's own target again
        events = await a.store.query()
    steps = [e for e in events if isinstance(e, CanaryStep)]
    assert [s.action for s in steps] == ["start", "rollback"]
    assert "bot b1 is HALTED" in steps[-1].reason
    halted = next(e.seq for e in events if isinstance(e, TradingStateChanged)
                  and e.scope_key == "b1" and e.new.value == "HALTED")
    resumed = next(e.seq for e in events if isinstance(e, TradingStateChanged)
                   and e.scope_key == "b1" and e.new.value == "ACTIVE")
    cb = canary_bot("b1")
    assert _transfers(events) == [("b1", cb, Decimal(1)), (cb, "b1", Decimal(2))]
    assert not [e for e in events if isinstance(e, OrderIntent) and e.reduce_only]
    # nothing traded while the operator's halt held; after it, b1 sold the 1 it was given
    # beyond its own target
    assert _intents(events, "b1", after=halted, before=resumed) == []
    assert _intents(events, cb, after=halted) == []
    assert [(e.side.value, e.qty) for e in _intents(events, "b1", after=resumed)] == [
        ("SELL", Decimal(1))]


async def test_a_halt_of_the_candidate_alone_rolls_it_back_and_hands_its_position_back(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    url = nats_server.url
    cfg = _canary_node(tmp_path, url)
    bot = await _repo(tmp_path / "repo", {"qty": 20.0})
    async with running_agent(cfg, items={"goog_1d": _rising()}) as a:
        await wait_for(lambda: _held(a, "b1") == 10)
        await _deploy(bot, url)
        await wait_for(lambda: _held(a, canary_bot("b1")) == 2, 10.0)
        await _ctl(nats_client, "halt", canary_bot("b1"))
        await wait_for(lambda: not a.canary.is_active("b1"), 10.0)
        assert _held(a, canary_bot("b1")) == 0  # handed back, its own halt notwithstanding
        await wait_for(lambda: _held(a, "b1") == 10, 10.0)
        _risk_follows(a)
        events = await a.store.query()
    steps = [e for e in events if isinstance(e, CanaryStep)]
    assert [s.action for s in steps] == ["start", "rollback"]
    assert "STRATEGY:b1~canary is HALTED" in steps[-1].reason
    cb = canary_bot("b1")
    assert _transfers(events) == [("b1", cb, Decimal(1)), (cb, "b1", Decimal(2))]
    assert not [e for e in events if isinstance(e, OrderIntent) and e.reduce_only]
    back = next(e.seq for e in events if isinstance(e, PositionTransfer) and e.to_bot == "b1")
    assert _intents(events, cb, after=back) == []


async def _ctl(nc: Client, verb: str, bot: str) -> None:
    body = NodeRequest(scope=Scope.STRATEGY, key=bot, operator="ops", reason="test")
    reply = await nc.request(f"qtd.ctl.node-a.{verb}", msgspec.json.encode(body), timeout=5)
    assert msgspec.json.decode(reply.data, type=NodeReply).ok


def _statuses(leader: Leader) -> list[str]:
    return [r.status for r in leader.versions.rows() if r.node == "node-a"]


def _held(agent: Agent, bot: str) -> Decimal:
    pos = agent.proj.position(bot, "paper-main", "GOOG")
    return pos.qty if pos is not None else Decimal(0)


def _assert_never_above(events: list[Any], limit: Decimal) -> None:
    """Incumbent + candidate, by fills in store order, never hold more than ``limit``."""
    held: dict[str, Decimal] = {}
    for e in events:
        if isinstance(e, Fill):
            held[e.bot] = held.get(e.bot, Decimal(0)) + (
                e.qty if e.side.value == "BUY" else -e.qty)
            total = sum(held.values(), Decimal(0))
            assert abs(total) <= limit, (e.seq, held)


def _risk_follows(agent: Agent) -> None:
    """The risk engine's per-bot exposure equals the projections' position for both ids."""
    for bot in ("b1", canary_bot("b1")):
        assert agent.risk.exposures_of(bot, "paper-main", "GOOG").qty == _held(agent, bot), bot


def _leader_held(leader: Leader, bot: str) -> Decimal:
    proj = leader.view.projections.get("node-a")
    pos = proj.position(bot, "paper-main", "GOOG") if proj is not None else None
    return pos.qty if pos is not None else Decimal(0)


def _leader_realized(leader: Leader) -> Decimal:
    proj = leader.view.projections["node-a"]
    return sum((p.net_realized for p in proj.positions.values()), Decimal(0))



def test_a_share_scales_order_verbs_toward_zero_in_lots_and_never_flatten() -> None:
    """The split itself (:attr:`StrategyContext.share`), without an agent: targets and
    order quantities scaled and rounded down to the lot; too small a share orders nothing;
    ``flatten`` closes the whole position."""
    from qtd.clock import SimClock
    from qtd.events import Side
    from qtd.strategy import Strategy, StrategyContext

    class S(Strategy):
        pass

    ctx = StrategyContext(bot="b", account="a", venue="paper", symbols=("AAA",),
                          clock=SimClock(1))
    s = S(ctx, S.Params())
    ctx.share, ctx.lot = Decimal("0.25"), Decimal(1)
    req = s.buy(10)
    assert req is not None and req.qty == 2  # 2.5 rounded down to whole lots
    assert s.sell(3) is None and len(ctx.outbox) == 1  # 0.75 of a lot: nothing sent
    ctx.take_outbox()
    ctx.inflight["AAA"] = Decimal(0)
    req = s.target_position(-10)
    assert req is not None and (req.side, req.qty) == (Side.SELL, 2)  # target -2
    ctx.inflight["AAA"] = Decimal(0)
    ctx.share, ctx.lot = Decimal("0.1"), Decimal("0.001")
    req = s.buy(0.155)
    assert req is not None and req.qty == Decimal("0.015")
    ctx.inflight["AAA"] = Decimal(0)
    ctx.apply_fill(Fill(node="n", bot="b", ts_event=0, ts_init=0, client_order_id="c",
                        trade_id="t", account="a", venue="paper", symbol="AAA",
                        side=Side.BUY, qty=Decimal(7), price=Decimal(100)))
    req = s.flatten()
    assert req is not None and req.qty == 7 and req.reduce_only  # never scaled
    ctx.share = Decimal(0)  # an incumbent at a 100 % step: it holds nothing new
    ctx.inflight["AAA"] = Decimal(0)
    req = s.target_position(7)
    assert req is not None and (req.side, req.qty) == (Side.SELL, 7)


def test_a_transfer_moves_a_position_at_the_givers_average_cost_and_creates_no_pnl() -> None:
    """:class:`PositionTransfer` in the projections, a runner's context and the leader's
    fleet view: at the giver's average cost, total PnL exactly unchanged, idempotent, an
    impossible transfer refused with an anomaly, replay equal to incremental."""

    from qtd.clock import SimClock
    from qtd.events import Side, decode, encode
    from qtd.leader.view import FleetView
    from qtd.orders import ApplyResult
    from qtd.projections import Projections, TradingDay
    from qtd.strategy import StrategyContext
    from tests.factories import fill, intent

    cb = canary_bot("b1")

    def move(qty: str, tid: str, frm: str = "b1", to: str = cb, cost: str | None = None
             ) -> PositionTransfer:
        pos = proj.position(frm, "acct1", "AAPL")
        q = Decimal(qty)
        c = Decimal(cost) if cost is not None else pos.copy().give(q)  # type: ignore[union-attr]
        return PositionTransfer(node="node-a", bot=frm, ts_event=3_000, ts_init=3_000,
                                account="acct1", symbol="AAPL", from_bot=frm, to_bot=to,
                                qty=q, cost=c, price=c / q, transfer_id=tid)

    def total(p: Projections, mark: Decimal) -> Decimal:
        return sum((x.total_pnl(mark) for x in p.positions.values()), Decimal(0))

    proj, events = Projections(), []
    for ev in (intent("c1", bot="b1"), fill("c1", "t1", qty="10", price="100", bot="b1"),
               intent("c2", bot="b1", qty="5"), fill("c2", "t2", qty="5", price="106", bot="b1")):
        proj.apply(ev)
        events.append(ev)
    mark = Decimal(110)
    before = total(proj, mark)
    tr = move("6", "x1")
    assert decode(encode(tr)) == tr  # a stored event
    assert (tr.cost, tr.price) == (Decimal(612), Decimal(102))  # the giver's average cost
    assert proj.apply(tr) is ApplyResult.APPLIED
    events.append(tr)
    b1, cand = proj.position("b1", "acct1", "AAPL"), proj.position(cb, "acct1", "AAPL")
    assert b1 is not None and cand is not None
    assert (b1.qty, b1.cost, b1.realized) == (9, 918, 0)
    assert (cand.qty, cand.cost, cand.realized) == (6, 612, 0)
    assert total(proj, mark) == before
    assert proj.apply(tr) is ApplyResult.DUPLICATE and b1.qty == 9  # applied once
    # the candidate turns short on its own; then b1's long is given to it: the netted part
    # realizes the entry-price difference (short at 108, covered at b1's 102), total kept
    for ev in (intent("c3", bot=cb, side=Side.SELL), fill("c3", "t3", qty="10", price="108",
                                                          bot=cb, side=Side.SELL)):
        proj.apply(ev)
        events.append(ev)
    before = total(proj, mark)
    realized_before = sum((p.realized for p in proj.positions.values()), Decimal(0))
    tr2 = move("9", "x2")
    assert proj.apply(tr2) is ApplyResult.APPLIED
    events.append(tr2)
    assert (cand.qty, cand.cost) == (5, 510)
    assert sum((p.realized for p in proj.positions.values()), Decimal(0)) == \
        realized_before + 4 * (108 - 102)
    assert b1.qty == 0 and b1.cost == 0 and total(proj, mark) == before
    # more than the giver holds: refused, named, nothing moved
    bad = move("1", "x3", cost="100")
    assert proj.apply(bad) is ApplyResult.IGNORED and b1.qty == 0 and cand.qty == 5
    assert "x3 not applied" in proj.anomalies[-1][1] and "b1" in proj.anomalies[-1][1]
    events.append(bad)
    replayed = Projections()
    for ev in events:
        replayed.apply(ev)
    assert replayed.state() == proj.state()
    # a runner's context follows the same arithmetic on both sides
    ctxs = {b: StrategyContext(bot=b, account="acct1", venue="paper", symbols=("AAPL",),
                               clock=SimClock(1)) for b in ("b1", cb)}
    for ev in events:
        for ctx in ctxs.values():
            if isinstance(ev, Fill) and ev.bot == ctx.bot:
                ctx.apply_fill(ev)
            elif isinstance(ev, PositionTransfer) and ev is not bad:
                ctx.apply_transfer(ev)
    for b, ctx in ctxs.items():
        p = proj.position(b, "acct1", "AAPL")
        assert p is not None and ctx.positions["AAPL"].as_tuple() == p.as_tuple(), b
    # the leader's fleet view applies it too (twice delivered: once applied)
    view = FleetView(trading_day=TradingDay(), capital=Decimal(10_000), currency="USD",
                     clock=SimClock(1))
    for ev in [*events, tr, tr2]:
        view.apply(ev)
    assert view.projections["node-a"].state()["positions"] == proj.state()["positions"]
    # the fleet's day realized PnL includes what the netting transfer realized
    assert sum(view.day_realized.values(), Decimal(0)) == sum(
        (p.net_realized for p in proj.positions.values()), Decimal(0)) == 36 + 24
