"""The reply-inbox prefix each bus user gets (issue 21, 6): derived from the user, the one
etc/nats-server.conf lets that user read, or set and validated."""

from __future__ import annotations

import pytest

from qtd.bus import BusConfig, check_bus_config, inbox_prefix
from qtd.errors import ConfigError


def test_inbox_prefix_is_derived_from_the_user_unless_set() -> None:
    assert inbox_prefix(BusConfig(user="agent-node-a", password="p")) == "_INBOX_agent-node-a"
    assert inbox_prefix(BusConfig(user="ops.alice smith", password="p")) == \
        "_INBOX_ops_alice_smith"
    assert inbox_prefix(BusConfig()) == "_INBOX"
    assert inbox_prefix(BusConfig(user="u", password="p", inbox_prefix="_I.node-a")) == \
        "_I.node-a"


@pytest.mark.parametrize("bad", ["", "_INBOX.>", "a..b", "x *", "_INBOX.*"])
def test_a_bad_inbox_prefix_names_the_field_the_value_and_the_rule(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_bus_config(BusConfig(inbox_prefix=bad), "agent.toml")
    assert err.value.field == "bus.inbox_prefix" and err.value.value == bad
    assert "agent.toml" in err.value.message and "token" in err.value.message


def test_a_user_in_the_server_url_gets_its_own_inbox() -> None:
    cfg = BusConfig(servers=("nats://leader:secret@127.0.0.1:4222",))
    assert inbox_prefix(cfg) == "_INBOX_leader"
