"""The agent in this event loop on a real nats-server and a real SQLite store: start-up
order, kills (KV while down, NATS broadcast), bot isolation, ctl verbs, the leader fail-safe,
shutdown."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

import qtd
from qtd.bus import EmbeddedNatsServer, ensure_jetstream
from qtd.control import NodeRequest, new_kill
from qtd.control.transport import request, send_kill
from qtd.events import (
    AckStage,
    CommandAudit,
    Fill,
    Heartbeat,
    KillAck,
    OrderCanceled,
    OrderIntent,
    Reconciliation,
    Scope,
    StrategyAdmitted,
    StrategyError,
    TradingState,
    to_json,
)
from tests.agent_rig import running_agent, synthetic_bars, wait_for, write_fleet

MINUTE_SPEED = "speed = 6000.0"  # one-minute synthetic bars at 100 bars/s


def _kinds(events: list) -> list[str]:
    return [type(e).__name__ for e in events]


async def test_kill_set_while_agent_down_starts_halted_and_places_no_orders(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    await ensure_jetstream(nats_client.jetstream())
    kill = new_kill(reason="desk closed", operator="alice")
    assert await send_kill(nats_client, kill) == []  # nobody listening: the KV keeps it
    cfg = write_fleet(tmp_path, {"b1": {}}, bus_url=nats_server.url, market=MINUTE_SPEED)
    async with running_agent(cfg, items={"goog_1d": synthetic_bars(300)}) as agent:
        assert agent.risk.states.get(Scope.GLOBAL) is TradingState.HALTED
        await wait_for(lambda: agent.feeds and all(f.delivered > 50
                                                   for f in agent.feeds.values()))
        events = await agent.store.query()
    kinds = _kinds(events)
    assert "OrderIntent" not in kinds and "OrderDenied" in kinds
    ack = next(e for e in events if isinstance(e, KillAck))
    assert ack.kill_id == kill.id and ack.state is TradingState.HALTED
    assert kinds.index("KillAck") < kinds.index("StrategyAdmitted")  # halted before bots


async def test_bot_raising_halts_only_itself_sibling_keeps_trading(
    tmp_path: Path, nats_server: EmbeddedNatsServer
) -> None:
    cfg = write_fleet(tmp_path, {"good": {}, "bad": {"boom_after": 5}},
                      bus_url=nats_server.url, market=MINUTE_SPEED,
                      extra="[restart]\nmax_per_hour = 0\n")
    # enough bars that the sibling is still trading however late the halt is observed
    async with running_agent(cfg, items={"goog_1d": synthetic_bars(5000)}) as agent:
        await wait_for(lambda: agent.supervisor.slots["bad"].state.value == "HALTED")
        at_halt = agent.store.last_seq
        await wait_for(lambda: agent.store.last_seq > at_halt + 40)
        events = await agent.store.query()
        bad_state = agent.supervisor.slots["bad"].state.value
        good_state = agent.supervisor.slots["good"].state.value
    err = next(e for e in events if isinstance(e, StrategyError))
    assert err.bot == "bad" and err.hook == "on_bar" and "boom" in err.message
    assert "RuntimeError" in err.traceback
    later = [e for e in events if e.seq > err.seq]
    # the halted bot places no order after its error; a fill of an order it placed before
    # may still be stored after it (venue reports are asynchronous); its sibling trades on
    assert {e.bot for e in later if isinstance(e, OrderIntent)} == {"good"}
    placed_before = {e.client_order_id for e in events
                     if isinstance(e, OrderIntent) and e.seq < err.seq}
    later_fills = [e for e in later if isinstance(e, Fill)]
    assert all(f.client_order_id in placed_before for f in later_fills if f.bot == "bad")
    assert any(f.bot == "good" for f in later_fills)
    assert bad_state == "HALTED" and good_state == "RUNNING"


async def test_supervisor_restarts_a_crashed_bot_within_its_policy(
    tmp_path: Path, nats_server: EmbeddedNatsServer
) -> None:
    cfg = write_fleet(tmp_path, {"bad": {"boom_after": 3}}, bus_url=nats_server.url,
                      market=MINUTE_SPEED,
                      extra="[restart]\nmax_per_hour = 2\nbackoff_s = 0.05\n"
                            "backoff_max_s = 0.1\n")
    async with running_agent(cfg, items={"goog_1d": synthetic_bars(400)}) as agent:
        slot = agent.supervisor.slots["bad"]
        await wait_for(lambda: slot.total_restarts == 2 and slot.state.value == "HALTED")
        await asyncio.sleep(0.3)
        errors = [e for e in await agent.store.query(kind="StrategyError")]
    assert len(errors) == 3  # first run + two restarts, then it stays HALTED
    assert slot.total_restarts == 2


async def test_kill_over_nats_is_acknowledged_and_cancels_open_orders(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    cfg = write_fleet(tmp_path, {"r1": {}, "r2": {}}, strategy="rester",
                      bus_url=nats_server.url, market=MINUTE_SPEED)
    async with running_agent(cfg, items={"goog_1d": synthetic_bars(2000)}) as agent:
        await wait_for(lambda: sum(1 for _ in agent.proj.orders.open_orders()) == 2)
        kill = new_kill(reason="test kill", operator="bob")
        wire: list[KillAck] = []

        async def on_ack(m: Msg) -> None:
            wire.append(msgspec.json.decode(m.data, type=KillAck))
        sub = await nats_client.subscribe("qtd.ack.kill.node-a", cb=on_ack)
        acks = await send_kill(nats_client, kill, wait_acks_s=5, expect=1)
        assert len(acks) == 1
        ack = acks[0]
        assert ack.node == "node-a" and ack.kill_id == kill.id
        assert ack.state is TradingState.HALTED and len(ack.canceled) == 2
        await sub.unsubscribe()
        # in force first (HALTED, before its cancels), then durable: the one stored
        assert [(a.stage, a.state, len(a.canceled)) for a in wire] == [
            (AckStage.IN_FORCE, TradingState.HALTED, 0), (AckStage.DURABLE, ack.state, 2)]
        assert await agent.store.query(kind="KillAck") == [ack]
        await wait_for(lambda: not any(agent.proj.orders.open_orders()))
        again = await send_kill(nats_client, kill, wait_acks_s=5, expect=1)
        assert again[0].duplicate and again[0].canceled == []
        canceled = await agent.store.query(kind="OrderCanceled")
    assert {c.client_order_id for c in canceled} == set(ack.canceled)
    assert all(isinstance(c, OrderCanceled) for c in canceled)


async def test_an_agent_stores_a_kill_after_its_store_delay(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    """``kill_store_delay_s``: the durable ack follows the in-force ack by at least the
    pause (without it, by one fsync); the cancels go before the pause (the router's
    ``before_store`` hook, ``test_execution``)."""
    cfg = write_fleet(tmp_path, {"r1": {}}, strategy="rester", bus_url=nats_server.url,
                      market=MINUTE_SPEED, extra="kill_store_delay_s = 0.05")
    async with running_agent(cfg, items={"goog_1d": synthetic_bars(2000)}) as agent:
        await wait_for(lambda: any(agent.proj.orders.open_orders()))
        loop = asyncio.get_running_loop()
        seen: list[tuple[AckStage, float]] = []

        async def on_ack(m: Msg) -> None:
            seen.append((msgspec.json.decode(m.data, type=KillAck).stage, loop.time()))
        sub = await nats_client.subscribe("qtd.ack.kill.node-a", cb=on_ack)
        acks = await send_kill(nats_client, new_kill(reason="test kill", operator="bob"),
                               wait_acks_s=5, expect=1)
        await wait_for(lambda: len(seen) == 2, 5)
        await sub.unsubscribe()
    assert len(acks) == 1 and len(acks[0].canceled) == 1
    assert [s for s, _ in seen] == [AckStage.IN_FORCE, AckStage.DURABLE]
    assert seen[1][1] - seen[0][1] >= 0.045  # a lower bound: load only adds to it


async def test_ctl_verbs_answer_and_are_audited(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    cfg = write_fleet(tmp_path, {"b1": {}}, bus_url=nats_server.url, market=MINUTE_SPEED)
    async with running_agent(cfg, items={"goog_1d": synthetic_bars(3000)}) as agent:
        st = await request(nats_client, "node-a", "status", NodeRequest())
        assert st.ok and st.data["global"] == "ACTIVE" and "b1" in st.data["bots"]
        halt = await request(nats_client, "node-a", "halt",
                             NodeRequest(scope=Scope.STRATEGY, key="b1", reason="look",
                                         operator="carol"))
        assert halt.ok and halt.data["state"] == "HALTED"
        bad = await request(nats_client, "node-a", "resume",
                            NodeRequest(scope=Scope.STRATEGY, key="b1"))
        assert not bad.ok and "operator" in bad.message
        good = await request(nats_client, "node-a", "resume",
                             NodeRequest(scope=Scope.STRATEGY, key="b1", operator="carol",
                                         reason="checked"))
        assert good.ok and good.data["state"] == "ACTIVE"
        unknown = await request(nats_client, "node-a", "explode", NodeRequest())
        assert not unknown.ok
        audits = await agent.store.query(kind="CommandAudit")
    verbs = [(a.verb, a.ok) for a in audits if isinstance(a, CommandAudit)]
    assert verbs == [("status", True), ("halt", True), ("resume", False), ("resume", True),
                     ("explode", False)]


async def test_heartbeats_carry_the_qtd_version(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    beats: list[Heartbeat] = []

    async def on_hb(msg: Msg) -> None:
        beats.append(msgspec.json.decode(msg.data, type=Heartbeat))

    await nats_client.subscribe("qtd.hb.node-a", cb=on_hb)
    cfg = write_fleet(tmp_path, {"b1": {}}, bus_url=nats_server.url, market=MINUTE_SPEED)
    async with running_agent(cfg, items={"goog_1d": synthetic_bars(300)}):
        await wait_for(lambda: beats)
    assert beats[0].node == "node-a" and beats[0].version == qtd.__version__ != ""


async def test_leader_heartbeat_loss_reduces_and_its_return_restores_active(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    cfg = write_fleet(tmp_path, {"b1": {}}, bus_url=nats_server.url, market=MINUTE_SPEED,
                      extra='failsafe = "REDUCING"\nleader_timeout_s = 1.0\n')
    cfg.write_text(cfg.read_text().replace('failsafe = "NONE"\n', "", 1))
    beating = asyncio.Event()

    async def leader() -> None:
        while True:
            if beating.is_set():
                hb = Heartbeat(node="leader", ts_event=0, ts_init=0, role="leader")
                await nats_client.publish("qtd.hb.leader", to_json(hb))
            await asyncio.sleep(0.1)

    beat = asyncio.create_task(leader())
    try:
        beating.set()
        async with running_agent(cfg, items={"goog_1d": synthetic_bars(3000)}) as agent:
            states = agent.risk.states
            await asyncio.sleep(1.5)
            assert states.get(Scope.GLOBAL) is TradingState.ACTIVE  # leader present
            beating.clear()
            await wait_for(lambda: states.get(Scope.GLOBAL) is TradingState.REDUCING, 3.0)
            beating.set()
            await wait_for(lambda: states.get(Scope.GLOBAL) is TradingState.ACTIVE, 3.0)
            changes = await agent.store.query(kind="TradingStateChanged")
    finally:
        beat.cancel()
    reasons = [c.reason for c in changes if c.scope is Scope.GLOBAL]  # type: ignore[union-attr]
    assert reasons[0].startswith("failsafe: no leader heartbeat")
    assert reasons[1] == "failsafe: leader heartbeat back"


async def test_start_up_order_and_shutdown_cancels_open_orders(
    tmp_path: Path, nats_server: EmbeddedNatsServer
) -> None:
    cfg = write_fleet(tmp_path, {"r1": {}}, strategy="rester", bus_url=nats_server.url,
                      market=MINUTE_SPEED, extra='on_shutdown = "cancel"\n')
    async with running_agent(cfg, items={"goog_1d": synthetic_bars(2000)}) as agent:
        await wait_for(lambda: any(agent.proj.orders.open_orders()))
        store_path = agent.cfg.store_path
    async with running_agent(cfg, items={"goog_1d": synthetic_bars(10)}) as agent:
        events = await agent.store.query()
        assert not any(agent.proj.orders.open_orders())
    kinds = _kinds(events)
    assert kinds[:2] == ["Reconciliation", "StrategyAdmitted"]  # reconcile, then admit
    assert kinds.index("OrderIntent") > kinds.index("StrategyAdmitted")
    assert "OrderCanceled" in kinds  # the first run's shutdown cancelled its resting order
    recs = [e for e in events if isinstance(e, Reconciliation)]
    assert len(recs) == 2 and all(r.ok for r in recs)
    assert store_path.exists()
    assert any(isinstance(e, StrategyAdmitted) for e in events)
    assert any(isinstance(e, OrderIntent) for e in events)


async def test_a_halt_survives_a_restart_and_resume_restarts_the_bot(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    cfg = write_fleet(tmp_path, {"b1": {}, "b2": {}}, bus_url=nats_server.url,
                      market=MINUTE_SPEED)
    async with running_agent(cfg, items={"goog_1d": synthetic_bars(3000)}):
        halt = await request(nats_client, "node-a", "halt",
                             NodeRequest(scope=Scope.STRATEGY, key="b1", reason="x",
                                         operator="erin"))
        assert halt.ok
    async with running_agent(cfg, items={"goog_1d": synthetic_bars(3000)}) as agent:
        assert agent.risk.states.get(Scope.STRATEGY, "b1") is TradingState.HALTED
        assert agent.supervisor.slots["b1"].state.value == "HALTED"
        assert agent.supervisor.slots["b2"].state.value == "RUNNING"
        seq = agent.store.last_seq
        res = await request(nats_client, "node-a", "resume",
                            NodeRequest(scope=Scope.STRATEGY, key="b1", reason="ok",
                                        operator="erin"))
        assert res.ok and res.data["restarted"]
        await wait_for(lambda: agent.supervisor.slots["b1"].state.value == "RUNNING")
        await wait_for(lambda: agent.store.last_seq > seq + 20)
        intents = await agent.store.query(kind="OrderIntent", bot="b1", after_seq=seq)
    assert intents


async def test_changed_params_file_is_hot_reloaded_and_a_bad_one_is_refused(
    tmp_path: Path, nats_server: EmbeddedNatsServer
) -> None:
    cfg = write_fleet(tmp_path, {"b1": {"qty": 1.0}}, bus_url=nats_server.url,
                      market=MINUTE_SPEED, extra="params_poll_s = 0.1")
    bot_file = tmp_path / "bots" / "b1.toml"
    async with running_agent(cfg, items={"goog_1d": synthetic_bars(100_000)}) as agent:
        await wait_for(lambda: agent.supervisor.slots["b1"].runner is not None)
        runner = agent.supervisor.slots["b1"].runner
        bot_file.write_text(bot_file.read_text().replace("qty = 1.0", "qty = 2.0"))
        assert runner.isolated and runner.params["qty"] == 1.0  # in its worker process
        await wait_for(lambda: runner.params["qty"] == 2.0)
        bot_file.write_text(bot_file.read_text().replace("qty = 2.0", "qyt = 5.0"))  # typo
        await wait_for(lambda: agent.store.query(kind="ParamsChanged"), timeout_s=10)

        async def refused() -> list:
            return [e for e in await agent.store.query(kind="ParamsChanged")
                    if not e.accepted]

        await wait_for(refused)
        (bad,) = await refused()
        assert "params.qyt" in bad.reason and "qty" in bad.reason  # named, with did-you-mean
        assert runner.params["qty"] == 2.0  # the old params keep running
        accepted = [e for e in await agent.store.query(kind="ParamsChanged") if e.accepted]
        assert len(accepted) == 1


async def test_a_bot_that_fails_admission_never_runs_its_siblings_do(
    tmp_path: Path, nats_server: EmbeddedNatsServer
) -> None:
    cfg = write_fleet(tmp_path, {"good": {}, "bad": {"qty": "lots"}}, bus_url=nats_server.url,
                      market=MINUTE_SPEED)
    async with running_agent(cfg, items={"goog_1d": synthetic_bars(3000)}) as agent:
        await wait_for(lambda: agent.store.query(kind="Fill", bot="good"))
        (problems,) = [v for k, v in agent.refused.items() if k.endswith("bad.toml")]
        assert "params.qty = 'lots'" in " ".join(problems)
        assert "bad" not in agent.supervisor.slots
        admitted = [e.bot for e in await agent.store.query(kind="StrategyAdmitted")]
        assert admitted == ["good"]
        assert await agent.store.query(bot="bad") == []  # not one event: it never ran


async def test_the_engine_checks_a_bot_against_its_risk_profile(
    tmp_path: Path, nats_server: EmbeddedNatsServer
) -> None:
    cfg = write_fleet(tmp_path, {"b1": {"qty": 1.0}}, bus_url=nats_server.url,
                      market=MINUTE_SPEED)
    bot = tmp_path / "bots" / "b1.toml"
    bot.write_text(bot.read_text().replace('symbols = ["GOOG"]',
                                           'symbols = ["GOOG"]\nrisk_profile = "tight"'))
    risk = tmp_path / "risk.toml"
    # a limit admission cannot see in the params: only the engine, bound to the profile
    risk.write_text(risk.read_text() + "\n[strategies.tight]\nmax_trades_per_day = 2\n")
    async with running_agent(cfg, items={"goog_1d": synthetic_bars(3000)}) as agent:
        await wait_for(lambda: agent.store.query(kind="OrderDenied", bot="b1"))
        denied = await agent.store.query(kind="OrderDenied", bot="b1")
        assert {d.check for d in denied} == {"max_trades_per_day"}
        assert len(await agent.store.query(kind="OrderIntent", bot="b1")) == 2
