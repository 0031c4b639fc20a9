"""Routes: rule matching, sessions, regime classifier, explain, admission checks, CLI."""

from __future__ import annotations

import io
from argparse import Namespace
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from qtd.calendars import ExchangeSession
from qtd.cli import main
from qtd.commands.route import run_route_explain
from qtd.data import load_dataset
from qtd.feeds import Bar
from qtd.regime import Regime, RegimeParams, classify, efficiency_ratio
from qtd.routes import BUILTIN_SESSIONS, Query, RoutesConfig, Rule, Session, check_routes, explain

ROOT = Path(__file__).resolve().parents[2]
NY = ZoneInfo("America/New_York")


def ns(y: int, mo: int, d: int, h: int, mi: int = 0, tz: ZoneInfo = NY) -> int:
    return int(datetime(y, mo, d, h, mi, tzinfo=tz).timestamp()) * 1_000_000_000


def rule(name: str, **kw: object) -> Rule:
    return Rule(name=name, strategy="ma_cross", preset="p", risk_profile="r", **kw)  # type: ignore[arg-type]


def q(symbol: str = "GOOG", **kw: object) -> Query:
    base: dict[str, object] = dict(venue="paper", symbol=symbol, asset_class="equity",
                                   ts_ns=ns(2024, 3, 5, 10), regime=Regime.TREND)
    base.update(kw)
    return Query(**base)  # type: ignore[arg-type]


def test_exchange_calendar_sessions_know_holidays_and_early_closes() -> None:
    xnys = RoutesConfig().session("XNYS")
    assert isinstance(xnys, ExchangeSession)
    assert xnys.contains(ns(2024, 3, 5, 10)) and not xnys.contains(ns(2024, 3, 5, 16))
    assert not xnys.contains(ns(2024, 3, 9, 11))  # Saturday
    assert not xnys.contains(ns(2024, 12, 25, 11))  # Christmas Day
    assert xnys.contains(ns(2018, 12, 24, 12, 59)) and not xnys.contains(ns(2018, 12, 24, 13, 1))
    assert not xnys.contains(ns(1980, 3, 5, 10))  # before the calendar: closed, not guessed
    assert RoutesConfig().session("NOPE") is None


def test_sessions_weekday_hours_and_overnight() -> None:
    fx = BUILTIN_SESSIONS["FX"]
    assert fx.contains(ns(2024, 3, 10, 18)) and fx.contains(ns(2024, 3, 8, 16))  # Sun eve, Fri
    assert not fx.contains(ns(2024, 3, 8, 17, 30)) and not fx.contains(ns(2024, 3, 9, 12))
    assert BUILTIN_SESSIONS["24x7"].contains(ns(2024, 3, 9, 3))
    night = Session(tz="UTC", days=["Mon"], start="22:00", end="02:00")
    utc = ZoneInfo("UTC")
    assert night.contains(ns(2024, 3, 5, 1, tz=utc))
    assert not night.contains(ns(2024, 3, 5, 3, tz=utc))


def test_first_match_wins_and_explain_reasons() -> None:
    cfg = RoutesConfig(route=[
        rule("crypto", asset_class="crypto"),
        rule("glob", symbol="GO*", venue="paper", session="XNYS", regime="trend"),
        rule("all"),
    ])
    chosen, traces = explain(cfg, q())
    assert chosen is not None and chosen.name == "glob"
    assert [t.matched for t in traces] == [False, True, True]
    assert traces[0].reasons == ["FAIL asset class 'equity' vs 'crypto'"]
    assert all(r.startswith("ok") for r in traces[1].reasons) and len(traces[1].reasons) == 4
    chosen, _ = explain(cfg, q(regime=Regime.RANGE))
    assert chosen is not None and chosen.name == "all"


def test_regex_is_full_match() -> None:
    cfg = RoutesConfig(route=[rule("re", symbol_regex="GOO")])
    assert explain(cfg, q("GOOG"))[0] is None and explain(cfg, q("GOO"))[0] is not None


def test_efficiency_ratio() -> None:
    assert efficiency_ratio([1, 2, 3, 4]) == 1.0
    assert efficiency_ratio([1, 2, 1, 2, 1]) == 0.0
    assert efficiency_ratio([5, 5, 5]) == 0.0


def _bars(closes: list[float], ranges: list[float]) -> list[Bar]:
    return [Bar("X", i, 1, Decimal(c), Decimal(c + r), Decimal(c - r), Decimal(c), Decimal(1))
            for i, (c, r) in enumerate(zip(closes, ranges, strict=True))]


def test_classifier_trend_range_high_vol_unknown() -> None:
    n = 120
    trend = _bars([100 + i for i in range(n)], [1.0] * n)
    chop = _bars([100 + (i % 2) for i in range(n)], [1.0] * n)
    spike = _bars([100 + (i % 2) for i in range(n)], [1.0] * (n - 5) + [10.0] * 5)
    assert classify(trend).regime is Regime.TREND
    assert classify(chop).regime is Regime.RANGE
    assert classify(spike).regime is Regime.HIGH_VOL
    assert classify(trend[:50]).regime is Regime.UNKNOWN
    assert classify(trend, RegimeParams(er_trend=1.1)).regime is Regime.RANGE
    goog = [b for b in load_dataset("goog_1d") if isinstance(b, Bar)]
    assert classify(goog).regime in {Regime.TREND, Regime.RANGE, Regime.HIGH_VOL}


