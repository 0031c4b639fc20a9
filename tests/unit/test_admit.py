"""Admission: every rule has a failing and a passing case; broken configs list all errors."""

from __future__ import annotations

import io
from argparse import Namespace
from pathlib import Path

import pytest

from qtd.admit import admit_bot, admit_paths, collect_files, content_hash
from qtd.admit.problems import toml_lines
from qtd.cli import main
from qtd.commands.validate import run_validate
from qtd.events import StrategyAdmitted
from qtd.store import EventStore
from qtd.workers.load import load_admitted

ROOT = Path(__file__).resolve().parents[2]
BROKEN = ROOT / "tests/data/admit_broken"
MA = ROOT / "strategies/ma_cross.py"


def bot_file(tmp: Path, body: str, name: str = "b", strategy: Path = MA,
             extra: str = 'max_order_notional = 50000.0\n') -> Path:
    d = tmp / "bots"
    d.mkdir(exist_ok=True)
    p = d / f"{name}.toml"
    p.write_text(f'name = "{name}"\nstrategy = "{strategy}"\nvenue = "paper"\n'
                 f'account = "acct"\nsymbols = ["GOOG"]\n{extra}\n[smoke]\nmax_bars = 300\n'
                 f"{body}")
    return p


def strategy_file(tmp: Path, code: str) -> Path:
    p = tmp / "strat.py"
    p.write_text("from qtd.strategy import Strategy\n" + code)
    return p


def fields(problems: list) -> list[str]:
    return [p.field for p in problems]


async def test_passing_bot_gets_hash_and_event(tmp_path: Path) -> None:
    p = bot_file(tmp_path, "[params]\nfast = 5\nslow = 20\n")
    async with await EventStore.open(tmp_path / "e.db", node="n1") as store:
        r = await admit_bot(p, store=store, node="n1")
        events = await store.query(kind=["StrategyAdmitted"])
    assert r.ok, r.problems
    assert r.smoke is not None and r.smoke.items == 300 and r.smoke.state == "STOPPED"
    assert r.content_hash == content_hash(MA.read_bytes(), load_admitted(r.ref())[1])
    ev = events[0]
    assert isinstance(ev, StrategyAdmitted) and ev.content_hash == r.content_hash
    assert ev.bot == "b" and ev.strategy == "MaCross" and ev.params["fast"] == 5


async def test_hash_changes_with_params(tmp_path: Path) -> None:
    a = await admit_bot(bot_file(tmp_path, "[params]\nfast = 5\n", "a"))
    b = await admit_bot(bot_file(tmp_path, "[params]\nfast = 6\n", "b2"))
    assert a.ok and b.ok and a.content_hash != b.content_hash
    assert a.source_hash == b.source_hash


async def test_config_schema_all_errors(tmp_path: Path) -> None:
    p = tmp_path / "x.toml"
    p.write_text('name = "x y"\nstrategy = ""\nvenu = "paper"\n')
    r = await admit_bot(p)
    assert set(fields(r.problems)) == {"name", "strategy", "venu", "venue", "account", "symbols"}
    assert "did you mean 'venue'" in next(x.rule for x in r.problems if x.field == "venu")


async def test_not_toml_and_missing_strategy_file(tmp_path: Path) -> None:
    p = tmp_path / "x.toml"
    p.write_text("name = \n")
    assert "not TOML" in (await admit_bot(p)).problems[0].rule
    r = await admit_bot(bot_file(tmp_path, "", strategy=tmp_path / "none.py"))
    assert r.problems[0].field == "strategy" and "not found" in r.problems[0].rule


async def test_syntax_error_is_admission_error_with_line(tmp_path: Path) -> None:
    s = strategy_file(tmp_path, "\nclass A(Strategy):\n    def on_bar(self, bar)\n        pass\n")
    r = await admit_bot(bot_file(tmp_path, "", strategy=s))
    (pr,) = r.problems
    assert pr.file == str(s) and pr.line == 4 and "SyntaxError" in pr.rule


