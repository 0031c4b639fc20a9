"""Issue 22 item 7, the operator's side of the backtest and admission commands: a bot that
halted is never reported as a normal run, costs are the demo's and shown, a chart has its
trades and says where it is, a checkout stays clean, ``--operator`` follows one rule."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from qtd.cli import build_parser
from tests.shipped import ROOT, run_qtd

MA = str(ROOT / "strategies/ma_cross.py")

BOOM = '''
from qtd.feeds import Bar
from qtd.strategy import Strategy


class Boom(Strategy):
    class Params(Strategy.Params):
        at: int = 450

    def on_start(self) -> None:
        self.n = 0

    def on_bar(self, bar: Bar) -> None:
        self.n += 1
        if self.n == 10:
            self.target_position(1.0, reason="enter")
        if self.n == 20:
            self.target_position(0.0, reason="exit")
        if self.n == self.params.at:
            raise ValueError("boom in on_bar")
'''


def test_a_backtest_whose_bot_halted_exits_4_and_says_why_first(tmp_path: Path) -> None:
    strategy = tmp_path / "boom.py"
    strategy.write_text(BOOM)
    r = run_qtd(["backtest", str(strategy), "--data", "goog_1d", "--db", str(tmp_path / "b.db")])
    assert r.returncode == 4, r.stdout + r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith("HALTED at 2006-06-02 (bar 450 of 2,148)"), r.stdout
    assert "ValueError: boom in on_bar" in first and "not a full run" in first
    assert "HALTED" in r.stderr.splitlines()[-1]


def test_backtest_costs_default_to_the_demo_accounts_and_are_shown(tmp_path: Path) -> None:
    r = run_qtd(["backtest", MA, "--data", "goog_1d", "--db", str(tmp_path / "c.db")])
    assert r.returncode == 0, r.stderr
    assert "costs: commission 0.5 bps of notional, slippage 1 bps" in r.stdout
    free = run_qtd(["backtest", MA, "--data", "goog_1d", "--db", str(tmp_path / "d.db"),
                    "--commission-bps", "0", "--slippage-bps", "0"])
    assert "costs: commission 0 bps of notional, slippage 0 bps" in free.stdout

    def commissions(out: str) -> float:
        line = next(x for x in out.splitlines() if x.strip().startswith("commissions"))
        return float(line.split()[-1].replace(",", ""))

    assert commissions(r.stdout) > 0 == commissions(free.stdout)


def test_plot_has_trade_markers_and_its_path_is_printed(tmp_path: Path) -> None:
    html, png = tmp_path / "eq.html", tmp_path / "eq.png"
    r = run_qtd(["backtest", MA, "--data", "goog_1d", "--db", str(tmp_path / "p.db"),
                 "--plot", str(html)])
    assert r.returncode == 0, r.stderr
    assert f"chart: {html}" in r.stderr
    page = html.read_text()
    # one marker per fill of the run (65): 33 long entries (the last still open), 32 exits
    assert page.count('class="trade buy"') == 33 and page.count('class="trade sell"') == 32
    r = run_qtd(["backtest", MA, "--data", "goog_1d", "--db", str(tmp_path / "q.db"),
                 "--plot", str(png)])
    assert f"chart: {png}" in r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_backtest_leaves_no_lock_file_and_state_is_ignored(tmp_path: Path) -> None:
    r = run_qtd(["backtest", MA, "--data", "goog_1d", "--db", str(tmp_path / "l.db")])
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.db"]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "qtd-state/node-1/events.db",
         "backtest-x.db.lock", "sub/dir/events.db.lock"],
        cwd=ROOT, capture_output=True, text=True, check=False)
    assert ignored.stdout.split() == ["qtd-state/node-1/events.db", "backtest-x.db.lock",
                                      "sub/dir/events.db.lock"]


def test_validate_warns_about_a_bot_its_breaker_halted(tmp_path: Path) -> None:
    bot = str(ROOT / "etc/bots/breakout-spx.toml")
    r = run_qtd(["validate", bot])
    assert r.returncode == 0, r.stdout
    assert r.stdout.startswith("WARN  ") and "HALTED the bot (circuit breaker " \
        "consecutive_losses" in r.stdout
    assert "516 later order(s) denied" in r.stdout and "1 warning(s)" in r.stdout
    strict = run_qtd(["validate", "--strict", bot])
    assert strict.returncode == 78 and "--strict: warnings fail" in strict.stdout


def test_operator_defaults_to_the_login_for_kill_and_resume_and_is_required_without(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGNAME", "alice")
    parser = build_parser()
    assert parser.parse_args(["resume", "--reason", "x"]).operator == "alice"
    assert parser.parse_args(["kill", "--reason", "x"]).operator == "alice"

    def no_login() -> str:  # a uid with no passwd entry and no $LOGNAME/$USER
        raise KeyError("getpwuid(): uid not found")

    monkeypatch.setattr("getpass.getuser", no_login)
    parser = build_parser()
    for cmd in (["kill", "--local", "--kill-file", "/nonexistent/k"], ["resume"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([*cmd, "--reason", "x"])
        assert exc.value.code == 2, cmd
