"""``qtd node init|add|list|revoke|install``: the fleet's hosts and their NATS logins."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, TextIO

import msgspec

from qtd.bus.logins import ROLES, login_name
from qtd.errors import ConfigError, OperationalError, QtdError
from qtd.files import atomic_write_bytes
from qtd.nodes.bundle import AGENT_UNIT, CREDENTIALS, ETC, Bundle, build_bundle
from qtd.nodes.install import install_bundle
from qtd.nodes.keyring import (
    DEFAULT_KEYS_DIR,
    DEFAULT_SERVER_INCLUDE,
    KEYS_ENV,
    Keyring,
    Login,
    check_keyring_mode,
    keys_dir,
)
from qtd.nodes.push import push_account
from qtd.shipped import shipped_dir

DESCRIPTION = """\
Every qtd process logs in to NATS with its own .creds file (NATS decentralized JWT auth):
the fleet's keyring on the ops node signs each login with exactly its role's permissions
(an agent publishes only under its own node's subjects and never writes the kill key). The
running nats-server accepts a new login with no change of its config and no restart, and
`qtd node revoke` closes a revoked login's connections at once.

On the ops node (once):  qtd node init --server nats://10.0.0.5:4222
                          then start nats-server with etc/nats-server.conf
Per trading server:      qtd node add node-c --accounts alpaca-live      (ops node)
                          qtd node install qtd-node-node-c.tar.gz         (the server)
Other logins:            qtd node add leader --role leader   (also operator, deployer)
"""


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("node", help="fleet hosts: NATS logins, host bundles, installs",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    nsub = p.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    keys = argparse.ArgumentParser(add_help=False)
    keys.add_argument("--keys", metavar="DIR", help=f"the keyring (default ${KEYS_ENV}, "
                      f"else {DEFAULT_KEYS_DIR})")
    keys.add_argument("--json", action="store_true", help="one JSON document on stdout")
    inc = argparse.ArgumentParser(add_help=False)
    inc.add_argument("--nats-include", metavar="FILE", default=DEFAULT_SERVER_INCLUDE,
                     help="the nats-server include to (re)write: operator, accounts, "
                     f"revocations (default {DEFAULT_SERVER_INCLUDE})")
    _init(nsub, keys, inc)
    _add(nsub, keys)
    ls = nsub.add_parser("list", parents=[keys], help="every login issued, in force or not")
    ls.set_defaults(handler=run_list)
    _revoke(nsub, keys, inc)
    _install(nsub)


def _init(nsub: Any, keys: argparse.ArgumentParser, inc: argparse.ArgumentParser) -> None:
    p = nsub.add_parser(
        "init", parents=[keys, inc], help="create the fleet's keyring (ops node, once)",
        description="Creates the operator, system and QTD account keys (seeds 0600 in a "
        "0700 directory: keep it on the ops node and back it up offline) and writes the "
        "nats-server include that etc/nats-server.conf reads. Refuses an existing keyring.")
    p.add_argument("--server", action="append", metavar="URL",
                   help="the fleet's NATS URL(s), written into every bundle (repeatable; "
                   "default nats://127.0.0.1:4222)")
    p.add_argument("--prefix", default="qtd", help="subject prefix (default qtd)")
    p.set_defaults(handler=run_init)


def _add(nsub: Any, keys: argparse.ArgumentParser) -> None:
    p = nsub.add_parser(
        "add", parents=[keys], help="issue a login; for an agent, its host bundle",
        description="--role agent (default): issues agent-NAME and writes "
        "qtd-node-NAME.tar.gz (0600): agent.toml, risk.toml, the bots and their strategies, "
        "credentials/nats.creds and the systemd drop-in loading exactly its credentials; "
        "copy it to the server and run `qtd node install` there. Other roles write "
        "NAME.creds (0600) for that process ([bus] creds_file or creds_credential).")
    p.add_argument("name", metavar="NAME", help="node name (agent), else the login's name")
    p.add_argument("--role", choices=[r for r in ROLES if r != "system"], default="agent")
    p.add_argument("--accounts", help="comma-separated [accounts.<name>] of the template "
                   "this node trades (default: all of them)")
    p.add_argument("--bots", help="comma-separated bots (default: the template's bots on "
                   "those accounts)")
    p.add_argument("--from", dest="template", metavar="AGENT_TOML",
                   help="agent config template (default: the shipped etc/agent.toml)")
    p.add_argument("--env", action="append", metavar="ACCOUNT=FILE",
                   help="include this account's broker keys file (.env) in the bundle")
    p.add_argument("--out", metavar="FILE", help="where to write the bundle or .creds")
    p.set_defaults(handler=run_add)


def _revoke(nsub: Any, keys: argparse.ArgumentParser, inc: argparse.ArgumentParser) -> None:
    p = nsub.add_parser(
        "revoke", parents=[keys, inc], help="revoke a login on the running nats-server",
        description="Adds the login's key to the account's revocations, rewrites the "
        "nats-server include and pushes the account to the running server, which refuses "
        "the login from then on and closes its connections. Running it again re-pushes "
        "(after an unreachable server). Exit 75 when no server answered.")
    p.add_argument("name", metavar="NAME", help="node name or login name")
    p.add_argument("--server", action="append", metavar="URL",
                   help="push through this server (default: the keyring's)")
    p.set_defaults(handler=run_revoke)


def _install(nsub: Any) -> None:
    p = nsub.add_parser(
        "install", help="put a bundle's files in place (on the server, as root)",
        description="Writes each file of the bundle under --root with its owner and mode "
        "(/etc/qtd root 0755, configs root:qtd 0640, /etc/qtd/credentials root 0700, secrets "
        "0600; the qtd-agent unit of this installed qtd and the bundle's drop-in beside it "
        "0644), creates the qtd user on a real root, then runs "
        "`qtd preflight` on the installed config with the node's own login. Exit 2 when a "
        "broker credential the unit loads is missing or a preflight check failed.")
    p.add_argument("bundle", metavar="BUNDLE", help="qtd-node-NAME.tar.gz")
    p.add_argument("--root", default="/", help="install under this directory (default /)")
    p.add_argument("--no-preflight", action="store_true", help="skip the preflight")
    p.add_argument("--enable", action="store_true", help="then, when nothing failed: "
                   "systemctl daemon-reload && systemctl enable --now qtd-agent (--root / only)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(handler=run_install)


# --- handlers --------------------------------------------------------------------------------


def _emit(args: argparse.Namespace, doc: Any, lines: list[str]) -> None:
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(msgspec.to_builtins(doc), indent=2) + "\n")
    else:
        sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def run_init(args: argparse.Namespace) -> int:
    servers = tuple(args.server or ("nats://127.0.0.1:4222",))
    path = keys_dir(args.keys)
    include = Path(args.nats_include)
    if not os.access(include.parent, os.W_OK):  # before the keyring: init runs once
        rule = "a file in an existing, writable directory"
        raise ConfigError(f"--nats-include {str(include)!r}: cannot write into "
                          f"{include.parent}", source="<arg>", field="nats-include",
                          value=str(include), rule=rule)
    ring = Keyring.create(path, servers=servers, prefix=args.prefix)
    ring.write_server_include(include)
    _emit(args, {"keys": str(path), "nats_include": str(include), "servers": servers,
                 "operator": ring.registry.operator, "account": ring.registry.account}, [
        f"keyring      {path} (0700; back it up offline: it signs every login)",
        f"nats include {include} (public: operator and account JWTs)",
        f"servers      {', '.join(servers)}",
        "next: start nats-server with etc/nats-server.conf (it includes that file), then",
        "      qtd node add leader --role leader; qtd node add operator --role operator;",
        "      qtd node add NODE --accounts ... for each trading server"])
    return 0


def _open(args: argparse.Namespace) -> Keyring:
    path = keys_dir(args.keys)
    check_keyring_mode(path)
    return Keyring.open(path)


def _envs(pairs: list[str] | None) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for pair in pairs or []:
        name, sep, file = pair.partition("=")
        if not sep or not name or not file:
            raise ConfigError(f"--env {pair!r}: must be ACCOUNT=FILE", source="<arg>",
                              field="env", value=pair, rule="ACCOUNT=FILE")
        try:
            out[name] = Path(file).read_bytes()
        except OSError as e:
            raise ConfigError(f"--env {pair!r}: {e.strerror}", source="<arg>", field="env",
                              value=file, rule="a readable file") from None
    return out


def _split(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def _unwritable(ring: Keyring, name: str, out: Path, e: OSError) -> ConfigError:
    """Revoke ``name``'s login just issued (its seed never left this process) and say why."""
    ring.revoke(name, handed_out=False)
    rule = "a writable file path (its directory must exist)"
    return ConfigError(f"--out {str(out)!r}: {e.strerror or e}; the login just issued was "
                       "marked revoked (its seed was never written): fix --out and run it again",
                       source="<arg>", field="out", value=str(out), rule=rule)


def run_add(args: argparse.Namespace) -> int:
    ring = _open(args)
    if args.role != "agent":
        creds = ring.issue(args.role, name=args.name)
        out = Path(args.out or f"{args.name}.creds")
        try:
            atomic_write_bytes(out, creds.encode(), mode=0o600)
        except OSError as e:
            raise _unwritable(ring, args.name, out, e) from None
        _emit(args, {"login": args.name, "role": args.role, "creds": str(out)}, [
            f"login {args.name} ({args.role}) -> {out} (0600)",
            f"give it to that process: /{CREDENTIALS}/nats.creds, [bus] creds_credential = "
            '"nats.creds" (or creds_file = PATH; the CLI: --creds PATH)'])
        return 0
    template = Path(args.template) if args.template else shipped_dir("etc") / "agent.toml"
    envs = _envs(args.env)
    login_name("agent", args.name)  # a bad node name fails before a login is issued
    creds = ring.issue("agent", args.name)
    try:
        bundle = build_bundle(node=args.name, creds=creds, template=template,
                              servers=ring.registry.servers, prefix=ring.registry.prefix,
                              accounts=_split(args.accounts), bots=_split(args.bots),
                              envs=envs)
        ring.assign_bots(args.name, _bot_names(bundle))
    except Exception:
        ring.revoke(args.name, handed_out=False)  # no bundle: not in force unseen
        raise
    out = Path(args.out or f"qtd-node-{args.name}.tar.gz")
    try:
        bundle.write(out)
    except OSError as e:
        raise _unwritable(ring, args.name, out, e) from None
    m = bundle.manifest
    bots = sorted(Path(f.path).stem for f in m.files if f.path.startswith(f"{ETC}/bots/"))
    _emit(args, {"node": m.node, "login": m.login, "bundle": str(out), "bots": bots,
                 "broker_credentials": m.broker_credentials}, [
        f"node {m.node}: login {m.login}, bundle {out} (0600: holds the node's NATS seed)",
        f"bots: {', '.join(bots) or 'none'}",
        "broker keys the unit loads: " + (", ".join(
            f"/{CREDENTIALS}/{n}" for n in m.broker_credentials) or "none"),
        f"next, on the server as root: qtd node install {out.name}"])
    return 0


def _bot_names(bundle: Bundle) -> tuple[str, ...]:
    out = []
    for f in bundle.manifest.files:
        if f.path.startswith(f"{ETC}/bots/"):
            doc = tomllib.loads(bundle.contents[f.path].decode())
            out.append(str(doc.get("name", Path(f.path).stem)))
    return tuple(sorted(out))


def run_list(args: argparse.Namespace) -> int:
    ring = _open(args)
    logins = ring.registry.logins
    rows = [f"{'LOGIN':<24} {'ROLE':<9} {'STATE':<8} {'ISSUED':<20} KEY"]
    for x in logins:
        state = ("active" if x.revoked_at is None else "revoked" if x.applied_at is not None
                 else "UNPUSHED")
        issued = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(x.issued_at))
        rows.append(f"{x.name:<24} {x.role:<9} {state:<8} {issued:<20} {x.public_key[:12]}...")
    unpushed = [x.name for x in logins if x.revoked_at is not None and x.applied_at is None]
    tail = [f"UNPUSHED: revoked here but no nats-server has applied it yet, the login still "
            f"connects: run `qtd node revoke {unpushed[0]}` again" if unpushed else ""]
    _emit(args, {"servers": ring.registry.servers, "logins": logins},
          [*rows, f"{sum(x.revoked_at is None for x in logins)} in force, "
                  f"{sum(x.revoked_at is not None for x in logins)} revoked", *filter(None, tail)])
    return 0


