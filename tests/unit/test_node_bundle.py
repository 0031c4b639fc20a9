"""``qtd node add`` bundles and ``qtd node install`` (qtd.nodes.bundle / install): what a
bundle holds, the refusals that name the field and the known values, and an install that
writes only where a bundle may write. The whole story on a real server is
tests/e2e/test_node_enrol.py."""

from __future__ import annotations

import io
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from qtd.cli import main
from qtd.errors import ConfigError, OperationalError
from qtd.nodes.bundle import Bundle, build_bundle
from qtd.nodes.install import install_bundle, read_bundle
from qtd.nodes.keyring import Keyring

ETC = Path(__file__).resolve().parents[2] / "etc"


def _template(tmp: Path) -> Path:
    doc = (ETC / "agent.toml").read_text() + (
        '\n[accounts.alpaca-live]\nbroker = "alpaca"\nmode = "live"\n'
        'credentials_env = ["ALPACA_API_KEY", "ALPACA_SECRET_KEY"]\n'
        'credentials_file = "/etc/qtd/alpaca.env"\n')
    (tmp / "agent.toml").write_text(doc)
    (tmp / "risk.toml").write_bytes((ETC / "risk.toml").read_bytes())
    (tmp / "bots").mkdir()
    for name in ("momo-goog", "breakout-spx"):
        (tmp / "bots" / f"{name}.toml").write_bytes((ETC / "bots" / f"{name}.toml").read_bytes())
    return tmp / "agent.toml"


def _bundle(tmp: Path, **kw: Any) -> Bundle:
    return build_bundle(node="node-c", creds="CREDS", template=_template(tmp),
                        servers=("nats://10.0.0.5:4222",), prefix="qtd", **kw)


def test_the_agent_config_names_its_login_and_only_its_accounts(tmp_path: Path) -> None:
    b = _bundle(tmp_path, accounts=["alpaca-live"], bots=[],
                envs={"alpaca-live": b"ALPACA_API_KEY=k\nALPACA_SECRET_KEY=s\n"})
    doc = tomllib.loads(b.contents["etc/qtd/agent.toml"].decode())
    assert doc["node"] == "node-c" and doc["state_dir"] == "/var/lib/qtd"
    assert doc["bus"] == {"servers": ["nats://10.0.0.5:4222"], "name": "qtd-agent-node-c",
                          "prefix": "qtd", "creds_credential": "nats.creds"}
    assert list(doc["accounts"]) == ["alpaca-live"]
    assert "credentials_file" not in doc["accounts"]["alpaca-live"]  # systemd gives them
    dropin = b.contents["etc/systemd/system/qtd-agent.service.d/credentials.conf"].decode()
    assert "LoadCredential=alpaca-live.env:/etc/qtd/credentials/alpaca-live.env" in dropin
    modes = {f.path: (f.mode, f.group) for f in b.manifest.files}
    assert modes["etc/qtd/credentials/nats.creds"] == (0o600, "root")
    assert modes["etc/qtd/credentials/alpaca-live.env"] == (0o600, "root")
    assert modes["etc/qtd/agent.toml"] == (0o640, "qtd")


