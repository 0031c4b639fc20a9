"""Every unit in systemd/ passes `systemd-analyze verify` without any warning, alone and with
a generated credentials drop-in beside it, keeps its `systemd-analyze security` exposure, and
carries the restart policy, dedicated user, state directory and hardening the deployment
relies on; the shipped qtd units name no host-specific credential."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qtd.bus import find_nats_server
from qtd.errors import OperationalError
from qtd.nodes.units import SHIPPED, credentials_dropin_path, render_credentials_dropin

UNITS = Path(__file__).resolve().parents[2] / "systemd"
NAMES = ("qtd-agent.service", "qtd-leader.service", "nats-server.service")

COMMON = ("Restart=on-failure", "ProtectSystem=strict", "NoNewPrivileges=yes",
          "PrivateTmp=yes", "ProtectHome=yes", "CapabilityBoundingSet=",
          "[Install]", "WantedBy=multi-user.target")
SPECIFIC = {
    "qtd-agent.service": ("Type=notify", "WatchdogSec=", "User=qtd", "StateDirectory=qtd",
                          "LoadCredential=nats.creds:/etc/qtd/credentials/nats.creds",
                          "After=network-online.target nats-server.service"),
    "qtd-leader.service": ("Type=notify", "WatchdogSec=", "User=qtd",
                           "StateDirectory=qtd-leader",
                           "LoadCredential=nats.creds:/etc/qtd/credentials/nats.creds",
                           "After=network-online.target nats-server.service"),
    # nats-server has no sd_notify: Type=simple, no watchdog.
    "nats-server.service": ("Type=simple", "User=nats", "StateDirectory=nats",
                            "-c /etc/qtd/nats-server.conf"),
}


def test_every_unit_file_is_covered() -> None:
    assert sorted(p.name for p in UNITS.glob("*.service")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_unit_has_policy_and_hardening(name: str) -> None:
    lines = set((UNITS / name).read_text().splitlines())
    text = "\n".join(lines)
    for needle in COMMON + SPECIFIC[name]:
        assert needle in text, f"{name}: {needle}"
    if name == "nats-server.service":
        assert not any(line.startswith("WatchdogSec=") for line in lines)


def _binaries() -> dict[str, str]:
    """Stand-ins for the production paths: the venv's qtd entry point and nats-server."""
    subst = {"/opt/qtd/venv/bin/qtd": str(Path(sys.executable).parent / "qtd")}
    with contextlib.suppress(OperationalError):
        subst["/usr/local/bin/nats-server"] = str(find_nats_server())
    return subst


# `systemd-analyze security --offline=yes` overall exposure, in tenths (1.7 -> 17), measured
# with systemd 252 (Debian 12); --threshold fails above it. A change that lowers hardening
# fails here; a newer systemd that scores differently: re-measure and say so in the commit.
EXPOSURE = {"qtd-agent.service": 17, "qtd-leader.service": 14, "nats-server.service": 15}
# What a generated drop-in adds per unit in the tests below (an agent's broker accounts).
DROPIN_NAMES = {"qtd-agent.service": ("alpaca-live.env", "binance-live.env"),
                "qtd-leader.service": ()}
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed on this machine")


def test_shipped_units_load_only_the_shipped_credentials() -> None:
    """Nothing host-specific in a shipped unit: its LoadCredential= lines are exactly SHIPPED
    (which the drop-in renderer refuses to repeat)."""
    for unit, names in SHIPPED.items():
        lines = [ln for ln in (UNITS / unit).read_text().splitlines()
                 if ln.startswith("LoadCredential")]
        assert lines == [f"LoadCredential={n}:/etc/qtd/credentials/{n}" for n in names], unit


def _install(name: str, root: Path, dropin: bool) -> Path:
    """``name`` as it sits on a host under ``root`` (binaries swapped for this machine's),
    with its generated credentials drop-in beside it when ``dropin``."""
    text = (UNITS / name).read_text()
    subst = _binaries()
    if "/usr/local/bin/nats-server" in text and "/usr/local/bin/nats-server" not in subst:
        pytest.skip("nats-server binary not installed (ExecStart= must exist to verify)")
    for prod, here in subst.items():
        text = text.replace(prod, here)
    unit = root / "etc" / "systemd" / "system" / name
    unit.parent.mkdir(parents=True)
    unit.write_text(text)
    if dropin:
        path = credentials_dropin_path(root, name)
        path.parent.mkdir()
        path.write_text(render_credentials_dropin(name, DROPIN_NAMES[name]))
    return unit


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          timeout=60)


CASES = [(n, False) for n in NAMES] + [(n, True) for n in SHIPPED]


@needs_analyze
@pytest.mark.parametrize(("name", "dropin"), CASES)
def test_systemd_analyze_verify_is_clean(name: str, dropin: bool, tmp_path: Path) -> None:
    res = _analyze("verify", str(_install(name, tmp_path, dropin)))
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr  # unknown keys and bad values only warn


@needs_analyze
@pytest.mark.parametrize(("name", "dropin"), CASES)
def test_systemd_analyze_security_keeps_its_exposure(name: str, dropin: bool,
                                                     tmp_path: Path) -> None:
    unit = _install(name, tmp_path, dropin)
    res = _analyze("security", "--offline=yes", f"--threshold={EXPOSURE[name]}", str(unit))
    assert res.returncode == 0, res.stdout[-300:] + res.stderr
    assert res.stderr.strip() == "", res.stderr


@needs_analyze
def test_verify_reads_the_dropin_beside_the_unit(tmp_path: Path) -> None:
    """The clean verify above means something: a bad line in the drop-in is reported."""
    unit = _install("qtd-agent.service", tmp_path, dropin=True)
    path = credentials_dropin_path(tmp_path, "qtd-agent.service")
    path.write_text(path.read_text() + "LoadCredential=a:relative/path\n")
    res = _analyze("verify", str(unit))
    assert "credentials.conf" in res.stderr and "relative/path" in res.stderr, res.stderr