async def test_import_error_and_import_timeout(tmp_path: Path) -> None:
    s = strategy_file(tmp_path, "import no_such_module_xyz\n")
    r = await admit_bot(bot_file(tmp_path, "", strategy=s))
    assert "ModuleNotFoundError" in r.problems[0].rule and r.problems[0].line == 2
    s2 = tmp_path / "loop.py"
    s2.write_text("while True:\n    pass\n")
    r2 = await admit_bot(bot_file(tmp_path, "", "lp", strategy=s2))
    assert "did not finish" in r2.problems[0].rule


async def test_exactly_one_strategy(tmp_path: Path) -> None:
    none = strategy_file(tmp_path, "X = 1\n")
    r = await admit_bot(bot_file(tmp_path, "", strategy=none))
    assert "found 0" in r.problems[0].rule
    imported_only = tmp_path / "imp.py"  # an imported Strategy does not count
    imported_only.write_text("from qtd.strategy import Strategy\nclass Mine(Strategy):\n    pass\n")
    assert (await admit_bot(bot_file(tmp_path, "", "i", strategy=imported_only))).ok


async def test_params_schema_every_field_and_did_you_mean(tmp_path: Path) -> None:
    p = bot_file(tmp_path, '[params]\nfast = 1\nslow = "x"\nqty = -1.0\nfsat = 3\n')
    r = await admit_bot(p)
    assert fields(r.problems) == ["params.fsat", "params.fast", "params.slow", "params.qty"]
    assert "did you mean 'fast'" in r.problems[0].rule
    lines = toml_lines(p.read_text())
    assert r.problems[1].line == lines["params.fast"] > 0 and r.problems[1].value == 1


async def test_cross_field_rule(tmp_path: Path) -> None:
    r = await admit_bot(bot_file(tmp_path, "[params]\nfast = 30\nslow = 10\n"))
    assert [x.rule for x in r.problems] == ["fast must be < slow"]


async def test_validate_raising_is_reported(tmp_path: Path) -> None:
    s = strategy_file(tmp_path, "class A(Strategy):\n    @classmethod\n"
                                "    def validate(cls, p):\n        raise RuntimeError('x')\n")
    r = await admit_bot(bot_file(tmp_path, "", strategy=s))
    assert "validate() raised RuntimeError" in r.problems[0].rule


async def test_notional_against_bot_limit(tmp_path: Path) -> None:
    r = await admit_bot(bot_file(tmp_path, "[params]\nqty = 1000.0\n",
                                 extra="max_order_notional = 1000.0\n"))
    assert r.problems[0].field == "params.qty" and "max_order_notional" in r.problems[0].rule
    ok = await admit_bot(bot_file(tmp_path, "[params]\nqty = 1.0\n", "ok",
                                  extra="max_order_notional = 1000.0\n"))
    assert ok.ok


async def test_missing_limit(tmp_path: Path) -> None:
    r = await admit_bot(bot_file(tmp_path, "", extra=""))
    assert fields(r.problems) == ["max_order_notional"]


async def test_notional_against_risk_file(tmp_path: Path) -> None:
    (tmp_path / "risk.toml").write_text(
        "[global]\nmax_order_notional = 1000.0\n[strategies.b]\nmax_order_qty = 5.0\n"
        "[symbols.GOOG]\n")
    r = await admit_bot(bot_file(tmp_path, "[params]\nqty = 10.0\n", extra=""))
    rules = " ".join(x.rule for x in r.problems)
    assert "max_order_qty 5.0" in rules and "max_order_notional 1000.0" in rules
    ok = await admit_bot(bot_file(tmp_path, "[params]\nqty = 1.0\n", extra=""))
    assert ok.ok, ok.problems
    other = await admit_bot(bot_file(tmp_path, "", "b", extra='risk_profile = "nope"\n'))
    assert other.problems[0].field == "risk_profile"


async def test_instrument_per_venue(tmp_path: Path) -> None:
    p = bot_file(tmp_path, "")
    p.write_text(p.read_text().replace('symbols = ["GOOG"]', 'symbols = ["GOOG", "DOGE"]'))
    r = await admit_bot(p)
    assert fields(r.problems) == ["symbols[1]"]
    q = bot_file(tmp_path, "", "v")
    q.write_text(q.read_text().replace('"paper"', '"nyse"'))
    assert "unknown venue" in (await admit_bot(q)).problems[0].rule


