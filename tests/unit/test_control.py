"""The control protocol (qtd.control): one shape per concept, the page's actions as leader
requests, and wire compatibility of what crosses NATS."""

from __future__ import annotations

import msgspec
import pytest

from qtd.control import (
    ControlAction,
    KillCommand,
    KillSet,
    LeaderRequest,
    NodeRequest,
    decode_kill_set,
    kill_file_body,
    new_kill,
)
from qtd.errors import ConfigError
from qtd.events import Scope


@pytest.mark.parametrize(("target", "scope"), [
    ("global", Scope.GLOBAL), ("bot", Scope.STRATEGY), ("account", Scope.ACCOUNT),
    ("symbol", Scope.SYMBOL)])
@pytest.mark.parametrize("verb", ["kill", "flatten"])
def test_a_page_kill_is_the_leaders_kill_request(target: str, scope: Scope, verb: str) -> None:
    a = ControlAction(verb=verb, target=target, key="k", reason="r", operator="op")  # type: ignore[arg-type]
    assert a.leader_request() == ("kill", LeaderRequest(
        operator="op", reason="r", scope=scope, key="k", flatten=verb == "flatten"))


def test_a_page_resume_names_what_it_releases() -> None:
    def req(target: str, key: str) -> tuple[str, LeaderRequest]:
        return ControlAction(verb="resume", target=target, key=key,  # type: ignore[arg-type]
                             reason="r", operator="op").leader_request()

    assert req("kill", "abc") == ("resume", LeaderRequest(
        operator="op", reason="r", key="abc", kill_ids=["abc"]))
    assert req("global", "") == ("resume", LeaderRequest(operator="op", reason="r"))
    assert req("bot", "b1") == ("resume", LeaderRequest(
        operator="op", reason="r", scope=Scope.STRATEGY, key="b1"))
    with pytest.raises(ConfigError, match="resume only"):
        ControlAction(verb="kill", target="kill", key="abc", reason="r",
                      operator="op").leader_request()


def test_a_page_action_on_a_node_is_the_agents_verb() -> None:
    for verb, agent_verb in (("kill", "halt"), ("flatten", "flatten"), ("resume", "resume")):
        a = ControlAction(verb=verb, target="node", key="n1", reason="r",  # type: ignore[arg-type]
                          operator="op")
        assert a.node_request() == (agent_verb, NodeRequest(operator="op", reason="r"))


def test_wire_field_names_are_unchanged() -> None:
    """Older agents and CLIs decode these: the names and their order are the wire."""
    kill = new_kill(reason="r", scope=Scope.SYMBOL, key="SPY", cap="daily_loss")
    assert list(msgspec.json.decode(msgspec.json.encode(kill))) == [
        "id", "scope", "key", "reason", "flatten", "operator", "source", "ts_ns", "cap"]
    assert list(msgspec.json.decode(msgspec.json.encode(NodeRequest()))) == [
        "operator", "reason", "scope", "key"]
    assert list(msgspec.json.decode(msgspec.json.encode(LeaderRequest()))) == [
        "operator", "reason", "alert_id", "scope", "key", "flatten", "kill_ids", "everything",
        "cap", "limit"]
    assert list(msgspec.json.decode(kill_file_body(kill))) == [
        "scope", "key", "reason", "flatten", "operator", "source"]
    assert decode_kill_set(msgspec.json.encode(KillSet(kills=(kill,)))).kills == (kill,)


def test_a_kill_set_item_without_an_id_is_not_believed() -> None:
    """A set whose kill lacks its id reads as one GLOBAL kill naming the problem."""
    ks = decode_kill_set(b'{"kills": [{"scope": "SYMBOL", "key": "SPY", "reason": "r"}]}')
    (only,) = ks.kills
    assert only.scope is Scope.GLOBAL and only.id.startswith("undecodable-")
    assert isinstance(only, KillCommand)
