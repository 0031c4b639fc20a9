"""Deploy rules without NATS: admission plus stage rules on real files, version files for
re-admission (path safety, the node's own risk file), diffs, rollback selection."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec
import pytest

from qtd.admit import admit_bot
from qtd.commands.deploy import pick_rollback
from qtd.deploy.diff import params_diff, source_diff
from qtd.deploy.files import deployed_config, load_current, materialize, save_current
from qtd.deploy.model import DeployVersion
from qtd.deploy.plan import admit_for_deploy, new_version, promotion_problem
from qtd.errors import ConfigError
from tests.agent_rig import write_fleet


def _version(n: int, content: str, stage: str = "paper", **kw: object) -> DeployVersion:
    return DeployVersion(bot="b1", version=n, content_hash=content * 64, source_hash="a" * 64,
                         params_hash="0" * 64, strategy="Flipper", strategy_file="flipper.py",
                         params={}, config="", stage=stage, **kw)  # type: ignore[arg-type]


async def test_stage_rules_add_to_admission_and_a_bot_is_deployed_once(tmp_path: Path) -> None:
    write_fleet(tmp_path, {"b1": {"qty": 1.0}, "b2": {"qty": 1.0}})
    b2 = tmp_path / "bots" / "b2.toml"
    b2.write_text('stage = "shadow"\n' + b2.read_text())
    twin = tmp_path / "other" / "bots" / "b1.toml"
    twin.parent.mkdir(parents=True)
    twin.write_text((tmp_path / "bots" / "b1.toml").read_text().replace(
        "../strategies", "../../strategies"))
    res = await admit_for_deploy([tmp_path / "bots", twin], stage="paper", smoke=False)
    by_path = {r.path: r for r in res}
    assert by_path[tmp_path / "bots" / "b1.toml"].ok
    assert [p.rule for p in by_path[b2].problems] == [
        "deploy --stage paper: the config must say stage = 'paper' (the reviewed file sets "
        "the stage)"]
    assert any("bot deployed twice in one command" in p.rule for p in by_path[twin].problems)
    canary = await admit_for_deploy([tmp_path / "bots" / "b1.toml"], canary=True, smoke=False)
    assert canary[0].problems[0].rule == "--canary is for live bots only"


async def test_promotion_goes_one_stage_at_a_time(tmp_path: Path) -> None:
    write_fleet(tmp_path, {"b1": {}})
    adm = await admit_bot(tmp_path / "bots" / "b1.toml", smoke=False)
    assert promotion_problem(adm, "shadow", _version(1, "a", "paper")) is None
    assert promotion_problem(adm, "paper", _version(1, "a", "live")) is None  # demotion
    assert promotion_problem(adm, "live", None) is None  # first deploy: the gate decides
    p = promotion_problem(adm, "live", _version(4, "a", "paper"))
    assert p is not None and p.field == "stage" and "paper -> shadow first" in p.rule


async def test_version_files_are_readmitted_against_the_nodes_own_risk_file(
    tmp_path: Path
) -> None:
    write_fleet(tmp_path / "repo", {"b1": {"qty": 2.0}})
    adm = await admit_bot(tmp_path / "repo" / "bots" / "b1.toml", smoke=False)
    source = (tmp_path / "repo" / "strategies" / "flipper.py").read_bytes()
    v = new_version(adm, source, number=1, operator="a", message="m", canary=False)
    node_risk = tmp_path / "node-risk.toml"
    node_risk.write_text("[global]\nmax_order_qty = 1.0\n[strategy_defaults]\n")
    cfg = materialize(v, source, tmp_path / "deploy", node_risk)
    assert cfg.parent.parent.name == f"v1-{v.content_hash[:12]}"
    again = await admit_bot(cfg, smoke=False)
    # same content, but this node's risk file caps orders at 1: refused here
    assert not again.ok and again.content_hash == ""
    assert [(p.field, p.rule) for p in again.problems] == [
        ("params.qty", f"max order qty 2.0 > max_order_qty 1.0 ({node_risk})")]
    permissive = materialize(v, source, tmp_path / "deploy2", tmp_path / "repo" / "risk.toml")
    ok = await admit_bot(permissive, smoke=False)
    assert ok.ok and ok.content_hash == v.content_hash
    with pytest.raises(ConfigError, match="do not match source_hash"):
        materialize(v, source + b"# tampered\n", tmp_path / "deploy3", None)
    with pytest.raises(ConfigError, match=r"plain \*\.py file name"):
        materialize(msgspec.structs.replace(v, strategy_file="../x.py"), source,
                    tmp_path / "deploy4", None)
    with pytest.raises(ConfigError, match="the version is for bot 'b9'"):
        materialize(msgspec.structs.replace(v, bot="b9"), source, tmp_path / "deploy5", None)


async def test_an_accepted_version_replaces_the_local_config_at_start(tmp_path: Path) -> None:
    write_fleet(tmp_path / "repo", {"b1": {"qty": 2.0}})
    local = write_fleet(tmp_path / "node", {"b1": {"qty": 1.0}}).parent / "bots" / "b1.toml"
    state = tmp_path / "node" / "state"
    assert deployed_config(state, local) == local
    adm = await admit_bot(tmp_path / "repo" / "bots" / "b1.toml", smoke=False)
    source = (tmp_path / "repo" / "strategies" / "flipper.py").read_bytes()
    v = new_version(adm, source, number=3, operator="a", message="", canary=False)
    cfg = materialize(v, source, state / "deploy" / "b1", None)
    save_current(state, v, cfg)
    assert deployed_config(state, local) == cfg
    moved = tmp_path / "node" / "risk-moved.toml"
    moved.write_text((tmp_path / "node" / "risk.toml").read_text())
    assert deployed_config(state, local, moved) == cfg  # same files, risk file re-pointed
    assert f'risk_file = "{moved}"' in cfg.read_text()
    tampered = cfg.parent.parent / "strategies" / "flipper.py"
    tampered.write_bytes(tampered.read_bytes() + b"# edited on the node\n")
    assert deployed_config(state, local, moved) == local  # not its hash: not used
    tampered.write_bytes(source)
    cur = load_current(state, "b1")
    assert cur is not None and cur.version.version == 3
    cfg.unlink()  # its files gone: the local config again
    assert deployed_config(state, local) == local


def test_params_and_source_diffs() -> None:
    assert params_diff({"fast": 10, "slow": 30, "x": {"a": 1}},
                       {"fast": 12, "slow": 30, "qty": 5, "x": {"a": 2}}) == [
        "fast: 10 -> 12", "+ qty = 5", "x.a: 1 -> 2"]
    assert params_diff({"a": 1}, {"a": 1}) == []
    assert params_diff({"a": 1}, {}) == ["- a = 1"]
    diff = source_diff(b"x = 1\ny = 2\n", b"x = 1\ny = 3\n", "a/s.py", "b/s.py")
    assert diff[:2] == ["--- a/s.py", "+++ b/s.py"] and "-y = 2" in diff and "+y = 3" in diff


def test_rollback_picks_the_previous_other_content_or_the_named_version() -> None:
    hist = [_version(1, "a"), _version(2, "b"), _version(3, "b"), _version(4, "c")]
    assert pick_rollback(hist, hist[-1], None).version == 3
    assert pick_rollback(hist[:3], hist[2], None).version == 1  # v2 has v3's content
    assert pick_rollback(hist, hist[-1], "v1").version == 1
    assert pick_rollback(hist, hist[-1], "2").version == 2
    assert pick_rollback(hist, hist[-1], "aaaa").version == 1
    with pytest.raises(ConfigError, match="a version number or 4"):
        pick_rollback(hist, hist[-1], "9")
    with pytest.raises(ConfigError, match="no earlier version"):
        pick_rollback(hist[:1], hist[0], None)
    assert hashlib.sha256(b"").hexdigest()  # the hashes above are sha256-shaped hex


async def test_a_live_version_carries_its_gate_result_and_is_readmitted_with_it(
    tmp_path: Path
) -> None:
    from qtd.gates import GateResult, write_gate

    write_fleet(tmp_path / "repo", {"b1": {"qty": 2.0}})
    cfg = tmp_path / "repo" / "bots" / "b1.toml"
    paper = await admit_bot(cfg, smoke=False)
    cfg.write_text('stage = "live"\n' + cfg.read_text())
    refused = await admit_for_deploy([cfg], stage="live", canary=True, smoke=False)
    assert "no gate result" in refused[0].problems[0].rule  # admission's promotion gate
    write_gate(cfg, GateResult(passed=True, checks=[], source_hash=paper.source_hash,
                               params_hash=paper.params_hash))
    [adm] = await admit_for_deploy([cfg], stage="live", canary=True, smoke=False)
    assert adm.ok
    source = (tmp_path / "repo" / "strategies" / "flipper.py").read_bytes()
    v = new_version(adm, source, number=1, operator="a", message="", canary=True)
    assert v.stage == "live" and v.canary and '"passed": true' in v.gate
    node_cfg = materialize(v, source, tmp_path / "node", tmp_path / "repo" / "risk.toml")
    assert (await admit_bot(node_cfg, smoke=False)).ok
    stale = msgspec.structs.replace(v, gate=v.gate.replace(paper.params_hash, "0" * 64))
    again = await admit_bot(materialize(stale, source, tmp_path / "node2", None), smoke=False)
    assert any("is for other params" in p.rule for p in again.problems)
