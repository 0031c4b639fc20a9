"""``qtd preflight``: the checklist table and its exit status (offline: no NATS)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from qtd.cli import main
from qtd.errors import OperationalError

ROOT = Path(__file__).resolve().parents[2]


def _deploy(tmp_path: Path, *, slow: int = 30) -> Path:
    """An offline agent config with one bot (``momo-goog``), a risk file and a store."""
    bots = tmp_path / "bots"
    bots.mkdir()
    bot = (ROOT / "etc" / "bots" / "momo-goog.toml").read_text()
    bot = bot.replace('"strategies/ma_cross.py"',
                      f'"{ROOT / "strategies" / "ma_cross.py"}"')
    (bots / "momo-goog.toml").write_text(bot.replace("slow = 30", f"slow = {slow}"))
    shutil.copy(ROOT / "etc" / "risk.toml", tmp_path / "risk.toml")
    state = tmp_path / "state"
    state.mkdir()
    with sqlite3.connect(state / "events.db") as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
    conn.close()
    cfg = tmp_path / "agent.toml"
    cfg.write_text('node = "node-t"\nstate_dir = "state"\nbots = ["bots"]\n'
                   'risk = "risk.toml"\n')
    return cfg


def _rows(out: str) -> dict[str, str]:
    """Check name -> status, from the printed table."""
    rows = {}
    for line in out.splitlines()[1:]:
        parts = line.split("  ")
        cells = [p.strip() for p in parts if p.strip()]
        if len(cells) >= 2 and cells[1] in ("ok", "FAIL", "skipped"):
            rows[cells[0]] = cells[1]
    return rows


@pytest.fixture
def no_clock_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH without chronyc/timedatectl: the NTP row does not depend on the host."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def test_offline_config_passes_with_nats_rows_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_clock_tools: Path
) -> None:
    cfg = _deploy(tmp_path)
    assert main(["preflight", "--config", str(cfg), "--min-free-mb", "1"]) == 0
    out = capsys.readouterr().out
    assert _rows(out) == {
        "bot configs admitted": "ok",
        "risk file valid": "ok",
        "live bots risk-limited": "skipped",
        "broker credentials": "skipped",
        "store integrity": "ok",
        "disk free": "ok",
        "clock vs NTP": "skipped",
        "NATS reachable": "skipped",
        "stream QTD_EVENTS": "skipped",
        "KV bucket qtd_control": "skipped",
        "NATS auth on": "skipped",
        "kill switch round trip": "skipped",
        "clock vs NATS server": "skipped",
    }, out
    assert "momo-goog" in out
    assert "13 check(s), 0 failed" in out


def test_broken_bot_fails_with_nonzero_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _deploy(tmp_path, slow=5)  # slow < fast: refused by the params rules
    code = main(["preflight", "--config", str(cfg), "--min-free-mb", "1"])
    out = capsys.readouterr().out
    assert code == OperationalError.exit_code, out
    rows = _rows(out)
    assert rows["bot configs admitted"] == "FAIL", out
    assert rows["risk file valid"] == "ok", out
    assert "momo-goog.toml" in out


def test_corrupt_store_and_low_disk_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _deploy(tmp_path)
    (tmp_path / "state" / "events.db").write_bytes(b"not a database" * 100)
    code = main(["preflight", "--config", str(cfg), "--min-free-mb", str(1 << 40)])
    out = capsys.readouterr().out
    assert code == OperationalError.exit_code, out
    rows = _rows(out)
    assert rows["store integrity"] == "FAIL", out
    assert rows["disk free"] == "FAIL", out