def _revoked(ring: Keyring, name: str) -> Login:
    """Revoke ``name``'s login in force, else its last revoked one (to push it again)."""
    if ring.find(name) is not None:
        return ring.revoke(name)
    login = next((x for x in reversed(ring.registry.logins) if name in (x.name, x.node)),
                 None)
    if login is None:
        ring.revoke(name)  # raises, listing the logins in force
        raise AssertionError("unreachable")
    return login


def run_revoke(args: argparse.Namespace) -> int:
    ring = _open(args)
    login = _revoked(ring, args.name)
    try:  # the push matters most: an include that cannot be written does not stop it
        ring.write_server_include(Path(args.nats_include))
        include_error = None
    except OSError as e:
        include_error = e
    servers = tuple(args.server or ring.registry.servers)
    try:
        result = asyncio.run(push_account(ring, servers))
    except QtdError:
        sys.stderr.write(
            f"qtd: {login.name} is revoked in the keyring, but NO running nats-server applied "
            f"it: the login still connects. Run `qtd node revoke {args.name}` again once a "
            "server answers (a restart on the rewritten include also applies it)\n")
        raise
    ring.mark_applied()
    login = next(x for x in ring.registry.logins if x.public_key == login.public_key)
    _emit(args, {"login": login, "pushed": result}, [
        f"revoked {login.name} (key {login.public_key[:12]}...)",
        f"{result.server}: {result.code} {result.message} in {result.elapsed_ms:.1f} ms; its "
        "connections are closed and it can no longer log in",
        f"nats include rewritten: {args.nats_include}" if include_error is None else
        f"nats include NOT rewritten: {args.nats_include}"])
    if include_error is not None:
        raise ConfigError(
            f"--nats-include {args.nats_include!r}: {include_error.strerror or include_error}; "
            "the running server applied the revocation (its resolver keeps it across "
            "restarts), but write this include where nats-server reads it before you rebuild "
            "that server", source="<arg>", field="nats-include", value=args.nats_include,
            rule="a file in an existing, writable directory")
    return 0


