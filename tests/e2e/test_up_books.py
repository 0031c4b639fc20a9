"""Issue 22 item 7 on ``qtd up`` as a user runs it: a refused bot stops the start with its
reason, a copied ``etc/`` keeps working, piped output is a line per change, and the drift
report reads the store ``qtd up`` leaves (a replay on the wall clock)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qtd.up.procs import stop_leftovers
from tests.shipped import DEMO_UP_S, ETC, ROOT, DemoRun, run_qtd

pytestmark = pytest.mark.slow


def _copy_etc(tmp: Path) -> Path:
    """``cp -r etc/ /somewhere/my-etc`` plus a bot of one's own (an absolute strategy
    path): 8 bots."""
    etc = tmp / "my-etc"
    shutil.copytree(ETC, etc)
    own = (ETC / "bots" / "momo-goog.toml").read_text().replace(
        'name = "momo-goog"', 'name = "momo-mine"')
    own = re.sub(r'^strategy = .*$', f'strategy = "{ROOT / "strategies" / "ma_cross.py"}"',
                 own, flags=re.M)
    (etc / "bots" / "momo-mine.toml").write_text(own)
    return etc


def _up(state: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "qtd.cli", "up", "--state-dir", str(state),
            "--stop-timeout", "10", *args]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)
    finally:
        asyncio.run(stop_leftovers(state / "pids.json", str(state), timeout_s=5.0))


def test_a_copied_etc_admits_every_bot(tmp_path: Path) -> None:
    etc = _copy_etc(tmp_path)
    r = run_qtd(["validate", "--no-smoke", str(etc / "bots")])
    assert r.returncode == 0, r.stdout
    assert r.stdout.count("OK ") == 8


def test_up_starts_nothing_when_a_bot_is_refused(tmp_path: Path) -> None:
    etc = _copy_etc(tmp_path)
    bad = (etc / "bots" / "momo-goog.toml").read_text().replace(
        'name = "momo-goog"', 'name = "momo-typo"').replace("ma_cross.py", "ma_crosss.py")
    (etc / "bots" / "momo-typo.toml").write_text(bad)
    state = tmp_path / "state"
    r = _up(state, "--config", str(etc), "--duration", "20")
    out = r.stdout + r.stderr
    assert r.returncode == 78, out
    assert "1 of 9 bots refused; nothing started" in out
    assert "momo-typo" in out and "strategy file not found" in out and "ma_crosss.py" in out
    assert "fleet up" not in out and not (state / "nats" / "jetstream").exists()


@pytest.fixture(scope="module")
def run(demo_up: DemoRun) -> tuple[Path, str]:
    """The shared piped ``qtd up`` (:func:`tests.conftest.demo_up`): its state directory and
    its stdout."""
    assert demo_up.run.returncode == 0, (demo_up.run.stdout[-3000:]
                                         + demo_up.run.stderr[-3000:])
    return demo_up.state, demo_up.run.stdout


def test_piped_up_prints_the_table_once_then_a_line_per_change(
        run: tuple[Path, str]) -> None:
    _, out = run
    lines = out.splitlines()
    headers = [i for i, x in enumerate(lines) if x.startswith("node ") and " bot " in x]
    final = next(i for i, x in enumerate(lines) if x.strip() == "final:")
    # the table at start and the final one; between them only change and total lines
    assert len(headers) == 2 and headers[0] < final < headers[1], out[-3000:]
    body = lines[headers[0]:final]
    table_end = next(i for i, x in enumerate(body) if x.startswith("equity "))
    between = [x for x in body[table_end + 1:-1] if x.strip()]  # [-1]: the final's title
    assert all(" -> " in x or " fleet: " in x or x.startswith(("stopping", "stopped"))
               for x in between), between
    # 150 lines in 45 s before the run was shared; the same rate for DEMO_UP_S
    assert len(lines) < 150 * DEMO_UP_S / 45, f"{len(lines)} lines in {DEMO_UP_S} s"


def test_drift_on_an_up_store_reads_the_live_pnl(run: tuple[Path, str]) -> None:
    state, _ = run
    bots = state / "etc" / "bots"
    books: dict[str, float] = {}
    stores = {}
    for db in sorted(state.glob("node-*/events.db")):
        doc = json.loads(run_qtd(["positions", "--db", str(db), "--json"]).stdout)
        for p in doc["positions"]:
            books[p["bot"]] = books.get(p["bot"], 0.0) + float(p["realized"]) + float(
                p["unrealized"])
            stores[p["bot"]] = db
    assert "momo-goog" in stores, books
    r = run_qtd(["report", "drift", "--db", str(stores["momo-goog"]), "--config",
                 str(bots / "momo-goog.toml"), "--data", "goog_1d", "--json"])
    assert r.returncode in (0, 3), r.stderr
    rep = json.loads(r.stdout)
    assert rep["live_fills"] > 0 and "accelerated replay" in rep["note"]
    assert rep["live_pnl"] != 0
    assert rep["live_pnl"] == pytest.approx(books["momo-goog"], rel=0.05, abs=5.0)