async def test_smoke_backtest_exception_and_pass(tmp_path: Path) -> None:
    s = strategy_file(tmp_path, "class A(Strategy):\n    def on_bar(self, bar):\n"
                                "        raise ValueError('bad bar')\n")
    r = await admit_bot(bot_file(tmp_path, "", strategy=s))
    assert r.problems[0].field == "smoke.on_bar" and "ValueError: bad bar" in r.problems[0].rule
    assert (await admit_bot(bot_file(tmp_path, "", "ok"), smoke=True)).ok


async def test_unknown_dataset(tmp_path: Path) -> None:
    p = bot_file(tmp_path, "")
    p.write_text(p.read_text() + '\n')
    p.write_text(p.read_text().replace("[smoke]\n", '[smoke]\ndataset = "nope"\n'))
    assert fields((await admit_bot(p)).problems) == ["smoke.dataset"]


async def test_broken_directory_lists_every_error() -> None:
    results = await admit_paths([BROKEN])
    by_name = {r.path.name: r for r in results}
    assert all(not r.ok for r in results)
    expected = {
        "syntax.toml": "SyntaxError", "two_classes.toml": "exactly one",
        "cross_field.toml": "fast must be < slow", "instrument.toml": "not listed",
        "raises.toml": "KeyError", "loops.toml": "HookTimeout", "notional.toml": "notional",
        "no_limit.toml": "no risk file", "bad_config.toml": "did you mean 'symbols'",
        "bad_params.toml": "did you mean 'fast'", "routes.toml": "shadowed",
    }
    for name, text in expected.items():
        assert any(text in p.rule for p in by_name[name].problems), (name, by_name[name])
    assert len(by_name["bad_params.toml"].problems) == 4
    assert len(by_name["bad_config.toml"].problems) == 6


async def test_shipped_configs_pass() -> None:
    results = await admit_paths([ROOT / "etc"])
    assert results and all(r.ok for r in results), [str(p) for r in results for p in r.problems]
    assert {r.bot for r in results if r.kind == "bot"} >= {"momo-goog", "revert-goog",
                                                           "breakout-spx"}


def test_collect_files(tmp_path: Path) -> None:
    bots, routes, missing = collect_files([ROOT / "etc", tmp_path / "nope"])
    assert all(b.parent.name == "bots" for b in bots) and [r.name for r in routes] == [
        "routes.toml"]
    assert missing[0].rule == "no such file or directory"


async def test_validate_command_output_and_exit(tmp_path: Path) -> None:
    out = io.StringIO()
    args = Namespace(paths=[str(BROKEN / "bots/bad_params.toml")], db=str(tmp_path / "e.db"),
                     node="n", no_smoke=False, json=False)
    assert await run_validate(args, out) == 78
    text = out.getvalue()
    assert "FAIL" in text and "params.fsat = 3" in text and "4 error(s)" in text
    args.json = True
    out = io.StringIO()
    assert await run_validate(args, out) == 78 and '"ok": false' in out.getvalue()


def test_cli_validate_etc(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(ROOT / "etc"), "--no-smoke"]) == 0
    assert "0 error(s)" in capsys.readouterr().out


async def test_smoke_runs_on_the_live_order_path_and_flags_oversized_orders(
    tmp_path: Path,
) -> None:
    # max_order_qty() says 1 share, but from bar 50 on the strategy sends 500 (≈ $100k):
    # only running the real risk engine during the smoke backtest can catch it.
    strat = strategy_file(tmp_path, (
        "class Sneaky(Strategy):\n"
        "    class Params(Strategy.Params):\n"
        "        qty: float = 1.0\n"
        "    @classmethod\n"
        "    def max_order_qty(cls, params):\n"
        "        return params.qty\n"
        "    def on_start(self):\n"
        "        self.n = 0\n"
        "    def on_bar(self, bar):\n"
        "        self.n += 1\n"
        "        self.buy(500 if self.n >= 50 else self.params.qty)\n"))
    r = await admit_bot(bot_file(tmp_path, "", strategy=strat))
    (p,) = r.problems
    assert p.field == "params" and "risk engine denied" in p.rule
    assert "max_order_notional" in p.rule
    assert r.smoke is not None and r.smoke.denials.get("max_order_notional", 0) > 0
    assert r.smoke.fills >= 49  # the small orders went through the paper broker