@pytest.mark.parametrize(("kw", "field", "words"), [
    ({"accounts": ["nope"]}, "accounts", "known: alpaca-live, paper-main"),
    ({"bots": ["ghost"]}, "bots", "known: breakout-spx, momo-goog"),
    ({"accounts": ["alpaca-live"], "bots": ["momo-goog"]}, "bots",
     "trades an account not given to this node"),
    ({"accounts": ["paper-main"], "envs": {"paper-main": b"x"}}, "env",
     "not an account of this node that reads keys"),
])
def test_bad_choices_name_the_field_and_the_known_values(
        tmp_path: Path, kw: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as e:
        _bundle(tmp_path, **kw)
    assert e.value.field == field


def _tar(path: Path, manifest: dict[str, object], files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {"manifest.json": msgspec.json.encode(manifest), **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "etc/qtd/../../root/x",
                                 "usr/bin/qtd"])
def test_install_writes_only_under_etc_qtd_and_the_unit_directory(
        tmp_path: Path, bad: str) -> None:
    manifest = {"node": "n", "login": "agent-n", "qtd_version": "0", "created_at": 0,
                "files": [{"path": bad, "mode": 0o644}]}
    bundle = _tar(tmp_path / "b.tar.gz", manifest, {f"root/{bad}": b"x"})
    with pytest.raises(ConfigError, match="goes under etc/qtd/ or etc/systemd/system/"):
        read_bundle(bundle)
    with pytest.raises(ConfigError):
        install_bundle(bundle, tmp_path / "root")
    assert not (tmp_path / "root").exists()  # nothing written


def test_install_reports_a_missing_broker_credential(tmp_path: Path) -> None:
    b = _bundle(tmp_path, accounts=["alpaca-live"], bots=[])
    path = b.write(tmp_path / "b.tar.gz")
    report = install_bundle(path, tmp_path / "root")
    assert report.missing_credentials == ("alpaca-live.env",)
    assert (tmp_path / "root/etc/qtd/credentials/nats.creds").read_text() == "CREDS"
    with pytest.raises(ConfigError, match="not a qtd node bundle"):
        install_bundle(tmp_path / "agent.toml", tmp_path / "root")


@pytest.mark.parametrize(("path", "mode", "owner", "words"), [
    ("etc/systemd/system/evil.service", 0o644, "root", "not a file qtd node add writes"),
    ("etc/systemd/system/multi-user.target.wants/x.service", 0o644, "root",
     "not a file qtd node add writes"),
    ("etc/systemd/system/qtd-agent.service.d/override.conf", 0o644, "root",
     "not a file qtd node add writes"),
    ("etc/qtd/sudoers", 0o640, "root", "not a file qtd node add writes"),
    ("etc/qtd/strategies/x.py", 0o4755, "root", "installed root:qtd 0640 only"),
    ("etc/qtd/credentials/nats.creds", 0o644, "root", "installed root:root 0600 only"),
    ("etc/qtd/credentials/nats.creds", 0o600, "qtd", "installed root:root 0600 only"),
])
def test_install_refuses_a_crafted_file_mode_or_owner(
        tmp_path: Path, path: str, mode: int, owner: str, words: str) -> None:
    # review of issue 25: a crafted bundle could add any unit under etc/systemd/system (run as
    # root at boot), a setuid file, or hand the service user the node's NATS seed
    manifest = {"node": "n", "login": "agent-n", "qtd_version": "0", "created_at": 0,
                "files": [{"path": path, "mode": mode, "owner": owner,
                           "group": "qtd" if path.endswith(".py") else owner}]}
    bundle = _tar(tmp_path / "b.tar.gz", manifest, {f"root/{path}": b"x"})
    with pytest.raises(ConfigError, match=words) as e:
        install_bundle(bundle, tmp_path / "root")
    assert e.value.field == "path"
    assert not (tmp_path / "root").exists()  # nothing written


def test_a_reinstall_removes_the_bots_the_new_bundle_drops(tmp_path: Path) -> None:
    # review of issue 25: the agent runs every bots/*.toml; a bot moved to another node and
    # left behind by a reinstall here would trade on both
    root = tmp_path / "root"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    both = _bundle(tmp_path / "a", accounts=["paper-main"], bots=["momo-goog", "breakout-spx"])
    install_bundle(both.write(tmp_path / "both.tar.gz"), root)
    one = _bundle(tmp_path / "b", accounts=["paper-main"], bots=["momo-goog"])
    report = install_bundle(one.write(tmp_path / "one.tar.gz"), root)
    assert sorted(p.name for p in (root / "etc/qtd/bots").iterdir()) == ["momo-goog.toml"]
    assert sorted(p.name for p in (root / "etc/qtd/strategies").iterdir()) == ["ma_cross.py"]
    assert any("breakout-spx.toml: not in this bundle" in n for n in report.notes)


def test_install_writes_nothing_through_a_symlink(tmp_path: Path) -> None:
    b = _bundle(tmp_path, accounts=["paper-main"], bots=[])
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    (root / "etc/qtd").mkdir(parents=True)
    elsewhere.mkdir()
    (root / "etc/qtd/credentials").symlink_to(elsewhere)
    with pytest.raises(OperationalError, match="is a symlink"):
        install_bundle(b.write(tmp_path / "b.tar.gz"), root)
    assert list(elsewhere.iterdir()) == []


def test_install_leaves_etc_qtd_readable_by_a_nats_server_on_the_same_host(
        tmp_path: Path) -> None:
    # review of issue 25: /etc/qtd 0750 root:qtd locked the nats user (systemd/nats-server
    # .service) out of /etc/qtd/nats-server.conf and nats-auth.conf on a shared host
    b = _bundle(tmp_path, accounts=["paper-main"], bots=[])
    root = tmp_path / "root"
    (root / "etc/qtd").mkdir(parents=True)
    (root / "etc/qtd/nats-server.conf").write_text("listen: 127.0.0.1:4222\n")
    install_bundle(b.write(tmp_path / "b.tar.gz"), root)
    assert (root / "etc/qtd").stat().st_mode & 0o777 == 0o755
    assert (root / "etc/qtd/credentials").stat().st_mode & 0o777 == 0o700
    assert (root / "etc/qtd/nats-server.conf").exists()  # not pruned


@pytest.mark.parametrize("role", ["agent", "operator"])
def test_an_unwritable_out_is_a_config_error_and_no_login_stays_in_force(
        tmp_path: Path, role: str, capsys: pytest.CaptureFixture[str]) -> None:
    # review of issue 25: a typo in --out was a traceback (exit 1) that left the login in
    # force with no bundle; running the command again then said "revoke it first"
    keys = str(tmp_path / "k")
    assert main(["node", "init", "--keys", keys, "--nats-include",
                 str(tmp_path / "inc.conf")]) == 0
    add = ["node", "add", "n1", "--role", role, "--keys", keys]
    assert main([*add, "--out", str(tmp_path / "no" / "such" / "dir" / "b")]) == 78
    err = capsys.readouterr().err
    assert "--out" in err and "No such file or directory" in err and "Traceback" not in err
    assert main([*add, "--out", str(tmp_path / "b")]) == 0


def test_a_bot_another_node_runs_is_refused(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    # review of issue 25: `qtd node add node-d --from <node-c's agent.toml>` gave node-d every
    # bot of node-c on the same accounts by default: each would trade twice
    keys = str(tmp_path / "k")
    template = str(_template(tmp_path))
    assert main(["node", "init", "--keys", keys, "--nats-include",
                 str(tmp_path / "inc.conf")]) == 0
    add = ["node", "add", "--keys", keys, "--from", template, "--accounts", "paper-main"]
    assert main([*add, "node-c", "--out", str(tmp_path / "c.tgz")]) == 0
    assert main([*add, "node-d", "--out", str(tmp_path / "d.tgz")]) == 78
    err = capsys.readouterr().err
    assert "breakout-spx (runs on node-c), momo-goog (runs on node-c)" in err
    assert not (tmp_path / "d.tgz").exists()
    Keyring.open(Path(keys)).revoke("node-c")  # node-c's server was rebuilt without them
    assert main([*add, "node-d", "--out", str(tmp_path / "d.tgz")]) == 0  # moved


def test_add_names_the_host_paths_absolute(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    # review of issue 25: it said "etc/qtd/credentials/nats.creds" (relative to nothing)
    keys = str(tmp_path / "k")
    assert main(["node", "init", "--keys", keys, "--nats-include",
                 str(tmp_path / "inc.conf")]) == 0
    assert main(["node", "add", "ops", "--role", "operator", "--keys", keys,
                 "--out", str(tmp_path / "ops.creds")]) == 0
    assert "give it to that process: /etc/qtd/credentials/nats.creds" in capsys.readouterr().out


def test_a_bundle_of_many_big_files_is_refused_before_it_is_read(tmp_path: Path) -> None:
    # review of issue 25: each member was capped at 4 MiB but not their number: 4 MiB of
    # zeros gzip to ~4 KB, so a 1 MB bundle could make root's install hold gigabytes
    files = {f"etc/qtd/bots/b{i}.toml": 4 * 1024 * 1024 for i in range(17)}
    manifest = {"node": "n", "login": "agent-n", "qtd_version": "0", "created_at": 0,
                "files": [{"path": p, "mode": 0o640, "owner": "root", "group": "qtd"}
                          for p in files]}
    path = tmp_path / "b.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        data = msgspec.json.encode(manifest)
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for name, size in files.items():
            info = tarfile.TarInfo(f"root/{name}")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    with pytest.raises(ConfigError, match="at most 67,108,864 bytes of files"):
        read_bundle(path)


@pytest.mark.parametrize(("bot", "field", "words"), [
    ("garbage = = ", "bots", "unreadable bot config of the template"),
    ('name = "x"\nstrategy = "nosuch.py"\naccount = "paper-main"\n', "bots",
     "unreadable strategy of"),
    ('name = "x"\naccount = "paper-main"\n', "bots", "names its strategy file"),
    (None, "bots", "unreadable bot config of the template"),  # no bots directory
])
def test_a_bad_template_file_is_a_config_error_naming_it(
        tmp_path: Path, bot: str | None, field: str, words: str) -> None:
    # review of issue 25: each of these was a traceback (TOMLDecodeError, FileNotFoundError,
    # KeyError) from `qtd node add --from`
    template = _template(tmp_path)
    for f in (tmp_path / "bots").iterdir():
        f.unlink()
    if bot is None:
        (tmp_path / "bots").rmdir()
    else:
        (tmp_path / "bots" / "x.toml").write_text(bot)
    with pytest.raises(ConfigError, match=words) as e:
        build_bundle(node="node-c", creds="CREDS", template=template,
                     servers=("nats://10.0.0.5:4222",), prefix="qtd", accounts=["paper-main"])
    assert e.value.field == field


def test_an_account_systemd_cannot_load_is_a_config_error(tmp_path: Path) -> None:
    template = _template(tmp_path)
    template.write_text(template.read_text() + '\n[accounts."a%b"]\nbroker = "alpaca"\n'
                        'mode = "live"\ncredentials_env = ["K"]\n')
    with pytest.raises(ConfigError, match=r"credential name 'a%b\.env' refused") as e:
        build_bundle(node="node-c", creds="CREDS", template=template,
                     servers=("nats://10.0.0.5:4222",), prefix="qtd", accounts=["a%b"], bots=[])
    assert e.value.field == "accounts"


def test_a_bundle_for_another_node_is_not_installed_over_this_one(tmp_path: Path) -> None:
    # review of issue 25: node-d's bundle installed over node-c made the host run as node-d
    # on node-c's event store (orders, fills, positions of node-c's accounts)
    root = tmp_path / "root"
    c = _bundle(tmp_path, accounts=["paper-main"], bots=[])
    install_bundle(c.write(tmp_path / "c.tar.gz"), root)
    d = build_bundle(node="node-d", creds="CREDS", template=tmp_path / "agent.toml",
                     servers=("nats://10.0.0.5:4222",), prefix="qtd", accounts=["paper-main"],
                     bots=[])
    with pytest.raises(ConfigError, match="this host runs node 'node-c'") as e:
        install_bundle(d.write(tmp_path / "d.tar.gz"), root)
    assert e.value.field == "node"
    install_bundle(c.write(tmp_path / "c.tar.gz"), root)  # the same node again: fine
