"""Subject names and Msg-Ids: exact strings, and names that would change a subject's meaning
are refused with the field, value and rule."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from qtd.bus import NODE_LEVEL_BOT, Subjects, msg_id
from qtd.errors import ConfigError


def test_default_prefix_subjects() -> None:
    s = Subjects()
    assert s.prefix == "qtd"
    assert s.evt("node-a", "bot1", "Fill") == "qtd.evt.node-a.bot1.Fill"
    assert s.pnl("node-a", "bot1") == "qtd.pnl.node-a.bot1"
    assert s.hb("node-a") == "qtd.hb.node-a"
    assert s.hb_leader == "qtd.hb.leader" == s.hb("leader")
    assert s.ctl_kill == "qtd.ctl.kill"
    assert s.ctl("node-a", "halt") == "qtd.ctl.node-a.halt"


def test_wildcards_for_subscribers() -> None:
    s = Subjects()
    assert s.evt_all == "qtd.evt.>"
    assert s.evt_filter() == "qtd.evt.*.*.*"
    assert s.evt_filter(node="node-a") == "qtd.evt.node-a.*.*"
    assert s.evt_filter(kind="Fill") == "qtd.evt.*.*.Fill"
    assert s.evt_filter(bot="") == f"qtd.evt.*.{NODE_LEVEL_BOT}.*"
    assert s.pnl_all == "qtd.pnl.>"
    assert s.hb_all == "qtd.hb.*"
    assert s.ctl_node("node-a") == "qtd.ctl.node-a.*"


def test_custom_and_multi_token_prefix() -> None:
    assert Subjects("acme").evt("n", "b", "Fill") == "acme.evt.n.b.Fill"
    assert Subjects("acme.qtd").hb("n") == "acme.qtd.hb.n"


def test_node_level_events_use_reserved_bot_token() -> None:
    s = Subjects()
    assert s.evt("node-a", "", "Heartbeat") == "qtd.evt.node-a._.Heartbeat"
    assert s.pnl("node-a", "") == "qtd.pnl.node-a._"
    with pytest.raises(ConfigError) as e:
        s.evt("node-a", "_", "Fill")
    assert e.value.field == "bot" and e.value.value == "_" and "reserved" in e.value.rule


BAD_TOKENS = ["", "a.b", "a*", ">", "a b", "tab\there", "nl\n", "cr\r", "nul\x00", "\u00a0x"]

CALLS: list[tuple[str, Callable[[Subjects, str], str]]] = [
    ("node", lambda s, v: s.evt(v, "bot1", "Fill")),
    ("bot", lambda s, v: s.evt("node-a", v, "Fill")),
    ("kind", lambda s, v: s.evt("node-a", "bot1", v)),
    ("node", lambda s, v: s.evt_filter(node=v)),
    ("node", lambda s, v: s.pnl(v, "bot1")),
    ("bot", lambda s, v: s.pnl("node-a", v)),
    ("node", lambda s, v: s.hb(v)),
    ("node", lambda s, v: s.ctl(v, "halt")),
    ("verb", lambda s, v: s.ctl("node-a", v)),
    ("node", lambda s, v: s.ctl_node(v)),
]
CASES = [
    pytest.param(field, call, bad, id=f"{i}-{field}-{bad!r}")
    for i, (field, call) in enumerate(CALLS)
    for bad in BAD_TOKENS
    if not (field == "bot" and bad == "")  # "" is the node-level bot, tested above
]


@pytest.mark.parametrize(("field", "call", "bad"), CASES)
def test_invalid_tokens_are_refused_not_mangled(
    field: str, call: Callable[[Subjects, str], str], bad: str
) -> None:
    with pytest.raises(ConfigError) as e:
        call(Subjects(), bad)
    err = e.value
    assert err.field == field
    assert err.value == bad
    assert "'.', '*', '>', whitespace" in err.rule
    assert repr(bad) in str(err) and field in str(err)


@pytest.mark.parametrize("bad", ["", "qtd.", ".qtd", "a..b", "q*", "q>", "q t", "qtd.>"])
def test_invalid_prefix(bad: str) -> None:
    with pytest.raises(ConfigError) as e:
        Subjects(bad)
    assert e.value.field == "prefix" and e.value.value == bad


def test_unicode_names_that_are_valid_tokens_pass_through_unchanged() -> None:
    assert Subjects().evt("nœud-1", "bot_β", "Fill") == "qtd.evt.nœud-1.bot_β.Fill"


def test_msg_id() -> None:
    assert msg_id("node-a", "0123456789abcdef", 42) == "node-a:0123456789abcdef:42"
