"""Fleet deploys end to end: a real nats-server, two real agents in this event loop (their
own SQLite stores and state directories), the real ``qtd deploy``/``rollback`` code."""

from __future__ import annotations

import asyncio
import hashlib
import io
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import nats.js.errors
import pytest
from nats.aio.client import Client

from qtd.agent.daemon import Agent
from qtd.bus import EmbeddedNatsServer
from qtd.bus.jetstream import ensure_deploy_kv
from qtd.cli import build_parser, main
from qtd.commands.deploy import run_deploy, run_history, run_rollback
from qtd.deploy.model import DeployVersion, desired_key, encode, version_key
from qtd.events import BotVersion, DeployRefused, Fill, ParamsChanged
from tests import factories
from tests.agent_rig import running_agent, synthetic_bars, wait_for, write_fleet

MARKET = "speed = 600.0\nloop = true"  # one-minute bars, 10 per second, forever
EXTRA = "params_poll_s = 0.1\n"


def _agent_cfg(root: Path, node: str, url: str) -> Path:
    return write_fleet(root, {"b1": {"qty": 1.0}}, node=node, bus_url=url, market=MARKET,
                       extra=EXTRA)


def _repo(root: Path, qty: float) -> Path:
    """The operator's checkout: same strategies and risk file, b1 with ``qty``."""
    write_fleet(root, {"b1": {"qty": qty}})
    return root / "bots" / "b1.toml"


async def _cli(argv: list[str], url: str) -> tuple[int, str]:
    args = build_parser().parse_args([*argv, "--server", url])
    out = io.StringIO()
    runner = {"deploy": run_deploy, "rollback": run_rollback, "history": run_history}[argv[0]]
    code = await runner(args, out)
    return code, out.getvalue()


def _runs(agent: Agent, content_hash: str) -> bool:
    slot = agent.supervisor.slots["b1"]
    return (slot.content_hash == content_hash and slot.runner is not None
            and slot.runner.params_hash == content_hash)


async def _desired(nc: Client) -> DeployVersion | None:
    deploy, _ = await ensure_deploy_kv(nc.jetstream())
    try:
        entry = await deploy.get(desired_key("b1"))
    except nats.js.errors.KeyNotFoundError:
        return None
    return msgspec.json.decode(entry.value or b"", type=DeployVersion)


def _items() -> dict[str, Any]:
    return {"goog_1d": synthetic_bars(500)}


