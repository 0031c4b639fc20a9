"""Risk config: the sample file loads; bad and inconsistent limits are admission errors that
name the file, the field path, the value and the rule — all of them at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from qtd.clock import SimClock
from qtd.errors import ConfigError
from qtd.projections import Projections
from qtd.risk import RiskConfig, RiskEngine, load_risk_config
from qtd.risk.scope_limits import AccountConfig, StrategyConfig

SAMPLE = Path(__file__).resolve().parents[2] / "etc" / "risk.toml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "risk.toml"
    p.write_text(text)
    return p


def test_sample_config_sets_every_control() -> None:
    cfg = load_risk_config(SAMPLE)
    g, br = cfg.global_, cfg.breakers
    assert g.price_collar_bps and g.max_data_age_s and g.restricted_symbols
    assert g.duplicate_window_s > 0 and g.order_spike_factor > 0
    a = cfg.accounts["paper-main"]
    assert a.max_position_pct_equity and a.max_orders_per_s and a.max_daily_loss
    s = cfg.strategies["sma-cross-goog"]
    assert s.max_gross_notional and s.max_net_notional and s.trade_cooldown_s
    for b in (br.daily_loss.max_loss, br.drawdown.max_drawdown_pct,
              br.consecutive_losses.max_losses, br.win_streak.max_wins, br.sharpe.min_sharpe,
              br.broker_errors.max_error_rate, br.execution_throttle.max_fills):
        assert b is not None
    assert (br.daily_loss.trip, br.drawdown.trip, br.drawdown.scope,
            br.consecutive_losses.trip) == ("HALTED", "HALTED", "GLOBAL", "HALTED")


def test_per_order_notional_above_strategy_cap_is_an_error(tmp_path: Path) -> None:
    p = write(tmp_path, """
[strategies.bot1]
max_order_notional = 60000.0
max_gross_notional = 50000.0
""")
    with pytest.raises(ConfigError) as ei:
        load_risk_config(p)
    e = ei.value
    assert e.source == str(p)
    assert e.field == "strategies.bot1.max_order_notional"
    assert e.value == 60000.0
    assert "max_gross_notional" in e.rule
    assert str(p) in str(e) and "60000.0" in str(e)


def test_field_errors_name_path_value_and_rule(tmp_path: Path) -> None:
    p = write(tmp_path, "[symbols.AAPL]\nmax_order_qty = -5\n")
    with pytest.raises(ConfigError) as ei:
        load_risk_config(p)
    assert (ei.value.field, ei.value.value) == ("symbols.AAPL.max_order_qty", -5)
    assert "> 0" in ei.value.rule


@pytest.mark.parametrize(("text", "field"), [
    ("[global]\nmax_order_notional = inf\n", "global.max_order_notional"),
    ("[global]\nmax_order_notional = nan\n", "global.max_order_notional"),
    ("[global]\nmax_ordr_qty = 5\n", "global"),
    ("[accounts.a]\ncurrency = 'USD'\n", "accounts.a"),
    ("[breakers.drawdown]\ntrip = 'ACTIVE'\n", "breakers.drawdown.trip"),
    ("[bogus]\nx = 1\n", "bogus"),
])
def test_bad_values_are_refused(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_risk_config(write(tmp_path, text))
    assert ei.value.field == field, ei.value


def test_all_errors_are_collected(tmp_path: Path) -> None:
    p = write(tmp_path, """
[global]
max_order_qty = 0
[accounts.a]
equity = 1000.0
max_daily_loss = 2000.0
[strategies.b]
max_order_notional = 10.0
max_net_notional = 5.0
[symbols.X]
max_order_qty = 10.0
max_position_qty = 5.0
""")
    with pytest.raises(ConfigError) as ei:
        load_risk_config(p)
    fields = {e.field for e in ei.value.fields["errors"]}
    assert fields == {"global.max_order_qty"}  # a type error stops before cross-field rules
    p.write_text(p.read_text().replace("max_order_qty = 0\n", "", 1))
    with pytest.raises(ConfigError) as ei:
        load_risk_config(p)
    fields = {e.field for e in ei.value.fields["errors"]}
    assert fields == {"accounts.a.max_daily_loss", "strategies.b.max_order_notional",
                      "symbols.X.max_order_qty"}
    assert "3 risk config errors" in str(ei.value)


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_risk_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_risk_config(write(tmp_path, "[global\n"))


def test_engine_revalidates_configs_built_in_code() -> None:
    cfg = RiskConfig(accounts={"a": AccountConfig(equity=1000.0)},
                     strategies={"b": StrategyConfig(max_order_qty=-1.0)})
    with pytest.raises(ConfigError) as ei:
        RiskEngine(cfg, Projections(), SimClock(), "n")
    assert ei.value.field == "strategies.b.max_order_qty"


def test_spike_floor_must_admit_a_first_order(tmp_path: Path) -> None:
    p = write(tmp_path, "[global]\norder_spike_factor = 10.0\norder_spike_min_baseline = 0.05\n")
    with pytest.raises(ConfigError) as ei:
        load_risk_config(p)
    assert ei.value.field == "global.order_spike_min_baseline"


def test_an_unknown_breaker_is_an_error_naming_the_known_ones(tmp_path: Path) -> None:
    p = write(tmp_path, "[breakers.dailyloss]\nmax_loss = 500.0\n[breakers.drawdown]\n"
                        "max_drawdown_pct = 500.0\n")
    with pytest.raises(ConfigError) as ei:
        load_risk_config(p)
    assert [x.field for x in ei.value.fields["errors"]] == [
        "breakers.dailyloss", "breakers.drawdown.max_drawdown_pct"]  # all errors at once
    e = ei.value.fields["errors"][0]
    assert (e.field, e.value) == ("breakers.dailyloss", {"max_loss": 500.0})
    assert e.rule == ("unknown breaker; known: daily_loss, drawdown, consecutive_losses, "
                      "win_streak, sharpe, broker_errors, execution_throttle")


def test_the_daily_loss_limit_is_resolved_in_one_place() -> None:
    """An account's own max_daily_loss / _pct, else [breakers.daily_loss]: the breaker, the
    page's usage bar, the cross-field rule and preflight all read DailyLossConfig.limits."""
    from qtd.risk.breakers.daily_loss import DailyLossConfig

    table = DailyLossConfig(max_loss=900.0, max_loss_pct=3.0)
    own = AccountConfig(equity=10_000.0, max_daily_loss=500.0)
    assert table.limits(own) == (500.0, 3.0)
    assert table.limits(AccountConfig(equity=10_000.0)) == (900.0, 3.0)
    assert table.limits(None) == (900.0, 3.0)
    assert DailyLossConfig().limits(AccountConfig(equity=1.0)) == (None, None)
