"""``qtd up`` started from a directory that holds a ``qtd/`` package of its own (issue 21,
finding 12): its leader and agents still import our ``qtd``, not that one (``python -m``
puts the working directory first on ``sys.path``; the children are started with ``-P``)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from qtd.up.procs import stop_leftovers

pytestmark = pytest.mark.slow


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    yield state
    asyncio.run(stop_leftovers(state / "pids.json", str(state), timeout_s=5.0))


def test_up_from_a_directory_with_a_qtd_package_runs_our_qtd(tmp_path: Path,
                                                             state: Path) -> None:
    here = tmp_path / "work"
    (here / "qtd").mkdir(parents=True)
    (here / "qtd" / "__init__.py").write_text("raise ImportError('not the real qtd')\n")
    argv = [sys.executable, "-P", "-m", "qtd.cli", "up", "--agents", "1", "--speed", "40",
            "--duration", "4", "--stop-timeout", "10", "--state-dir", str(state)]
    run = subprocess.run(argv, cwd=here, capture_output=True, text=True, timeout=120)
    logs = "".join(p.read_text() for p in sorted(state.rglob("*.log")))
    assert "not the real qtd" not in logs
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + logs[-3000:]
    assert "stopped: node-1 exit 0, leader exit 0" in run.stdout