def _routes(tmp: Path, body: str) -> Path:
    p = tmp / "routes.toml"
    p.write_text(f'strategies_dir = "{ROOT / "strategies"}"\n' + body)
    return p


def _route(name: str, extra: str = "", strategy: str = "ma_cross", preset: str = "momo") -> str:
    return (f'[[route]]\nname = "{name}"\nstrategy = "{strategy}"\npreset = "{preset}"\n'
            f'risk_profile = "r"\n{extra}\n')


def _bots(tmp: Path) -> dict[str, Path]:
    b = tmp / "momo.toml"
    b.write_text('strategy = "../strategies/ma_cross.py"\n')
    return {"momo": b}


def test_check_routes_passes_clean_file(tmp_path: Path) -> None:
    p = _routes(tmp_path, _route("a", 'venue = "paper"\nsymbol = "GOOG"') + _route("b"))
    assert check_routes(p, bot_files=_bots(tmp_path)) == []


@pytest.mark.parametrize(("body", "field", "text"), [
    (_route("a", strategy="nope"), "route[0].strategy", "unknown strategy"),
    (_route("a", preset="ghost"), "route[0].preset", "unknown preset"),
    (_route("a", strategy="bollinger_revert"), "route[0].preset", "runs strategy 'ma_cross'"),
    (_route("a", 'session = "MOON"'), "route[0].session", "unknown session"),
    (_route("a", 'venue = "nyse"'), "route[0].venue", "unknown venue"),
    (_route("a", 'symbol_regex = "(["'), "route[0].symbol_regex", "invalid regex"),
    (_route("a", 'venue = "binance"\nasset_class = "equity"'), "route[0].name", "never match"),
    (_route("a") + _route("b", 'symbol = "GOOG"'), "route[1].name", "shadowed by earlier rule 'a'"),
    (_route("a", 'symbol = "G*"') + _route("b", 'symbol = "GOOG"\nvenue = "paper"'),
     "route[1].name", "shadowed"),
    (_route("a", 'regime = "trending"'), "route[0].regime", "Invalid enum value"),
    (_route("a") + _route("a", 'regime = "range"'), "route[1].name", "duplicate"),
    (_route("a", 'typo = 1'), "route[0].typo", "unknown field"),
])
def test_check_routes_flags(tmp_path: Path, body: str, field: str, text: str) -> None:
    problems = check_routes(_routes(tmp_path, body), bot_files=_bots(tmp_path))
    assert any(p.field == field and text in p.rule for p in problems), problems


def test_not_shadowed_when_earlier_rule_is_narrower(tmp_path: Path) -> None:
    body = (_route("a", 'symbol = "GOOG"\nregime = "trend"') + _route("b", 'symbol = "GOOG"')
            + _route("c", 'session = "XNYS"') + _route("d"))
    assert check_routes(_routes(tmp_path, body), bot_files=_bots(tmp_path)) == []


def test_shipped_routes_are_clean() -> None:
    bots = {p.stem: p for p in (ROOT / "etc/bots").glob("*.toml")}
    assert check_routes(ROOT / "etc/routes.toml", bot_files=bots) == []


def _explain(symbol: str, **kw: object) -> tuple[int, str]:
    args = Namespace(symbol=symbol, venue=None, routes=str(ROOT / "etc/routes.toml"), at=None,
                     dataset=None, regime=None, now_ns=ns(2024, 3, 5, 10))
    for k, v in kw.items():
        setattr(args, k, v)
    out = io.StringIO()
    return run_route_explain(args, out), out.getvalue()


def test_explain_shipped_routes() -> None:
    rc, text = _explain("BTCUSD", regime="trend")
    assert rc == 0 and "1. crypto-trend: MATCH" in text and "strategy=ma_cross" in text
    assert "not reached" in text
    rc, text = _explain("GOOG", at=ns(2009, 1, 2, 15))
    assert rc == 0 and "from data set goog_1d" in text and "=> " in text
    rc, text = _explain("EURUSD", venue="paper", regime="range")
    assert "fx-range: MATCH" in text


def test_explain_no_match_and_bad_file(tmp_path: Path) -> None:
    p = tmp_path / "routes.toml"
    p.write_text(_route("a", 'venue = "binance"', preset="x"))
    rc, text = _explain("GOOG", routes=str(p))
    assert rc == 1 and "no rule matched" in text
    p.write_text('[[route]]\nname = 1\n')
    assert main(["route", "explain", "GOOG", "--routes", str(p)]) == 78


def test_cli_route_explain(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", "explain", "SPX", "--routes", str(ROOT / "etc/routes.toml"),
                 "--at", "2018-12-24T15:00:00-05:00"]) == 0
    out = capsys.readouterr().out
    assert "regime:" in out and "from data set sp500_1d" in out and "index-breakout" in out
