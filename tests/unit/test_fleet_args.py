"""One way to reach a fleet: the connection options' precedence, logins without a password
on the command line, the ``qtd up`` context file, and the stores of that fleet."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qtd.bus.denied import PermissionDenied, restore_case, violation
from qtd.cli import build_parser
from qtd.commands.fleet import DEFAULT_SERVER, bus_from_args, db_from_args, needs
from qtd.errors import ConfigError, TemporaryError
from qtd.fleetctx import FleetContext, NodeContext, write_context

OPERATOR_COMMANDS = (["kill", "--reason", "x"], ["resume", "--operator", "a", "--reason", "b"],
                     ["alerts"], ["ack", "a1"], ["deploy", "etc"], ["versions"],
                     ["history", "b"], ["rollback", "b"])
STORE_COMMANDS = (["events"], ["positions"], ["report", "execution"], ["report", "daily"],
                  ["surveil"])


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def _context(state: Path, pid: int | None = None,
             url: str = "nats://127.0.0.1:40001") -> FleetContext:
    state.mkdir(parents=True, exist_ok=True)
    ctx = FleetContext(
        state_dir=str(state), nats_url=url, prefix="qtd",
        leader_config=str(state / "etc" / "leader.toml"), fleet_db=str(state / "fleet.db"),
        web_url="http://127.0.0.1:8080/", pid=os.getpid() if pid is None else pid,
        started_ns=1, nodes={"node-1": NodeContext(
            config=str(state / "etc" / "node-1.toml"), kill_file=str(state / "node-1/qtd.kill"),
            events_db=str(state / "node-1" / "events.db"), bots=("b1",))})
    write_context(ctx)
    return ctx


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(autouse=True)
def _nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``qtd up`` fleet unless a test makes one: an empty cwd, no $QTD_STATE."""
    monkeypatch.delenv("QTD_STATE", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("argv", OPERATOR_COMMANDS, ids=lambda a: a[0])
def test_every_operator_command_takes_the_same_options(argv: list[str]) -> None:
    args = _args(*argv, "--server", "nats://h:1", "--user", "operator", "--password-env",
                 "PW", "--prefix", "p")
    os.environ["PW"] = "s3cret"
    try:
        bus = bus_from_args(args)
    finally:
        del os.environ["PW"]
    assert (bus.servers, bus.user, bus.password, bus.prefix) == (("nats://h:1",), "operator",
                                                                "s3cret", "p")
    assert "s3cret" not in repr(bus)


@pytest.mark.parametrize("argv", STORE_COMMANDS, ids=" ".join)
def test_every_store_command_finds_the_fleets_store(argv: list[str], tmp_path: Path) -> None:
    ctx = _context(tmp_path / "qtd-state")
    assert db_from_args(_args(*argv)) == ctx.fleet_db
    assert db_from_args(_args(*argv, "--db", "x.db")) == "x.db"
    assert db_from_args(_args(*argv, "--node", "node-1")) == ctx.nodes["node-1"].events_db
    with pytest.raises(ConfigError, match=r"not a node of .*nodes: node-1"):
        db_from_args(_args(*argv, "--node", "node-9"))


def test_store_command_without_a_fleet_asks_for_db() -> None:
    with pytest.raises(ConfigError, match="--db is required: no `qtd up` fleet here"):
        db_from_args(_args("events"))


def test_precedence_server_then_config_then_context_then_default(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    assert bus_from_args(_args("alerts")).servers == (DEFAULT_SERVER,)
    here = _context(tmp_path / "qtd-state")
    assert bus_from_args(_args("alerts")).servers == (here.nats_url,)  # ./qtd-state
    _context(tmp_path / "elsewhere", url="nats://127.0.0.1:40002")
    monkeypatch.setenv("QTD_STATE", str(tmp_path / "elsewhere"))
    assert bus_from_args(_args("alerts")).servers == ("nats://127.0.0.1:40002",)  # env wins
    assert bus_from_args(_args("alerts", "--context", str(tmp_path / "qtd-state"))).servers \
        == (here.nats_url,)  # --context wins over the env
    toml = tmp_path / "leader.toml"
    toml.write_text('fleet_db = "x"\n[bus]\nservers = ["nats://10.0.0.5:4222"]\nuser = '
                    '"leader"\npassword_credential = "nats-leader-password"\n')
    bus = bus_from_args(_args("alerts", "--config", str(toml), "--user", "operator",
                              "--password-env", "HOME"))
    assert (bus.servers, bus.user, bus.password_credential) == (("nats://10.0.0.5:4222",),
                                                                "operator", None)
    assert bus_from_args(_args("alerts", "--server", "nats://a:1")).servers == ("nats://a:1",)
    with pytest.raises(ConfigError, match="--server and --config: give one"):
        bus_from_args(_args("alerts", "--server", "nats://a:1", "--config", str(toml)))


def test_a_named_context_must_exist_and_a_stopped_fleet_is_not_dialled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="no qtd up context here"):
        bus_from_args(_args("kill", "--reason", "x", "--context", str(tmp_path / "none")))
    monkeypatch.setenv("QTD_STATE", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="no qtd up context here"):
        bus_from_args(_args("alerts"))
    monkeypatch.delenv("QTD_STATE")
    ctx = _context(tmp_path / "qtd-state", pid=_dead_pid())
    with pytest.raises(TemporaryError, match=f"is not running: its NATS {ctx.nats_url} is "
                       "gone") as e:
        bus_from_args(_args("alerts"))
    assert e.value.exit_code == 75


def test_logins_never_take_a_password_on_the_command_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):  # argparse: no such option
        build_parser().parse_args(["alerts", "--password", "x"])
    with pytest.raises(ConfigError, match="--user goes with --password-file"):
        bus_from_args(_args("alerts", "--user", "operator"))
    with pytest.raises(ConfigError, match="--password-env NOPE: the variable is unset"):
        bus_from_args(_args("alerts", "--user", "operator", "--password-env", "NOPE"))
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    pw.chmod(0o644)
    with pytest.raises(ConfigError, match="mode 0644: refused"):
        bus_from_args(_args("alerts", "--user", "operator", "--password-file", str(pw)))
    pw.chmod(0o600)
    bus = bus_from_args(_args("alerts", "--user", "operator", "--password-file", str(pw)))
    assert bus.password == "from-file"
    creds = tmp_path / "op.creds"
    creds.write_text("creds")
    creds.chmod(0o600)
    assert bus_from_args(_args("alerts", "--creds", str(creds))).creds_file == str(creds)
    with pytest.raises(ConfigError, match="--creds and --user"):
        bus_from_args(_args("alerts", "--creds", str(creds), "--user", "operator",
                            "--password-file", str(pw)))


def test_a_permission_violation_reads_as_one_line_naming_user_and_subject() -> None:
    assert violation('nats: permissions violation for publish to "$kv.qtd_control.kill"') \
        == ("publish", "$KV.qtd_control.kill")
    assert violation('nats: permissions violation for subscription to "qtd.ack.kill.*"') \
        == ("subscribe", "qtd.ack.kill.*")
    assert violation("nats: unknown error") is None
    assert restore_case("$js.api.direct.get.kv_qtd_control.$kv.qtd_control.kill") == \
        "$JS.API.DIRECT.GET.KV_qtd_control.$KV.qtd_control.kill"
    assert restore_case("qtd.ack.kill.node-a") == "qtd.ack.kill.node-a"
    err = PermissionDenied(user="agent-node-a", action="publish",
                           subject="$KV.qtd_control.kill", command="kill", needs=needs("kill"))
    assert str(err) == ("kill: NATS login agent-node-a may not publish to $KV.qtd_control.kill "
                        "(qtd/bus/logins.py; kill needs the operator (or leader) login)")
    assert err.exit_code == 2 and "\n" not in str(err)
