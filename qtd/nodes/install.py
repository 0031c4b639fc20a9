"""``qtd node install BUNDLE``: put a node bundle's files in place, with owners and modes.

Only the files the manifest lists are written, each only if it is one of the files ``qtd
node add`` writes (``etc/qtd/`` and the agent unit's credentials drop-in under ``root``:
``/`` on a real host, a temporary directory in tests) with that file's mode and owner,
each atomically with its mode from the start. Directories: ``/etc/qtd`` root 0755 (it
also holds nats-server's config on a shared host), ``bots`` and ``strategies`` root:qtd 0750,
``/etc/qtd/credentials`` root:root 0700. The agent's unit is this installed qtd's own
``systemd/qtd-agent.service`` (:mod:`qtd.shipped`), never edited: the bundle's drop-in beside
it loads the host's credentials. Owners are set when running as root and the user and
group exist; on a real root (``/``) the ``qtd`` system user is created first if missing
(``useradd --system``), as the unit's ``User=qtd`` needs it.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import subprocess
import tarfile
import tomllib
from pathlib import Path, PurePosixPath

import msgspec

from qtd.errors import ConfigError, OperationalError
from qtd.files import atomic_write_bytes
from qtd.nodes.bundle import (
    AGENT_UNIT,
    CREDENTIALS,
    ETC,
    SERVICE_USER,
    STATE_DIR,
    BundleFile,
    Manifest,
)
from qtd.shipped import shipped_dir

UNIT_DIR = "etc/systemd/system"
_ALLOWED = ("etc/qtd/", f"{UNIT_DIR}/")
_FILE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}"
_SHAPES: tuple[tuple[re.Pattern[str], int, str, str], ...] = tuple(
    (re.compile(pattern), mode, owner, group) for pattern, mode, owner, group in (
        (rf"{ETC}/(agent|risk)\.toml", 0o640, "root", SERVICE_USER),
        (rf"{ETC}/bots/{_FILE}\.toml", 0o640, "root", SERVICE_USER),
        (rf"{ETC}/strategies/{_FILE}\.py", 0o640, "root", SERVICE_USER),
        (rf"{CREDENTIALS}/{_FILE}", 0o600, "root", "root"),
        (re.escape(f"{UNIT_DIR}/{AGENT_UNIT}.d/credentials.conf"), 0o644, "root", "root"),
    ))
"""Every file a bundle may hold: its path, and the only mode and owner it may have (a
crafted bundle cannot add a unit, a setuid file or a secret readable by the service user)."""
# /etc/qtd stays traversable by every user (as before issue 25): on a host that also runs
# nats-server (User=nats) it holds nats-server.conf and nats-auth.conf, which nats must read;
# the configs in it are root:qtd 0640 and the secrets in credentials/ root 0700.
_DIRS = {ETC: (0o755, "root"), f"{ETC}/bots": (0o750, SERVICE_USER),
         f"{ETC}/strategies": (0o750, SERVICE_USER), CREDENTIALS: (0o700, "root")}
MAX_BUNDLE_MEMBER = 4 * 1024 * 1024
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
"""All files of a bundle together (held in memory until written): ~100x a large fleet's."""


class Installed(msgspec.Struct, frozen=True):
    """One installed file: its absolute path, mode and owner as set (``owner`` is ``-`` when
    it could not be set: not root, or the user does not exist)."""

    path: str
    mode: int
    owner: str


class InstallReport(msgspec.Struct, frozen=True):
    """What ``qtd node install`` did.

    Attributes:
        node: the bundle's node.
        files: every file written.
        missing_credentials: broker ``<account>.env`` files the drop-in loads that are not
            on the host yet (the unit does not start without them).
        notes: what was not done and why (owners, user creation).
    """

    node: str
    files: tuple[Installed, ...]
    missing_credentials: tuple[str, ...]
    notes: tuple[str, ...]


def _bad(value: str, rule: str) -> ConfigError:
    return ConfigError(f"bundle: {value!r}: {rule}", source="<bundle>", field="path",
                       value=value, rule=rule)


