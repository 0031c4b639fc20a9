"""``qtd preflight``'s newer rows that need no network, each passing and failing: no
unlimited risk on a live bot, the clock vs NTP (through real chronyc/timedatectl stand-ins
on PATH), the clock vs the NATS server's timestamp, broker credentials present."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from qtd.agent.config import load_agent_config
from qtd.preflight import check_broker_credentials, check_clock_ntp, check_live_limits
from qtd.preflight.bus import _clock_row
from tests.unit.test_preflight import _deploy


def _live(tmp_path: Path, risk_tail: str = "", drop: tuple[str, ...] = ()) -> Path:
    """An offline agent with momo-goog at stage "live" and a risk file edited by the test."""
    cfg = _deploy(tmp_path)
    bot = tmp_path / "bots" / "momo-goog.toml"
    bot.write_text(bot.read_text().replace('venue = "paper"', 'venue = "paper"\nstage = "live"'))
    risk = tmp_path / "risk.toml"
    lines = [ln for ln in risk.read_text().splitlines()
             if not any(ln.startswith(k) for k in drop)]
    risk.write_text("\n".join(lines) + "\n" + risk_tail)
    return cfg


def test_live_bot_with_order_position_and_loss_limits_passes(tmp_path: Path) -> None:
    row = check_live_limits(load_agent_config(_live(tmp_path)))
    assert row.status == "ok" and "momo-goog" in row.detail, row


def test_live_bot_without_a_daily_loss_limit_fails(tmp_path: Path) -> None:
    cfg = _live(tmp_path, drop=("max_daily_loss", "max_loss ", "max_loss_pct"))
    row = check_live_limits(load_agent_config(cfg))
    assert row.status == "FAIL", row
    assert "momo-goog: no limit on daily loss" in row.detail


def test_live_bot_without_order_size_limits_anywhere_fails(tmp_path: Path) -> None:
    cfg = _live(tmp_path, drop=("max_order_qty", "max_order_notional"))
    row = check_live_limits(load_agent_config(cfg))
    assert row.status == "FAIL" and "order size" in row.detail, row


def test_paper_bots_are_not_held_to_the_live_rule(tmp_path: Path) -> None:
    cfg = _deploy(tmp_path)
    assert check_live_limits(load_agent_config(cfg)).status == "skipped"


def _tool(bin_dir: Path, name: str, stdout: str, code: int = 0) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\ncat <<'OUT'\n{stdout}\nOUT\nexit {code}\n")
    path.chmod(0o755)


CHRONY = """Reference ID    : C0A80001 (192.168.0.1)
Stratum         : 3
System time     : {offset} seconds {side} of NTP time
Leap status     : {leap}"""


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    return d


def test_chronyc_offset_within_the_limit_passes(bin_dir: Path) -> None:
    _tool(bin_dir, "chronyc", CHRONY.format(offset="0.000412345", side="fast", leap="Normal"))
    row = check_clock_ntp(250.0, path=str(bin_dir))
    assert row.status == "ok" and "+0.412 ms" in row.detail, row


def test_chronyc_offset_beyond_the_limit_fails(bin_dir: Path) -> None:
    _tool(bin_dir, "chronyc", CHRONY.format(offset="1.500000000", side="slow", leap="Normal"))
    row = check_clock_ntp(250.0, path=str(bin_dir))
    assert row.status == "FAIL" and "-1500.000 ms" in row.detail, row


def test_chronyd_not_synchronised_fails(bin_dir: Path) -> None:
    _tool(bin_dir, "chronyc", CHRONY.format(offset="0.000000000", side="fast",
                                             leap="Not synchronised"))
    assert check_clock_ntp(250.0, path=str(bin_dir)).status == "FAIL"


def test_timedatectl_answers_when_chrony_is_absent(bin_dir: Path) -> None:
    _tool(bin_dir, "timedatectl", "yes")
    assert check_clock_ntp(250.0, path=str(bin_dir)).status == "ok"
    _tool(bin_dir, "timedatectl", "no")
    assert check_clock_ntp(250.0, path=str(bin_dir)).status == "FAIL"


def test_no_time_daemon_is_skipped_with_the_reason(bin_dir: Path) -> None:
    row = check_clock_ntp(250.0, path=str(bin_dir))
    assert row.status == "skipped" and "neither chronyc nor timedatectl" in row.detail
    _tool(bin_dir, "timedatectl", "System has not been booted with systemd", code=1)
    row = check_clock_ntp(250.0, path=str(bin_dir))
    assert row.status == "skipped" and "timedatectl gave no answer" in row.detail


def test_clock_vs_nats_server_timestamp() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    ns = int(now.timestamp()) * 1_000_000_000
    same = _clock_row(now, ns - 1_000_000, ns + 1_000_000, 2.0, 250.0)
    assert same.status == "ok" and "+0.0 ms" in same.detail, same
    late = _clock_row(now - timedelta(seconds=2), ns, ns, 2.0, 250.0)
    assert late.status == "FAIL" and "+2000.0 ms" in late.detail, late


def _with_alpaca_account(tmp_path: Path) -> Path:
    cfg = _deploy(tmp_path)
    cfg.write_text(cfg.read_text() + '\n[accounts.alp-live]\nbroker = "alpaca"\n'
                   'credentials_env = ["ALP_KEY", "ALP_SECRET"]\n')
    return cfg


async def test_broker_credentials_missing_fails_present_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_agent_config(_with_alpaca_account(tmp_path))
    monkeypatch.delenv("ALP_KEY", raising=False)
    monkeypatch.delenv("ALP_SECRET", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    [row] = await check_broker_credentials(cfg, connect=False)
    assert row.status == "FAIL" and "ALP_KEY not set" in row.detail, row
    creds = tmp_path / "creds"
    creds.mkdir()
    env = creds / "alp-live.env"
    env.write_text("ALP_KEY=k\nALP_SECRET=s\n")
    env.chmod(0o644)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    [row] = await check_broker_credentials(cfg, connect=False)
    assert row.status == "FAIL" and "0644" in row.detail, row  # group/world-readable
    env.chmod(0o600)
    [row] = await check_broker_credentials(cfg, connect=False)
    assert row.status == "ok" and row.name == "broker credentials alp-live", row
