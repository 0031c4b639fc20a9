"""Every unit in systemd/ passes `systemd-analyze verify` without any warning, and carries
the restart policy, dedicated user, state directory and hardening the deployment relies on."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qtd.bus import find_nats_server
from qtd.errors import OperationalError

UNITS = Path(__file__).resolve().parents[2] / "systemd"
NAMES = ("qtd-agent.service", "qtd-leader.service", "nats-server.service")

COMMON = ("Restart=on-failure", "ProtectSystem=strict", "NoNewPrivileges=yes",
          "PrivateTmp=yes", "ProtectHome=yes", "CapabilityBoundingSet=",
          "[Install]", "WantedBy=multi-user.target")
SPECIFIC = {
    "qtd-agent.service": ("Type=notify", "WatchdogSec=", "User=qtd", "StateDirectory=qtd",
                          "LoadCredential=nats-agent-password:",
                          "After=network-online.target nats-server.service"),
    "qtd-leader.service": ("Type=notify", "WatchdogSec=", "User=qtd",
                           "StateDirectory=qtd-leader", "LoadCredential=nats-leader-password:",
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


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed on this machine")
@pytest.mark.parametrize("name", NAMES)
def test_systemd_analyze_verify_is_clean(name: str, tmp_path: Path) -> None:
    text = (UNITS / name).read_text()
    subst = _binaries()
    if "/usr/local/bin/nats-server" in text and "/usr/local/bin/nats-server" not in subst:
        pytest.skip("nats-server binary not installed (ExecStart= must exist to verify)")
    for prod, here in subst.items():
        text = text.replace(prod, here)
    unit = tmp_path / name
    unit.write_text(text)
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr  # unknown keys and bad values only warn