async def test_deploy_reaches_every_agent_and_they_run_the_new_hash(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    url = nats_server.url
    cfg_a, cfg_b = (_agent_cfg(tmp_path / n, n, url) for n in ("node-a", "node-b"))
    bot = _repo(tmp_path / "repo", qty=3.0)
    async with running_agent(cfg_a, items=_items()) as a, \
            running_agent(cfg_b, items=_items()) as b:
        old = a.supervisor.slots["b1"].content_hash
        code, out = await _cli(["deploy", str(bot), "--no-smoke", "-m", "bigger",
                                "--operator", "alice"], url)
        assert code == 0, out
        v = await _desired(nats_client)
        assert v is not None and v.version == 1 and v.operator == "alice"
        assert v.message == "bigger" and v.params["qty"] == 3.0 and v.content_hash != old
        assert f"published b1 {v.short}" in out
        await wait_for(lambda: _runs(a, v.content_hash) and _runs(b, v.content_hash))
        await wait_for(lambda: a.deploys.running["b1"] == b.deploys.running["b1"] == 1)
        # the new params really trade: fills of 3 after the swap
        await wait_for(lambda: a.proj.positions and any(
            p.qty == 3 for p in a.proj.positions.values()), 10.0)
        events = {n.node: await n.store.query() for n in (a, b)}
    for node, evs in events.items():
        versions = [e for e in evs if isinstance(e, BotVersion)]
        assert [(e.version, e.how) for e in versions] == [(0, "start"), (1, "params")], node
        assert versions[-1].content_hash == v.content_hash
        swap = [e for e in evs if isinstance(e, ParamsChanged) and e.accepted]
        assert swap and swap[-1].new_hash == v.content_hash and swap[-1].old_hash == old


async def test_new_strategy_source_restarts_the_bot_between_bars_keeping_its_position(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    url = nats_server.url
    cfg_a = _agent_cfg(tmp_path / "node-a", "node-a", url)
    bot = _repo(tmp_path / "repo", qty=1.0)
    strat = tmp_path / "repo" / "strategies" / "flipper.py"
    async with running_agent(cfg_a, items=_items()) as a:
        slot = a.supervisor.slots["b1"]
        old_code = slot.ref
        # v1 = what node-a runs already: it only records the version number
        assert (await _cli(["deploy", str(bot), "--no-smoke"], url))[0] == 0
        await wait_for(lambda: a.deploys.running.get("b1") == 1)
        # v2 of the strategy: holds 2 x qty on odd bars instead of qty
        strat.write_text(strat.read_text().replace(
            "self.target_position(self.params.qty if",
            "self.target_position(2 * self.params.qty if"))
        await wait_for(lambda: any(p.qty for p in a.proj.positions.values()))
        code, out = await _cli(["deploy", str(bot), "--no-smoke"], url)
        assert code == 0, out
        assert "strategy flipper.py: changed" in out
        assert "self.target_position(2 * self.params.qty" in out  # the source diff
        v = await _desired(nats_client)
        assert v is not None
        await wait_for(lambda: _runs(a, v.content_hash) and a.deploys.running["b1"] == 2)
        assert not slot.ref.same_code(old_code)
        await wait_for(lambda: any(p.qty == 2 for p in a.proj.positions.values()), 10.0)
        at_swap = a.store.last_seq

        async def traded() -> bool:  # 20 more fills under the new strategy
            return len([e for e in await a.store.query(kind="Fill") if e.seq > at_swap]) >= 20

        await wait_for(traded, 20.0)
        events = await a.store.query()
    assert [(e.version, e.how) for e in events if isinstance(e, BotVersion)] == \
        [(0, "start"), (1, "same"), (2, "restart")]
    # never more than 2 held: the restarted strategy knew its position (no doubling up)
    qty = 0.0
    for e in events:
        if isinstance(e, Fill) and e.bot == "b1":
            qty += float(e.qty) * (1 if e.side.value == "BUY" else -1)
            assert 0 <= qty <= 2


async def test_broken_deploy_is_refused_before_publishing(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    url = nats_server.url
    bot = _repo(tmp_path / "repo", qty=1.0)
    text = bot.read_text().replace("qty = 1.0", "qty = 1.0\nqyt = 2.0")  # unknown param
    bot.write_text(text)
    good = tmp_path / "repo" / "bots" / "b2.toml"
    good.write_text(text.replace('name = "b1"', 'name = "b2"').replace("qyt = 2.0\n", ""))
    code, out = await _cli(["deploy", str(tmp_path / "repo"), "--no-smoke"], url)
    assert code == 78
    assert "params.qyt" in out and "nothing published" in out
    deploy, sources = await ensure_deploy_kv(nats_client.jetstream())
    for bucket in (deploy, sources):  # not even the good bot of the same command
        assert (await bucket.status()).values == 0
    # the real CLI entry point, as CI runs it: dry run of a stage it does not have
    cli = ["deploy", str(good), "--no-smoke", "--dry-run", "--stage", "live", "--server", url]
    assert await asyncio.to_thread(main, cli) == 78
    assert (await deploy.status()).values == 0


async def test_dry_run_shows_per_node_diff_and_publishes_nothing(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    url = nats_server.url
    bot = _repo(tmp_path / "repo", qty=1.0)
    code, _ = await _cli(["deploy", str(bot), "--no-smoke"], url)
    assert code == 0
    bot.write_text(bot.read_text().replace("qty = 1.0", "qty = 4.0"))
    code, out = await _cli(["deploy", str(bot), "--no-smoke", "--dry-run"], url)
    assert code == 0
    assert "qty: 1.0 -> 4.0" in out and "dry run: 1 bot(s) would change" in out
    assert "nodes: unknown (no leader answered)" in out
    v = await _desired(nats_client)
    assert v is not None and v.version == 1 and v.params["qty"] == 1.0
    same, out = await _cli(["deploy", str(bot), "--no-smoke"], url)
    again, out2 = await _cli(["deploy", str(bot), "--no-smoke"], url)
    assert same == again == 0 and "1 bot(s) deployed" in out and "b1  v2:" in out2
    assert "unchanged" in out2 and "0 bot(s) deployed" in out2
    # NATS unreachable: exit 75 (retry), after the admission was printed
    port = nats_server.port
    await nats_server.stop()
    down = ["deploy", str(bot), "--no-smoke", "--dry-run", "--server",
            f"nats://127.0.0.1:{port}"]
    assert await asyncio.to_thread(main, down) == 75
    await nats_server.start()


async def test_agent_down_during_deploy_catches_up_on_restart_and_after_without_nats(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    url = nats_server.url
    cfg_a, cfg_b = (_agent_cfg(tmp_path / n, n, url) for n in ("node-a", "node-b"))
    bot = _repo(tmp_path / "repo", qty=5.0)
    async with running_agent(cfg_b, items=_items()):
        pass  # node-b ran once, then went down
    async with running_agent(cfg_a, items=_items()) as a:
        code, out = await _cli(["deploy", str(bot), "--no-smoke"], url)
        assert code == 0, out
        v = await _desired(nats_client)
        assert v is not None
        await wait_for(lambda: _runs(a, v.content_hash))
    async with running_agent(cfg_b, items=_items()) as b:
        await wait_for(lambda: _runs(b, v.content_hash) and b.deploys.running.get("b1") == 1)
    # restarted again with NATS gone: it runs the version it accepted, not its local file
    await nats_server.stop()
    text = cfg_b.read_text().replace("bus_wait_s = 5.0", "bus_wait_s = 0.2")
    cfg_b.write_text(text)
    async with running_agent(cfg_b, items=_items()) as b:
        assert b.supervisor.slots["b1"].content_hash == v.content_hash  # admitted at start
        await wait_for(lambda: b.deploys.running.get("b1") == 1)
        assert b.link is not None and not b.link.connected
    await nats_server.start()


async def test_rollback_restores_the_previous_hash_everywhere(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    url = nats_server.url
    cfg_a, cfg_b = (_agent_cfg(tmp_path / n, n, url) for n in ("node-a", "node-b"))
    bot = _repo(tmp_path / "repo", qty=2.0)
    async with running_agent(cfg_a, items=_items()) as a, \
            running_agent(cfg_b, items=_items()) as b:
        assert (await _cli(["deploy", str(bot), "--no-smoke", "-m", "two"], url))[0] == 0
        v1 = await _desired(nats_client)
        assert v1 is not None
        await wait_for(lambda: _runs(a, v1.content_hash) and _runs(b, v1.content_hash))
        bot.write_text(bot.read_text().replace("qty = 2.0", "qty = 7.0"))
        assert (await _cli(["deploy", str(bot), "--no-smoke", "-m", "seven"], url))[0] == 0
        v2 = await _desired(nats_client)
        assert v2 is not None and v2.version == 2
        await wait_for(lambda: _runs(a, v2.content_hash) and _runs(b, v2.content_hash))
        code, out = await _cli(["rollback", "b1", "--no-smoke", "-m", "too big",
                                "--risk", str(tmp_path / "repo" / "risk.toml")], url)
        assert code == 0, out
        v3 = await _desired(nats_client)
        assert v3 is not None and v3.version == 3 and v3.rollback_of == 1
        assert v3.content_hash == v1.content_hash and v3.message == "too big"
        await wait_for(lambda: _runs(a, v1.content_hash) and _runs(b, v1.content_hash))
        await wait_for(lambda: a.deploys.running["b1"] == 3 and b.deploys.running["b1"] == 3)
        code, hist = await _cli(["history", "b1"], url)
        # --to by hash prefix: back to v2's content
        code2, _ = await _cli(["rollback", "b1", "--no-smoke", "--to", v2.content_hash[:8]],
                              url)
        assert code2 == 0
        await wait_for(lambda: _runs(a, v2.content_hash) and _runs(b, v2.content_hash))
    assert code == 0
    lines = hist.splitlines()
    assert lines[0].startswith("  v1") and "'two'" in lines[0]
    assert lines[1:3] == ["        + boom_after = 0", "        + qty = 2.0"]  # first: all
    assert "qty: 2.0 -> 7.0" in hist and "qty: 7.0 -> 2.0" in hist
    assert lines[-2].startswith("* v3") and "[rollback of v1]" in lines[-2]


async def test_agent_refuses_a_version_failing_its_own_admission_and_keeps_the_old_one(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    url = nats_server.url
    cfg_a = _agent_cfg(tmp_path / "node-a", "node-a", url)
    source = (tmp_path / "node-a" / "strategies" / "flipper.py").read_bytes()
    src_hash = hashlib.sha256(source).hexdigest()
    config = textwrap.dedent("""\
        name = "b1"
        strategy = "../strategies/flipper.py"
        venue = "paper"
        account = "paper-main"
        symbols = ["GOOG"]
        [params]
        qty = 1.0
        boom_after = "soon"
    """)
    bad = DeployVersion(bot="b1", version=1, content_hash="f" * 64, source_hash=src_hash,
                        params_hash="0" * 64, strategy="Flipper", strategy_file="flipper.py",
                        params={"qty": 1.0}, config=config, operator="mallory")
    deploy, sources = await ensure_deploy_kv(nats_client.jetstream())
    await sources.put(src_hash, source)
    async with running_agent(cfg_a, items=_items()) as a:
        old = a.supervisor.slots["b1"].content_hash
        await deploy.put(version_key("b1", 1), encode(bad))
        await deploy.put(desired_key("b1"), encode(bad))  # bypassing the CLI
        refused: list[DeployRefused] = []

        async def got() -> bool:
            refused[:] = [e for e in await a.store.query(kind="DeployRefused")
                          if isinstance(e, DeployRefused)]
            return bool(refused)

        await wait_for(got)
        assert "params.boom_after" in refused[0].reason and refused[0].version == 1
        assert refused[0].running_hash == old
        # a path-escaping file name is refused without touching the disk outside state/
        evil = msgspec.structs.replace(bad, version=2, strategy_file="../../evil.py")
        await deploy.put(desired_key("b1"), encode(evil))

        async def two() -> bool:
            return len(await a.store.query(kind="DeployRefused")) == 2

        await wait_for(two)
        await asyncio.sleep(0.5)  # several polls: a refused version is not retried
        assert len(await a.store.query(kind="DeployRefused")) == 2
        assert _runs(a, old) and a.supervisor.slots["b1"].state.value == "RUNNING"
        last = (await a.store.query(kind="DeployRefused"))[-1]
    assert isinstance(last, DeployRefused) and "plain *.py file name" in last.reason
    assert not (tmp_path / "evil.py").exists() and not (tmp_path / "node-a" / "evil.py").exists()


@pytest.mark.parametrize("stage", ["research"])
async def test_undeployable_stage_is_refused(tmp_path: Path, nats_server: EmbeddedNatsServer,
                                             stage: str) -> None:
    bot = _repo(tmp_path / "repo", qty=1.0)
    bot.write_text(f'stage = "{stage}"\n' + bot.read_text())
    code, out = await _cli(["deploy", str(bot), "--no-smoke", "--dry-run"], nats_server.url)
    assert code == 78 and "not deployable" in out


async def test_ci_dry_run_then_deploy_of_the_shipped_etc_tree_with_smoke_runs(
    nats_server: EmbeddedNatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    etc = str(Path(__file__).resolve().parents[2] / "etc")
    url = nats_server.url
    assert await asyncio.to_thread(main, ["deploy", etc, "--dry-run", "--server", url]) == 0
    out = capsys.readouterr().out
    assert "smoke: " in out  # admission ran its smoke backtests, as `qtd validate` does
    bots = [ln.split()[1] for ln in out.splitlines() if ln.startswith("~ ")]
    assert "momo-goog" in bots and "(never deployed)" in out
    assert f"dry run: {len(bots)} bot(s) would change, nothing published" in out
    assert await asyncio.to_thread(main, ["deploy", etc, "-m", "first", "--server", url]) == 0
    assert f"{len(bots)} bot(s) deployed" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["deploy", etc, "--dry-run", "--server", url]) == 0
    assert "dry run: 0 bot(s) would change" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["history", "momo-goog", "--server", url]) == 0
    assert "'first'" in capsys.readouterr().out


async def test_a_fill_arriving_while_the_bot_stops_for_a_swap_reaches_the_new_strategy(
    tmp_path: Path, nats_server: EmbeddedNatsServer
) -> None:
    """Deterministic form of the race above: a fill delivered (as the agent does, to the
    slot's current runner) after the old runner finished and before the new one exists
    must still count in the restarted strategy's position."""
    cfg = write_fleet(tmp_path, {"r1": {}}, strategy="rester", bus_url=nats_server.url,
                      market=MARKET, extra=EXTRA)
    async with running_agent(cfg, items=_items()) as a:
        slot = a.supervisor.slots["r1"]
        old = slot.runner
        assert old is not None and old.ctx.positions["GOOG"].qty == 0
        restart = asyncio.create_task(a.deploys._restart(slot))
        while old.state.value != "STOPPED":
            await asyncio.sleep(0)
        assert slot.runner is old  # the new runner does not exist yet
        runner = a.supervisor.runner("r1")
        assert runner is not None
        runner.deliver_fill(factories.fill("c1", "t1", qty="3", price="100", bot="r1",
                                           symbol="GOOG", account="paper-main"))
        await restart
        await wait_for(lambda: slot.runner is not old and slot.runner is not None)
        assert slot.runner is not None and slot.runner.ctx.positions["GOOG"].qty == 3


async def test_promotion_goes_paper_shadow_live_with_the_gate_checked_on_the_node(
    tmp_path: Path, nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    from qtd.admit import admit_bot
    from qtd.gates import GateResult, write_gate

    url = nats_server.url
    cfg_a = _agent_cfg(tmp_path / "node-a", "node-a", url)
    bot = _repo(tmp_path / "repo", qty=1.0)
    paper = bot.read_text()
    adm = await admit_bot(bot, smoke=False)
    write_gate(bot, GateResult(passed=True, checks=[], source_hash=adm.source_hash,
                               params_hash=adm.params_hash))
    async with running_agent(cfg_a, items=_items()) as a:
        slot = a.supervisor.slots["b1"]
        assert (await _cli(["deploy", str(bot), "--no-smoke", "--stage", "paper"], url))[0] == 0
        await wait_for(lambda: a.deploys.running.get("b1") == 1)  # the node runs v1 first
        bot.write_text('stage = "live"\n' + paper)
        code, out = await _cli(["deploy", str(bot), "--no-smoke", "--stage", "live"], url)
        assert code == 78 and "promote one stage at a time: paper -> shadow first" in out
        bot.write_text('stage = "shadow"\n' + paper)
        assert (await _cli(["deploy", str(bot), "--no-smoke"], url))[0] == 0
        await wait_for(lambda: slot.stage == "shadow" and a.deploys.running.get("b1") == 2)
        bot.write_text('stage = "live"\n' + paper)
        code, out = await _cli(["deploy", str(bot), "--no-smoke", "--stage", "live",
                                "--canary", "-m", "go live"], url)
        assert code == 0, out
        assert "stage: shadow -> live" in out and "CANARY" in out
        v = await _desired(nats_client)
        assert v is not None and v.version == 3 and v.canary and v.stage == "live"
        await wait_for(lambda: slot.stage == "live" and a.deploys.running.get("b1") == 3)
        assert slot.content_hash == adm.content_hash  # same code and params all along
        events = await a.store.query(kind="BotVersion")
    assert [(e.version, e.stage, e.how) for e in events if isinstance(e, BotVersion)] == [
        (0, "paper", "start"), (1, "paper", "same"), (2, "shadow", "stage"),
        (3, "live", "stage")]