def run_install(args: argparse.Namespace) -> int:
    root = Path(args.root)
    report = install_bundle(Path(args.bundle), root)
    lines = [f"node {report.node}: {len(report.files)} file(s) under {root}"]
    lines += [f"  {oct(f.mode)[2:]:>4} {f.owner:<10} {f.path}" for f in report.files]
    lines += [f"note: {n}" for n in report.notes]
    lines += [f"MISSING {root / CREDENTIALS / n}: the unit does not start without it (the "
              "account's KEY=... lines, root 0600)" for n in report.missing_credentials]
    _emit(args, report, lines)
    code = OperationalError.exit_code if report.missing_credentials else 0
    if not args.no_preflight:
        code = max(code, _preflight(root, sys.stderr if args.json else sys.stdout))
    if code == 0 and args.enable:
        return _enable(root)
    if root == Path("/") and code == 0 and not args.json:
        sys.stdout.write("next: systemctl daemon-reload && systemctl enable --now "
                         "qtd-agent   (or --enable)\n")
    return code


def _enable(root: Path) -> int:
    if root != Path("/"):
        raise ConfigError(f"--enable with --root {root}: systemd runs the units of / only",
                          source="<arg>", field="enable", value=str(root), rule="--root /")
    for argv in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", AGENT_UNIT]):
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise OperationalError(f"{' '.join(argv)}: exit {done.returncode}: "
                                   f"{(done.stderr or done.stdout).strip()[:300]}",
                                   command=argv[0])
    sys.stdout.write(f"{AGENT_UNIT} enabled and started: journalctl -u {AGENT_UNIT} -f\n")
    return 0


def _preflight(root: Path, out: TextIO) -> int:
    """``qtd preflight`` on the installed config with the node's own login (systemd gives
    the agent its credentials the same way: ``$CREDENTIALS_DIRECTORY``)."""
    from qtd.commands.preflight import run_preflight_command

    os.environ["CREDENTIALS_DIRECTORY"] = str(root / CREDENTIALS)
    ns = argparse.Namespace(config=str(root / ETC / "agent.toml"), min_free_mb=1024,
                            nats_timeout=3.0)
    return run_preflight_command(ns, out)
