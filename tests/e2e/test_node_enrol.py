"""Enrolling a server the way the README's "Deploying to servers" does it, on a real
nats-server started from the SHIPPED etc/nats-server.conf, every step a ``qtd`` command as an
operator types it:

1. ``qtd node init`` on the ops node: the keyring and the include the shipped config reads;
   nats-server starts on them (only the port and the directories changed for the test);
2. ``qtd node add leader --role leader``: the leader's login; it creates the stream and the
   KV buckets as ``qtd leader`` does at start;
3. ``qtd node add node-c``: node-c's bundle, issued with NO change to the server's config
   files and NO restart (same process, same bytes on disk);
4. ``qtd node install`` of that bundle into a temporary root: the files with their modes,
   then ``qtd preflight`` on the installed config with node-c's own login (kill switch round
   trip on its own test key: no other role's secret on the server);
5. node-c's login works for node-c and is refused publishing under node-a's subjects,
   reading node-a's reply inbox and writing the kill key;
6. ``qtd node revoke node-c`` while node-c is connected: its live connection is closed by the
   server and its next connect is refused. The time from the command's start to the close,
   and from the server's reply to the close, is printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.msg import Msg

from qtd.bus import ensure_jetstream, find_nats_server
from qtd.bus.jetstream import ensure_deploy_kv
from qtd.bus.logins import inbox_of
from tests.agent_rig import stop_process
from tests.shipped import CONF, ROOT, run_qtd

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _conf(nats_dir: Path, port: int) -> Path:
    text = CONF.read_text()
    text = text.replace('listen: "127.0.0.1:4222"', f'listen: "127.0.0.1:{port}"')
    text = re.sub(r"^http: .*$", "", text, flags=re.M)
    text = text.replace('store_dir: "/var/lib/nats"', f'store_dir: "{nats_dir / "js"}"')
    text = text.replace('dir: "/var/lib/nats/accounts"', f'dir: "{nats_dir / "accounts"}"')
    out = nats_dir / "nats-server.conf"
    out.write_text(text)
    return out


def _ok(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    done = run_qtd(args, **env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


async def _connect(url: str, creds: Path, login: str, errors: list[str], **kw: object
                   ) -> nats.NATS:
    async def on_error(e: Exception) -> None:
        errors.append(str(e).lower())

    return await nats.connect(url, user_credentials=str(creds), inbox_prefix=inbox_of(login),
                              error_cb=on_error, allow_reconnect=False, connect_timeout=2,
                              **kw)


async def _denied(errors: list[str], what: str) -> None:
    for _ in range(250):
        if any("permissions violation" in e and what.lower() in e for e in errors):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no permissions violation for {what!r}: {errors}")


async def test_enrol_a_server_and_revoke_it_on_the_running_shipped_server(
        tmp_path: Path) -> None:
    keys, nats_dir, ops = tmp_path / "keys", tmp_path / "nats", tmp_path / "ops"
    nats_dir.mkdir()
    ops.mkdir()
    port = _free_port()
    url = f"nats://127.0.0.1:{port}"
    _ok(["node", "init", "--keys", str(keys), "--server", url,
         "--nats-include", str(nats_dir / "nats-auth.conf")])
    assert _mode(keys) == 0o700 and _mode(keys / "account.nk") == 0o600
    conf = _conf(nats_dir, port)
    proc = subprocess.Popen([str(find_nats_server()), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    clients: list[nats.NATS] = []
    try:
        await _enrol_and_revoke(tmp_path, keys, nats_dir, ops, url, proc, clients)
    finally:
        for nc in clients:
            with contextlib.suppress(Exception):
                await nc.close()
        stop_process(proc)


async def _start_leader_side(url: str, keys: Path, ops: Path) -> nats.NATS:
    _ok(["node", "add", "leader", "--role", "leader", "--keys", str(keys),
         "--out", str(ops / "leader.creds")])
    for _ in range(250):
        with contextlib.suppress(nats.errors.NoServersError, OSError):
            leader = await _connect(url, ops / "leader.creds", "leader", [])
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("nats-server did not start")
    js = leader.jetstream()
    await ensure_jetstream(js, "qtd")
    await ensure_deploy_kv(js)
    return leader


async def _enrol_and_revoke(tmp: Path, keys: Path, nats_dir: Path, ops: Path, url: str,
                            proc: subprocess.Popen[bytes], clients: list[nats.NATS]) -> None:
    leader = await _start_leader_side(url, keys, ops)
    clients.append(leader)
    server_files = {p: p.read_bytes() for p in (nats_dir / "nats-server.conf",
                                                 nats_dir / "nats-auth.conf")}

    # 3. the bundle: issued on the ops node, nothing on the server changes
    bundle = ops / "qtd-node-node-c.tar.gz"
    add = _ok(["node", "add", "node-c", "--accounts", "paper-main", "--bots",
               "momo-goog,breakout-spx", "--keys", str(keys), "--out", str(bundle), "--json"])
    assert json.loads(add.stdout)["login"] == "agent-node-c"
    assert _mode(bundle) == 0o600
    assert {p: p.read_bytes() for p in server_files} == server_files  # no config edit
    assert proc.poll() is None  # no restart

    # 4. installed into a temporary root, modes as the manifest says; preflight runs with
    # node-c's own login
    root = tmp / "root"
    inst = run_qtd(["node", "install", str(bundle), "--root", str(root)])
    assert "Traceback" not in inst.stderr, inst.stderr
    etc = root / "etc" / "qtd"
    expect = {etc: 0o755, etc / "credentials": 0o700, etc / "credentials" / "nats.creds": 0o600,
              etc / "agent.toml": 0o640, etc / "risk.toml": 0o640,
              root / "etc/systemd/system/qtd-agent.service.d/credentials.conf": 0o644,
              root / "etc/systemd/system/qtd-agent.service": 0o644}
    assert {p: _mode(p) for p in expect} == expect
    shipped_unit = ROOT / "systemd" / "qtd-agent.service"
    assert (root / "etc/systemd/system/qtd-agent.service").read_bytes() == \
        shipped_unit.read_bytes()  # the shipped unit as it is: never edited per host
    assert sorted(p.name for p in (etc / "bots").iterdir()) == [
        "breakout-spx.toml", "momo-goog.toml"]
    assert sorted(p.name for p in (etc / "strategies").iterdir()) == [
        "donchian_breakout.py", "ma_cross.py"]
    assert all(_mode(p) == 0o640 for p in (etc / "bots").iterdir())
    assert "kill switch round trip" in inst.stdout and "test key preflight.node-c" in inst.stdout
    row = next(line for line in inst.stdout.splitlines() if "kill switch round trip" in line)
    assert " ok " in f" {row} ", inst.stdout
    with tarfile.open(bundle) as tar:  # the bundle holds no other role's secret
        names = tar.getnames()
    assert [n for n in names if n.endswith(".creds")] == [
        "root/etc/qtd/credentials/nats.creds"]
    creds = etc / "credentials" / "nats.creds"

    # 5. node-c's login: its own subjects yes; node-a's, node-a's inbox, the kill key no
    got: list[str] = []

    async def on_hb(m: Msg) -> None:
        got.append(m.subject)

    sub = await leader.subscribe("qtd.hb.node-c", cb=on_hb)
    errors: list[str] = []
    closed = asyncio.Event()
    t_close: list[float] = []

    async def on_closed() -> None:
        t_close.append(time.perf_counter())
        t_close.append(time.time_ns())
        closed.set()

    nc = await _connect(url, creds, "agent-node-c", errors, closed_cb=on_closed)
    clients.append(nc)
    await nc.publish("qtd.hb.node-c", b"{}")
    await nc.flush()
    for _ in range(100):
        if got:
            break
        await asyncio.sleep(0.02)
    assert got == ["qtd.hb.node-c"]
    await sub.unsubscribe()
    for subject in ("qtd.hb.node-a", "qtd.evt.node-a.b1.Fill", "$KV.qtd_control.kill"):
        await nc.publish(subject, b"{}")
        await _denied(errors, subject)
    await nc.subscribe("_INBOX_agent-node-a.>")
    await _denied(errors, "_INBOX_agent-node-a.>")
    assert not nc.is_closed

    # 6. revoked while connected: closed by the server, refused from then on
    t0 = time.perf_counter()
    rev = await asyncio.to_thread(run_qtd, ["node", "revoke", "node-c", "--keys", str(keys),
                                            "--nats-include", str(nats_dir / "nats-auth.conf"),
                                            "--json"])
    t_done = time.perf_counter()
    assert rev.returncode == 0, rev.stdout + rev.stderr
    await asyncio.wait_for(closed.wait(), timeout=5)
    pushed = json.loads(rev.stdout)["pushed"]
    assert pushed["code"] == 200
    print(f"\nrevocation: `qtd node revoke` start -> node-c's live connection closed "
          f"{(t_close[0] - t0) * 1e3:.0f} ms; the command ran {(t_done - t0) * 1e3:.0f} ms "
          f"(the account update's request -> server reply {pushed['elapsed_ms']:.1f} ms; "
          "the rest is the CLI's start-up and the keyring); account update sent -> "
          "connection closed "
          f"{(t_close[1] - pushed['replied_ns']) / 1e6 + pushed['elapsed_ms']:.1f} ms")
    # its next connect is refused: node-c's own preflight says so (a refused nats-py
    # connect leaks its socket, so the check runs in the operator's command)
    again = run_qtd(["preflight", "--config", str(etc / "agent.toml")],
                    CREDENTIALS_DIRECTORY=str(etc / "credentials"))
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr
    row = next(line for line in again.stdout.splitlines() if "NATS reachable" in line)
    assert "FAIL" in row and "refused" in row.lower(), again.stdout
    listed = json.loads(_ok(["node", "list", "--keys", str(keys), "--json"]).stdout)
    state = {x["name"]: x["revoked_at"] is not None for x in listed["logins"]}
    assert state == {"leader": False, "agent-node-c": True}
    assert proc.poll() is None