def _safe(path: str) -> str:
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not path.startswith(_ALLOWED):
        raise _bad(path, f"a bundle file goes under {' or '.join(_ALLOWED)} only")
    return path


def _check_shape(f: BundleFile) -> None:
    """``f`` is one of :data:`_SHAPES` with exactly that mode and owner.

    Raises:
        ConfigError: any other path, mode or owner.
    """
    _safe(f.path)
    for pattern, mode, owner, group in _SHAPES:
        if pattern.fullmatch(f.path):
            if (f.mode, f.owner, f.group) != (mode, owner, group):
                raise _bad(f"{f.path} {f.owner}:{f.group} {f.mode:04o}",
                           f"this file is installed {owner}:{group} {mode:04o} only")
            return
    raise _bad(f.path, "not a file qtd node add writes (agent.toml, risk.toml, bots/*.toml, "
               "strategies/*.py, credentials/<name>, the qtd-agent credentials drop-in)")


def read_bundle(path: Path) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest and file contents of a bundle written by ``qtd node add``.

    Raises:
        ConfigError: not a bundle, a path outside the allowed directories or not a file
            ``qtd node add`` writes, a mode or owner other than that file's, a listed file
            missing from the archive, a member over 4 MiB or files over 64 MiB in all.
    """
    try:
        with tarfile.open(path, "r:gz") as tar:
            def member(name: str) -> bytes:
                info = tar.getmember(name)
                if not info.isfile() or info.size > MAX_BUNDLE_MEMBER:
                    raise _bad(name, "a regular file of at most 4 MiB")
                f = tar.extractfile(info)
                assert f is not None
                return f.read()

            manifest = msgspec.json.decode(member("manifest.json"), type=Manifest)
            for f in manifest.files:
                _check_shape(f)
            total = sum(tar.getmember(f"root/{f.path}").size for f in manifest.files)
            if total > MAX_BUNDLE_BYTES:
                raise _bad(f"{len(manifest.files)} files, {total:,} bytes",
                           f"a bundle holds at most {MAX_BUNDLE_BYTES:,} bytes of files")
            contents = {f.path: member(f"root/{f.path}") for f in manifest.files}
    except (OSError, tarfile.TarError, KeyError, msgspec.DecodeError) as e:
        raise ConfigError(f"{path}: not a qtd node bundle ({type(e).__name__}: {e})",
                          source=str(path), field="bundle", value=str(path),
                          rule="a file written by `qtd node add`") from None
    return manifest, contents


def _ids(owner: str, group: str) -> tuple[int, int] | None:
    try:
        return pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def _ensure_user(root: Path, notes: list[str]) -> None:
    if root != Path("/") or _ids(SERVICE_USER, SERVICE_USER) is not None:
        return
    if os.geteuid() != 0:
        notes.append(f"user {SERVICE_USER} does not exist and this is not root: create it "
                     f"(useradd --system --home-dir {STATE_DIR} --shell /usr/sbin/nologin "
                     f"{SERVICE_USER})")
        return
    subprocess.run(["useradd", "--system", "--home-dir", STATE_DIR, "--shell",
                    "/usr/sbin/nologin", SERVICE_USER], check=True, capture_output=True)
    notes.append(f"created system user {SERVICE_USER}")


def _place(target: Path, mode: int, owner: str, group: str, notes: list[str]) -> str:
    ids = _ids(owner, group) if os.geteuid() == 0 else None
    if ids is None:
        note = f"owner {owner}:{group} not set (not root, or no such user/group here)"
        if note not in notes:
            notes.append(note)
        return "-"
    os.chown(target, *ids)
    target.chmod(mode)
    return f"{owner}:{group}"


def _no_symlink(root: Path, rel: str) -> None:
    """Refuse a symlink anywhere on ``rel`` below ``root``: root would write, chown and chmod
    through it (a link planted while the directory was writable by someone else).

    Raises:
        OperationalError: a component is a symlink.
    """
    here = root
    for part in PurePosixPath(rel).parts:
        here = here / part
        if here.is_symlink():
            raise OperationalError(f"install into {root}: {here} is a symlink; qtd writes "
                                   "its files only into real directories (remove the link)",
                                   root=str(root), path=str(here))


def _prune(root: Path, manifest: Manifest, notes: list[str]) -> None:
    """Remove the bots and strategies a previous bundle installed that this one does not
    list (the agent runs every ``bots/*.toml``: a bot moved to another node would trade
    twice); name the broker keys left in place that the drop-in no longer loads."""
    listed = {f.path for f in manifest.files}
    for rel, glob in ((f"{ETC}/bots", "*.toml"), (f"{ETC}/strategies", "*.py")):
        for old in sorted((root / rel).glob(glob)):
            if f"{rel}/{old.name}" not in listed:
                old.unlink()
                notes.append(f"removed {old}: not in this bundle")
    keep = {*listed, *(f"{CREDENTIALS}/{n}" for n in manifest.broker_credentials)}
    for old in sorted((root / CREDENTIALS).glob("*.env")):
        if f"{CREDENTIALS}/{old.name}" not in keep:
            notes.append(f"{old} is not loaded by the unit any more (an account this node no "
                         "longer trades): remove it")


def _write(root: Path, manifest: Manifest, contents: dict[str, bytes], notes: list[str]
           ) -> list[Installed]:
    for rel, (mode, group) in _DIRS.items():
        _no_symlink(root, rel)
        d = root / rel
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(mode)
        _place(d, mode, "root", group, notes)
    done = []
    for f in manifest.files:
        _no_symlink(root, f.path)
        target = root / f.path
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        atomic_write_bytes(target, contents[f.path], mode=f.mode)
        done.append(Installed(str(target), f.mode, _place(target, f.mode, f.owner,
                                                          f.group, notes)))
    _prune(root, manifest, notes)
    return done


def _same_node(root: Path, manifest: Manifest) -> None:
    """Refuse a bundle for another node than the one installed here: the host's state
    (``/var/lib/qtd``: its event store, orders and fills) belongs to that node.

    Raises:
        ConfigError: the installed ``agent.toml`` names another node.
    """
    try:
        node = tomllib.loads((root / ETC / "agent.toml").read_text()).get("node")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return  # nothing (readable) installed: a first install
    if node not in (None, manifest.node):
        rule = (f"a bundle installs over the same node only; to re-purpose this host stop "
                f"qtd-agent, move {STATE_DIR} and /{ETC}/agent.toml aside, then install")
        raise ConfigError(f"bundle for node {manifest.node!r}, but this host runs node "
                          f"{node!r}: {rule}", source="<bundle>", field="node",
                          value=manifest.node, rule=rule)


def install_bundle(bundle: Path, root: Path = Path("/")) -> InstallReport:
    """Install ``bundle`` under ``root`` (see the module docstring).

    Raises:
        ConfigError: not a valid bundle, or one for another node than the one installed
            (nothing is written then).
        OperationalError: a file or directory cannot be written, or is a symlink.
    """
    manifest, contents = read_bundle(bundle)
    _same_node(root, manifest)
    notes: list[str] = []
    _ensure_user(root, notes)
    try:
        done = _write(root, manifest, contents, notes)
    except OSError as e:
        raise OperationalError(f"install into {root}: {e}", root=str(root)) from None
    unit = root / UNIT_DIR / AGENT_UNIT
    try:
        _no_symlink(root, f"{UNIT_DIR}/{AGENT_UNIT}")
        atomic_write_bytes(unit, (shipped_dir("systemd") / AGENT_UNIT).read_bytes(), mode=0o644)
    except OSError as e:
        raise OperationalError(f"install {unit}: {e}", root=str(root)) from None
    done.append(Installed(str(unit), 0o644, _place(unit, 0o644, "root", "root", notes)))
    missing = tuple(n for n in manifest.broker_credentials
                    if not (root / CREDENTIALS / n).is_file())
    return InstallReport(manifest.node, tuple(done), missing, tuple(notes))
