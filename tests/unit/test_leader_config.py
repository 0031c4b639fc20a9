"""etc/leader.toml loads; bad values are refused naming the field; the systemd unit verifies
cleanly; the CLI parses the leader commands."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from qtd.cli import build_parser
from qtd.errors import ConfigError
from qtd.leader.config import consumer_name, load_leader_config, parse_leader_config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "qtd-leader.service"


def _example() -> dict[str, Any]:
    return tomllib.loads((ROOT / "etc" / "leader.toml").read_text())


def test_example_config_loads_with_every_cap() -> None:
    cfg = load_leader_config(ROOT / "etc" / "leader.toml")
    caps = cfg.caps
    assert None not in (caps.daily_loss, caps.drawdown, caps.gross_exposure,
                        caps.symbol_exposure, caps.error_rate, caps.order_spike,
                        caps.self_trade)
    assert cfg.kill.ack_timeout_s == 1.0 and cfg.liveness.heartbeat_timeout_s == 5.0


@pytest.mark.parametrize(("path", "value", "field"), [
    (("caps", "daily_loss", "limit"), -5, "caps.daily_loss.limit"),
    (("caps", "self_trade", "level"), "L9", "caps.self_trade.level"),
    (("fleet", "trading_day_tz"), "Mars/Olympus", "fleet.trading_day_tz"),
    (("notify", "quiet_hours", "end"), "25:99", "notify.quiet_hours.end"),
    (("notify", "destinations", "P1"), ["nonsense://x"], "notify.destinations.P1[0]"),
    (("caps", "order_spike", "baseline_s"), 2.0, "caps.order_spike.baseline_s"),
    (("lease", "renew_s"), 2.0, "lease.renew_s"),
    (("lease", "instance"), "ops 1", "lease.instance"),
])
def test_bad_values_name_the_field(path: tuple[str, ...], value: object, field: str) -> None:
    data = _example()
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError) as err:
        parse_leader_config(data, "leader.toml")
    assert err.value.field == field and "leader.toml" in str(err.value)


def test_unknown_field_is_refused() -> None:
    data = _example()
    data["caps"]["daily_loss"]["limt"] = 1
    with pytest.raises(ConfigError, match="limt"):
        parse_leader_config(data, "leader.toml")


def test_cli_parses_leader_commands() -> None:
    p = build_parser()
    assert p.parse_args(["leader", "--config", "x.toml"]).config == "x.toml"
    r = p.parse_args(["resume", "--operator", "alice", "--reason", "fixed"])
    assert (r.operator, r.reason) == ("alice", "fixed")
    assert p.parse_args(["ack", "3f2a9c1b"]).alert_id == "3f2a9c1b"
    assert p.parse_args(["alerts", "--json"]).json
    with pytest.raises(SystemExit):
        p.parse_args(["resume", "--operator", "alice"])  # a reason is required


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed on this machine")
def test_systemd_unit_verifies_cleanly(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace("/opt/qtd/venv/bin/qtd", str(Path(sys.executable).parent / "qtd")))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr


def test_lease_needs_an_instance_and_names_its_consumer() -> None:
    data = _example()
    data["lease"].update(enabled=True, instance="")
    with pytest.raises(ConfigError) as err:
        parse_leader_config(data, "leader.toml")
    assert err.value.field == "lease.instance" and "required" in str(err.value)
    data["lease"]["instance"] = "ops-2"
    assert consumer_name(parse_leader_config(data)) == "qtd-leader-ops-2"
    assert consumer_name(load_leader_config(ROOT / "etc" / "leader.toml")) == "qtd-leader"
