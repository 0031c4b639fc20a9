"""Every consumer takes catalog sets by name: backtests, sweeps, admission smoke, qtd up."""

from __future__ import annotations

import json
import random
import tomllib
from decimal import Decimal
from pathlib import Path

import pytest

from qtd.admit import admit_bot
from qtd.agent.config import load_agent_config
from qtd.catalog import Catalog, Provenance, SetKey
from qtd.catalog.named import resolve_data
from qtd.cli import main
from qtd.errors import ConfigError
from qtd.feeds.bars import Bar
from qtd.up.configs import generate, realtime_multiple
from qtd.up.layout import Layout

ROOT = Path(__file__).resolve().parents[2]
MA = str(ROOT / "strategies/ma_cross.py")
HOUR = 3600 * 10**9
ROWS = 400


def _walk(symbol: str, count: int, interval_ns: int, seed: int = 7) -> list[Bar]:
    rng = random.Random(seed)
    price, out = 3000.0, []
    t0 = 1_704_067_200 * 10**9  # 2024-01-01
    for i in range(count):
        o = round(price, 2)
        price = max(10.0, price * (1 + rng.gauss(0, 0.01)))
        c = round(price, 2)
        h, lo = round(max(o, c) * 1.002, 2), round(min(o, c) * 0.998, 2)
        d = Decimal
        out.append(Bar(symbol, t0 + i * interval_ns, interval_ns, d(f"{o:.2f}"), d(f"{h:.2f}"),
                       d(f"{lo:.2f}"), d(f"{c:.2f}"), d("12.5")))
    return out


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Catalog:
    root = tmp_path / "catalog"
    monkeypatch.setenv("QTD_CATALOG", str(root))  # children (sweep workers, admission) too
    cat = Catalog(root)
    bars = _walk("ETHUSDT", ROWS, HOUR)
    cat.write(SetKey.parse("binance:ETHUSDT:1h"), bars,
              Provenance(venue="binance", endpoint="test", fetched_at_ns=0, rows=ROWS,
                         first_ns=bars[0].ts_ns, last_ns=bars[-1].ts_ns, source="rest"))
    return cat


def test_backtest_and_sweep_take_a_catalog_set_or_its_symbol(
    catalog: Catalog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["backtest", MA, "--json", "--params", "fast=5", "slow=20", "qty=1"]
    assert main([*args, "--data", "binance:ETHUSDT:1h", "--db", str(tmp_path / "a.db")]) == 0
    out, err = capsys.readouterr()
    assert f"{ROWS:,}/{ROWS:,} bars" in err
    report = json.loads(out)["report"]
    assert report["periods_per_year"] == 8760 and report["trades"] > 0
    assert main([*args, "--data", "ethusdt", "--db", str(tmp_path / "b.db")]) == 0
    assert json.loads(capsys.readouterr()[0])["report"] == report  # by symbol: same set
    assert main(["backtest", MA, "--data", "binance:ETHUSDT:1h", "--sweep", "fast=5:10:5",
                 "--workers", "1"]) == 0
    assert "fast" in capsys.readouterr().out


def test_a_symbol_in_several_sets_is_an_error_listing_them(catalog: Catalog) -> None:
    bars = _walk("GOOG", 30, 24 * HOUR)
    catalog.write(SetKey.parse("alpaca:GOOG:1d"), bars,
                  Provenance(venue="alpaca", endpoint="t", fetched_at_ns=0, rows=30,
                             first_ns=bars[0].ts_ns, last_ns=bars[-1].ts_ns))
    with pytest.raises(ConfigError) as caught:
        resolve_data("goog", field="--data")
    assert "in 2 sets: goog_1d, alpaca:GOOG:1d" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        resolve_data("NVDA", field="--data")
    assert "known sets: goog_1d" in str(caught.value) and "binance:ETHUSDT:1h" in str(
        caught.value)
    with pytest.raises(ConfigError) as caught:
        resolve_data("binance:ETHUSDT:4h")
    assert "qtd data fetch binance ETHUSDT --interval 4h" in str(caught.value)


def _bot(tmp: Path, smoke: str) -> Path:
    (tmp / "bots").mkdir(exist_ok=True)
    path = tmp / "bots" / "eth.toml"
    path.write_text(f'name = "momo-eth"\nstrategy = "{MA}"\nvenue = "binance"\n'
                    'account = "acct"\nsymbols = ["ETHUSDT"]\nmax_order_notional = 50000.0\n'
                    f"[smoke]\nmax_bars = 1000\n{smoke}\n[params]\nfast = 5\nslow = 20\n"
                    "qty = 0.1\n")
    return path


async def test_admission_smoke_defaults_to_the_bots_own_catalog_set(
    catalog: Catalog, tmp_path: Path
) -> None:
    verdict = await admit_bot(_bot(tmp_path, ""))  # in the sandboxed child
    assert verdict.ok, verdict.problems
    assert verdict.smoke is not None and verdict.smoke.items == ROWS  # not goog_1d's 1,000
    named = await admit_bot(_bot(tmp_path, 'dataset = "binance:ETHUSDT:1h"'))
    assert named.smoke is not None and named.smoke.items == ROWS
    missing = await admit_bot(_bot(tmp_path, 'dataset = "binance:ETHUSDT:4h"'))
    assert [p.field for p in missing.problems] == ["smoke.dataset"]
    assert "qtd data fetch" in missing.problems[0].rule


async def test_without_the_set_admission_smoke_uses_the_bundled_default(
    tmp_path: Path,
) -> None:
    verdict = await admit_bot(_bot(tmp_path, ""))
    assert verdict.smoke is not None and verdict.smoke.items == 1000  # goog_1d


def test_qtd_up_replays_a_catalog_set(catalog: Catalog, tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("agent.toml", "leader.toml", "risk.toml"):
        (etc / name).write_text((ROOT / "etc" / name).read_text())
    _bot(etc, "")
    layout = Layout.at(tmp_path / "state")
    layout.create()
    plan = generate(etc, layout, agents=1, url="nats://127.0.0.1:1", bars_per_s=10)
    cfg = load_agent_config(plan.agent_configs["node-1"])
    src = cfg.market.bots["momo-eth"]
    assert src.dataset == "binance:ETHUSDT:1h"
    assert src.speed == pytest.approx(realtime_multiple("binance:ETHUSDT:1h", 10) * ROWS
                                      / (10 * 20 * 60))  # a short series plays slower
    assert tomllib.loads(plan.agent_configs["node-1"].read_text())["market"]["bots"]


async def test_the_agents_replay_feed_reads_a_catalog_set(catalog: Catalog) -> None:
    from qtd.agent.market import FeedKey, ReplayFeed

    seen: list[Decimal] = []

    async def on_price(symbol: str, price: Decimal) -> None:
        assert symbol == "ETH"
        seen.append(price)

    feed = ReplayFeed(FeedKey("binance:ETHUSDT:1h", "ETH", 0.0, False), on_price)
    await feed.run()
    bars = catalog.read(SetKey.parse("binance:ETHUSDT:1h"))
    assert seen == [b.close for b in bars] and len(seen) == ROWS
