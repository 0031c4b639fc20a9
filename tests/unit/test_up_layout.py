"""qtd up's pure parts: the TOML writer, the fleet plan, the generated configs, etc/ lookup."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from qtd.agent.config import load_agent_config
from qtd.data import DATASETS
from qtd.errors import ConfigError
from qtd.leader.config import load_leader_config
from qtd.toml_writer import dumps
from qtd.up.configs import (
    DEFAULT_BARS_PER_S,
    DEMO_RUN_S,
    TICKS_PER_BAR,
    assign,
    generate,
    load_bots,
    realtime_multiple,
)
from qtd.up.layout import Layout, find_etc

ETC = Path(__file__).resolve().parents[2] / "etc"  # the checkout's


@pytest.mark.parametrize("name", ["leader.toml", "agent.toml", "risk.toml"])
def test_toml_writer_round_trips_the_shipped_configs(name: str) -> None:
    doc = tomllib.loads((ETC / name).read_text())
    assert tomllib.loads(dumps(doc, "generated")) == doc


def test_bots_are_spread_round_robin_and_stably() -> None:
    bots = load_bots(ETC)
    plan = assign(bots, 2)
    assert list(plan) == ["node-1", "node-2"]
    assert sorted(b.name for bs in plan.values() for b in bs) == [b.name for b in bots]
    assert abs(len(plan["node-1"]) - len(plan["node-2"])) <= 1
    assert assign(bots, 2) == plan


def test_speed_is_bars_per_second_whatever_the_interval() -> None:
    assert realtime_multiple("goog_1d", 10) == pytest.approx(10 * 1.4 * 86_400, rel=0.05)
    assert realtime_multiple("eurusd_1h", 10) < realtime_multiple("goog_1d", 10)


def test_generated_configs_load_and_point_into_the_state_dir(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path / "s")
    layout.create()
    plan = generate(ETC, layout, agents=3, url="nats://127.0.0.1:1", bars_per_s=5)
    leader = load_leader_config(plan.leader_config)
    assert leader.fleet_db == str(layout.fleet_db) and leader.notify.destinations == {}
    for node, path in plan.agent_configs.items():
        cfg = load_agent_config(path)
        assert cfg.node == node and cfg.state_dir == str(layout.agent_dir(node))
        assert cfg.bus is not None and cfg.bus.servers == ("nats://127.0.0.1:1",)
        assert cfg.kill_file.startswith(str(layout.root))
        assert set(cfg.accounts) == {f"paper-{b}" for b in plan.nodes[node]}
        assert set(cfg.market.bots) == set(plan.nodes[node])


def test_missing_etc_is_a_config_error_that_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing leader\.toml, agent\.toml"):
        find_etc(tmp_path)
    assert find_etc() == ETC.resolve()


def test_tick_series_play_ticks_per_bar_of_pace() -> None:
    info_mean_s = 0.323  # es_ticks: 500,000 trades over ~44.9 h
    assert realtime_multiple("es_ticks", 10) == pytest.approx(10 * TICKS_PER_BAR * info_mean_s,
                                                              rel=0.01)


def test_demo_fleet_covers_every_bundled_series() -> None:
    assert {b.dataset for b in load_bots(ETC)} == {
        "es_ticks", "eurusd_1h", "goog_1d", "sp500_1d", "nasdaq_1d", "btcusd_1mo"}


@pytest.mark.parametrize("speed", [DEFAULT_BARS_PER_S, 30.0])
def test_a_default_length_demo_never_loops_a_series(tmp_path: Path, speed: float) -> None:
    """A loop jumps from a series' last price back to its first: a position held across it
    books the jump as today's loss (momo-btc's monthly bars looped every 16 s and tripped the
    daily-loss cap after ~80 s). DEMO_RUN_S at the default pace (or the same bars at a faster
    one) plays each series once at most; --speed scales every series alike."""
    layout = Layout.at(tmp_path / "s")
    layout.create()
    plan = generate(ETC, layout, agents=2, url="nats://127.0.0.1:1", bars_per_s=speed)
    run_s = DEMO_RUN_S * DEFAULT_BARS_PER_S / speed
    for path in plan.agent_configs.values():
        for bot, src in load_agent_config(path).market.bots.items():
            info = DATASETS[src.dataset]
            span_s = (info.last_ts_ns - info.first_ts_ns) / 1e9
            assert src.speed * run_s < span_s, (bot, src.dataset, src.speed)
    btc = realtime_multiple("btcusd_1mo", 1.0)
    speeds = {b: s.speed for p in plan.agent_configs.values()
              for b, s in load_agent_config(p).market.bots.items()}
    assert speeds["momo-btc"] < speed * btc  # a short series is slowed ...
    assert speeds["tick-es"] == pytest.approx(realtime_multiple("es_ticks", speed))  # ... only
