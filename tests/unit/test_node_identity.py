"""NATS identities (qtd.bus.identity), the logins' permissions (qtd.bus.logins) and the ops
node's keyring (qtd.nodes.keyring): keys, signed JWTs and .creds files, per-node least
privilege, and the keyring's refusals. The running server's view is tests/e2e/
test_node_enrol.py and tests/integration/test_nats_acl*.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qtd.bus import identity
from qtd.bus.config import BusConfig, inbox_prefix
from qtd.bus.logins import permissions
from qtd.cli import main
from qtd.errors import ConfigError
from qtd.nodes.keyring import Keyring


def test_a_signed_jwt_verifies_only_against_its_issuer_and_unaltered() -> None:
    account, other = identity.new_key("account"), identity.new_key("account")
    user = identity.new_key("user")
    token = identity.user_jwt(identity.public_key(user), "agent-n1", account,
                              permissions("agent", "n1"))
    claims = identity.verify(token, identity.public_key(account))
    assert claims["sub"] == identity.public_key(user) and claims["name"] == "agent-n1"
    assert claims["nats"]["type"] == "user" and claims["nats"]["resp"] == {"max": 1, "ttl": 0}
    with pytest.raises(identity.IdentityError):
        identity.verify(token, identity.public_key(other))
    head, _body, sig = token.split(".")
    forged = identity.sign({**claims, "name": "leader"}, other).split(".")[1]
    with pytest.raises(identity.IdentityError):
        identity.verify(f"{head}.{forged}.{sig}", identity.public_key(account))


def test_creds_round_trip_and_name_the_inbox() -> None:
    account, user = identity.new_key("account"), identity.new_key("user")
    token = identity.user_jwt(identity.public_key(user), "agent-n1", account,
                              permissions("agent", "n1"))
    text = identity.creds(token, user)
    assert identity.read_creds(text) == (token, identity.seed_of(user))
    assert identity.creds_login(text) == "agent-n1"
    with pytest.raises(identity.IdentityError, match=r"not a \.creds file"):
        identity.read_creds("user: x\npassword: y\n")
    with pytest.raises(identity.IdentityError, match="expected a operator key"):
        identity.key_from_seed(identity.seed_of(user), "operator")


def test_a_creds_login_reads_replies_on_its_own_inbox(tmp_path: Path) -> None:
    account, user = identity.new_key("account"), identity.new_key("user")
    token = identity.user_jwt(identity.public_key(user), "agent-node-c", account,
                              permissions("agent", "node-c"))
    f = tmp_path / "nats.creds"
    f.write_text(identity.creds(token, user))
    assert inbox_prefix(BusConfig(creds_file=str(f))) == "_INBOX_agent-node-c"
    assert "_INBOX_agent-node-c.>" in permissions("agent", "node-c").subscribe


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` one or more at the end."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


NODE = st.from_regex(r"[a-z][a-z0-9-]{0,11}", fullmatch=True)


@given(NODE, NODE)
def test_an_agent_login_never_reaches_another_nodes_subjects_or_the_kill_key(
        me: str, other: str) -> None:
    if me == other:
        return
    perms = permissions("agent", me)
    theirs = [f"qtd.evt.{other}.b.Fill", f"qtd.pnl.{other}.b", f"qtd.hb.{other}",
              f"qtd.ack.kill.{other}", f"$JS.API.DIRECT.GET.QTD_EVENTS.qtd.evt.{other}.b.Fill",
              f"$KV.qtd_control.preflight.{other}", "$KV.qtd_control.kill", "qtd.ctl.kill",
              "qtd.hb.leader", f"qtd.ctl.{other}.halt",
              "$JS.API.CONSUMER.CREATE.QTD_EVENTS", "$JS.API.STREAM.PURGE.QTD_EVENTS",
              "$JS.API.STREAM.DELETE.KV_qtd_control"]
    assert [s for s in theirs if any(_matches(p, s) for p in perms.publish)] == []
    reads = [f"qtd.ctl.{other}.halt", f"_INBOX_agent-{other}.x", "_INBOX.x", "qtd.evt.x.y.z",
             f"qtd.hb.{other}"]
    assert [s for s in reads if any(_matches(p, s) for p in perms.subscribe)] == []
    mine = [f"qtd.evt.{me}.b.Fill", f"qtd.hb.{me}", f"$KV.qtd_control.preflight.{me}"]
    assert all(any(_matches(p, s) for p in perms.publish) for s in mine)


def test_only_the_leader_and_operator_may_write_the_kill_key() -> None:
    writers = {role for role in ("agent", "leader", "operator", "deployer", "system")
               if any(_matches(p, "$KV.qtd_control.kill")
                      for p in permissions(role, "n1").publish)}  # type: ignore[arg-type]
    assert writers == {"leader", "operator"}


def test_keyring_refusals_name_what_to_do(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path / "k", servers=("nats://127.0.0.1:4222",))
    with pytest.raises(ConfigError, match="already holds a keyring"):
        Keyring.create(tmp_path / "k", servers=("nats://127.0.0.1:4222",))
    ring.issue("agent", "node-c")
    with pytest.raises(ConfigError, match="agent-node-c already has a login in force"):
        ring.issue("agent", "node-c")
    with pytest.raises(ConfigError, match=r"invalid node 'a\.b'"):
        ring.issue("agent", "a.b")
    with pytest.raises(ConfigError, match="logins in force: agent-node-c"):
        ring.revoke("node-x")
    revoked = ring.revoke("node-c")
    again = Keyring.open(tmp_path / "k")
    assert again.find("node-c") is None and again.registry.logins == [revoked]
    claims = identity.verify(again.account_jwt(), again.registry.operator)
    assert claims["nats"]["revocations"] == {revoked.public_key: revoked.revoked_at}
    assert claims["nats"]["limits"]["disk_storage"] == -1  # JetStream on
    again.issue("agent", "node-c")  # a new key for the same node once the old one is revoked
    assert len(again.registry.logins) == 2
    (tmp_path / "k" / "account.nk").write_text(
        identity.seed_of(identity.new_key("account")) + "\n")
    with pytest.raises(ConfigError, match="seeds do not match"):
        Keyring.open(tmp_path / "k")


def test_server_include_names_the_operator_and_both_accounts(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path / "k", servers=("nats://127.0.0.1:4222",))
    text = ring.server_include()
    reg = ring.registry
    assert re.search(rf'system_account: "{reg.system_account}"', text)
    assert f"  {reg.account}: " in text and f"  {reg.system_account}: " in text
    op = re.search(r'operator: "([^"]+)"', text)
    assert op and identity.verify(op.group(1), reg.operator)["nats"]["system_account"] == \
        reg.system_account
    seeds = [(tmp_path / "k" / f).read_text().strip()
             for f in ("operator.nk", "system.nk", "account.nk")]
    seeds.append(identity.read_creds(ring.system_creds().read_text())[1])
    assert all(len(seed) == 58 and seed not in text for seed in seeds)  # public data only


@pytest.mark.parametrize(("role", "name", "words"), [
    ("agent", "node/c", r"invalid node 'node/c'"),
    ("agent", "nødé", r"invalid node 'nødé'"),  # _INBOX_agent-n_d_: node n_d_'s inbox
    ("operator", "a b", r"invalid name 'a b'"),
    ("operator", "../../tmp/evil", r"invalid name '\.\./\.\./tmp/evil'"),  # --out default
    ("deployer", "agent-node-x", "name the agent and system logins"),
    ("leader", "node-c", "the login agent-node-c is in force under that name"),
])
def test_login_names_are_tokens_that_name_one_login(tmp_path: Path, role: str, name: str,
                                                    words: str) -> None:
    # review of issue 25: names outside [A-Za-z0-9_-] shared an inbox (_INBOX_<name> maps
    # the others to _), and a deployer named node-c was what `qtd node revoke node-c` revoked
    ring = Keyring.create(tmp_path / "k", servers=("nats://127.0.0.1:4222",))
    ring.issue("agent", "node-c")
    with pytest.raises(ConfigError, match=words):
        if role == "agent":
            ring.issue("agent", name)
        else:
            ring.issue(role, name=name)  # type: ignore[arg-type]
    assert [x.name for x in ring.registry.logins] == ["agent-node-c"]


def test_a_named_operator_login_reads_its_own_inbox(tmp_path: Path) -> None:
    # review of issue 25: `qtd node add ops-alice --role operator` signed _INBOX_operator.>
    # while its clients use _INBOX_ops-alice (the JWT's name): every request timed out
    ring = Keyring.create(tmp_path / "k", servers=("nats://127.0.0.1:4222",))
    token, _seed = identity.read_creds(ring.issue("operator", name="ops-alice"))
    claims = identity.verify(token, ring.registry.account)
    assert claims["nats"]["sub"]["allow"][-1] == "_INBOX_ops-alice.>"
    assert "_INBOX_operator.>" not in claims["nats"]["sub"]["allow"]


def test_node_list_tells_a_revocation_no_server_applied_yet(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # review of issue 25: with the server unreachable, `qtd node revoke` exited 75 but
    # `qtd node list` showed the login "revoked" while the running server still took it
    keys = tmp_path / "k"
    ring = Keyring.create(keys, servers=("nats://127.0.0.1:4222",))
    ring.issue("agent", "node-c")
    ring.issue("agent", "node-d")
    ring.revoke("node-c")
    ring.revoke("node-d", handed_out=False)  # its .creds was never written: nothing to push
    assert main(["node", "list", "--keys", str(keys)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"agent-node-c +agent +UNPUSHED", out)
    assert re.search(r"agent-node-d +agent +revoked", out)
    assert "run `qtd node revoke agent-node-c` again" in out
    ring.mark_applied()
    assert main(["node", "list", "--keys", str(keys)]) == 0
    assert "UNPUSHED" not in capsys.readouterr().out


def test_init_takes_an_empty_directory_and_a_writable_include(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # review of issue 25: `qtd node init --keys /etc/qtd` made that directory 0700 (the
    # agent's configs unreadable to it); an include in a missing directory was a traceback
    # after the keyring was made, and init then refused to run again
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    (shared / "agent.toml").write_text("")
    inc = str(tmp_path / "inc.conf")
    assert main(["node", "init", "--keys", str(shared), "--nats-include", inc]) == 78
    assert shared.stat().st_mode & 0o777 == 0o755 and not (shared / "account.nk").exists()
    keys = str(tmp_path / "k")
    bad = str(tmp_path / "no" / "inc.conf")
    assert main(["node", "init", "--keys", keys, "--nats-include", bad]) == 78
    assert "--nats-include" in capsys.readouterr().err
    assert main(["node", "init", "--keys", keys, "--nats-include", inc]) == 0


def test_a_seed_readable_by_others_is_refused(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # review of issue 25: only the directory's mode was checked
    keys = tmp_path / "k"
    Keyring.create(keys, servers=("nats://127.0.0.1:4222",))
    (keys / "account.nk").chmod(0o640)
    assert main(["node", "list", "--keys", str(keys)]) == 2
    assert f"chmod 600 {keys / 'account.nk'}" in capsys.readouterr().err
