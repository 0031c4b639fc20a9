"""AgentConfig: the shipped example loads; errors name file, field, value and rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from qtd.agent.config import load_agent_config, parse_agent_config
from qtd.errors import ConfigError

ETC = Path(__file__).resolve().parents[2] / "etc"


def test_example_config_loads_with_paths_resolved_against_its_directory() -> None:
    cfg = load_agent_config(ETC / "agent.toml")
    assert cfg.node == "node-a" and cfg.bus is not None and cfg.bus.prefix == "qtd"
    assert Path(cfg.risk) == ETC / "risk.toml" and Path(cfg.bots[0]) == ETC / "bots"
    assert cfg.store_path == Path(cfg.state_dir) / "events.db"
    assert cfg.failsafe == "REDUCING" and cfg.leader_timeout_s == 5.0
    assert cfg.kill_store_delay_s == 0.005
    assert cfg.accounts["paper-main"].broker == "paper"
    assert cfg.market.bots["breakout-spx"].dataset == "sp500_1d"


def test_defaults_and_offline_mode() -> None:
    cfg = parse_agent_config({"node": "n1", "bus": {"enabled": False}})
    assert cfg.offline and cfg.on_shutdown == "leave" and cfg.restart.max_per_hour == 3
    assert parse_agent_config({"node": "n1"}).offline


@pytest.mark.parametrize(("doc", "field", "value", "rule"), [
    ({"node": "n1", "bogus": 1}, "bogus", 1, "unknown field"),
    ({"node": "n1", "restart": {"max_per_hour": -1}}, "restart.max_per_hour", -1, ">= 0"),
    ({"node": "n1", "on_shutdown": "explode"}, "on_shutdown", "explode", "Invalid enum"),
    ({"node": "n1", "kill_store_delay_s": 0.2}, "kill_store_delay_s", 0.2, "<= 0.05"),
    ({"node": "n1", "kill_store_delay_s": -0.001}, "kill_store_delay_s", -0.001, ">= 0"),
    ({"node": "a.b"}, "node", "a.b", "NATS subject token"),
    ({"node": "leader"}, "node", "leader", "leader"),
    ({"node": "n1", "trading_day": {"tz": "Mars/Olympus"}}, "trading_day.tz", "Mars/Olympus",
     "IANA"),
    ({"node": "n1", "market": {"bots": {"b": {"dataset": "nope"}}}},
     "market.bots.b.dataset", "nope", "known sets: goog_1d"),
    ({"node": "n1", "restart": {"backoff_s": 10.0, "backoff_max_s": 1.0}},
     "restart.backoff_s", 10.0, "backoff_max_s"),
    ({"node": "n1", "bus": {"servers": ["nats://h:1"], "user": "u"}}, "bus.password", "***",
     "go together"),
    ({"node": "n1", "workers": {"group": "host"}}, "workers.group", "host", "Invalid enum value"),
    ({"node": "n1", "workers": {"memory_mb": 8}}, "workers.memory_mb", 8, ">= 16"),
])
def test_errors_name_file_field_value_and_rule(doc: dict, field: str, value: object,
                                               rule: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_agent_config(doc, source="agent.toml")
    e = err.value
    assert e.source == "agent.toml" and e.field == field and rule in e.rule
    assert e.value == value and str(e).startswith("agent.toml: ")


def test_secrets_are_not_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as err:
        parse_agent_config({"node": "n1", "bus": {"token": 12345}}, source="a.toml")
    assert "12345" not in str(err.value) and err.value.value == "***"


def test_unreadable_and_bad_toml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_agent_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("node = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_agent_config(bad)
