"""systemd/qtd-agent.service passes `systemd-analyze verify` without any warning."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "qtd-agent.service"


def test_unit_is_type_notify_with_watchdog_and_hardening() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "User=qtd",
                 "StateDirectory=qtd", "LoadCredential=", "ProtectSystem=strict",
                 "NoNewPrivileges=yes", "PrivateTmp=yes", "CapabilityBoundingSet="):
        assert line in text, line


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed on this machine")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    qtd = Path(sys.executable).parent / "qtd"  # the installed entry point stands in
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/qtd/venv/bin/qtd", str(qtd)))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr  # unknown keys and bad values only warn
