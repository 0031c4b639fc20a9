"""Session schedule: on the agent's (simulated) clock, a bot on NYSE is flattened before the
close through the OrderRouter with reduce-only orders, does not trade outside the session
(the 2018-12-24 early close and the Christmas holiday from exchange-calendars) and resumes at
the next open. Also: the agent's [trading_day] drives the risk engine's day."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from qtd.agent.config import load_agent_config
from qtd.agent.schedule import Phase, SessionPlan, plan_for, session_named
from qtd.agent.wiring import risk_config_for
from qtd.clock import SimClock
from qtd.errors import ConfigError
from qtd.events import Fill, OrderIntent, Side
from qtd.risk import load_risk_config
from qtd.runner import BotState
from tests.agent_rig import running_agent, synthetic_bars, wait_for, write_fleet

HOLDER = '''
from qtd.strategy import Strategy

class Holder(Strategy):
    """Holds qty from its first bar on."""

    class Params(Strategy.Params):
        qty: float = 2.0

    def on_bar(self, bar):
        self.target_position(self.params.qty)
'''


def ns(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1e9)


def test_nyse_early_close_and_holiday_phases_from_the_calendar() -> None:
    plan = SessionPlan("XNYS", session_named("XNYS", None, source="t", field="f"),
                       "flatten", 300)
    # 2018-12-24: NYSE closes early at 13:00 New York (18:00 UTC)
    assert plan.phase(ns("2018-12-24 17:54:00")) is Phase.OPEN
    assert plan.phase(ns("2018-12-24 17:55:00")) is Phase.CLOSING  # 5 min before 13:00 NY
    assert plan.phase(ns("2018-12-24 18:00:00")) is Phase.CLOSED
    assert plan.phase(ns("2018-12-25 15:00:00")) is Phase.CLOSED  # Christmas
    assert plan.phase(ns("2018-12-26 14:30:00")) is Phase.OPEN  # next session, 09:30 NY
    # a regular day closes at 16:00 New York: 20:55 UTC is still open, not closing
    assert plan.phase(ns("2018-12-21 20:00:00")) is Phase.OPEN
    crypto = SessionPlan("24x7", session_named("24x7", None, source="t", field="f"),
                         "flatten", 300)
    assert crypto.phase(ns("2018-12-25 15:00:00")) is Phase.OPEN


def _fleet(tmp_path: Path, schedule: str) -> Path:
    cfg = write_fleet(tmp_path, {"hold": {"_strategy": "holder"}, "free": {"_strategy": "holder"}},
                      market="speed = 6000.0", extra=schedule)
    (tmp_path / "strategies" / "holder.py").write_text(textwrap.dedent(HOLDER))
    return cfg


def _intents(events: list, bot: str, after: int = 0) -> list[OrderIntent]:
    return [e for e in events if isinstance(e, OrderIntent) and e.bot == bot and e.seq > after]


async def test_bot_flattened_before_the_early_close_idle_over_the_holiday_resumes_next_open(
    tmp_path: Path
) -> None:
    cfg = load_agent_config(_fleet(tmp_path, textwrap.dedent("""
        [schedule]
        poll_s = 3600.0
        [schedule.bots.hold]
        session = "XNYS"
        on_close = "flatten"
        flatten_before_close_s = 300.0
    """)))
    clock = SimClock(ns("2018-12-24 17:00:00"))  # 12:00 New York, in session
    async with running_agent(cfg, clock=clock, items={"goog_1d": synthetic_bars(20_000)}) as agent:
        feed = next(iter(agent.feeds.values()))

        async def advance(to: str) -> None:
            clock.set(ns(to))
            seen = feed.delivered
            await wait_for(lambda: feed.delivered > seen + 3)  # marks at the new time
            await agent.schedule.step()

        await wait_for(lambda: agent.proj.net_qty("paper-main", "GOOG") == Decimal(4))
        await advance("2018-12-24 17:56:00")  # 12:56 NY: 4 minutes before the early close
        hold_qty = lambda: sum((p.qty for p in agent.proj.positions.values()  # noqa: E731
                                if p.bot == "hold"), Decimal(0))
        await wait_for(lambda: hold_qty() == 0)
        flat_at = agent.store.last_seq
        assert agent.supervisor.slots["hold"].state is BotState.STOPPED
        assert agent.schedule.phases["hold"] is Phase.CLOSING
        await advance("2018-12-24 18:30:00")  # closed
        await advance("2018-12-25 15:00:00")  # Christmas: closed all day
        seen = feed.delivered
        await wait_for(lambda: feed.delivered > seen + 50)  # bars keep coming
        closed_events = await agent.store.query()
        free_running = agent.supervisor.slots["free"].state is BotState.RUNNING
        await advance("2018-12-26 14:31:00")  # 09:31 NY: next session
        await wait_for(lambda: hold_qty() == Decimal(2))
        resumed = agent.supervisor.slots["hold"].state
        events = await agent.store.query()
    flatten = [i for i in _intents(events, "hold") if i.reduce_only]
    assert len(flatten) == 1 and flatten[0].side is Side.SELL and flatten[0].qty == 2
    assert flatten[0].order_type.value == "MARKET"
    assert "session flatten" in flatten[0].reason
    assert _intents(closed_events, "hold", after=flat_at) == []  # no trading outside
    assert free_running  # a bot without a session is not touched
    assert resumed is BotState.RUNNING
    later = [e for e in events if isinstance(e, Fill) and e.bot == "hold" and e.seq > flat_at]
    assert later and later[0].side is Side.BUY


async def test_bot_started_outside_its_session_waits_for_the_open(tmp_path: Path) -> None:
    cfg = load_agent_config(_fleet(tmp_path, '[schedule]\npoll_s = 3600.0\nsession = "XNYS"\n'
                                             'on_close = "stop"\n'))
    clock = SimClock(ns("2018-12-25 15:00:00"))  # Christmas
    async with running_agent(cfg, clock=clock, items={"goog_1d": synthetic_bars(20_000)}) as agent:
        feed = next(iter(agent.feeds.values()))
        await wait_for(lambda: feed.delivered > 100)
        before = _intents(await agent.store.query(), "hold") + _intents(
            await agent.store.query(), "free")
        states = {n: s.state for n, s in agent.supervisor.slots.items()}
        clock.set(ns("2018-12-26 15:00:00"))
        await agent.schedule.step()
        await wait_for(lambda: agent.proj.net_qty("paper-main", "GOOG") == Decimal(4))
    assert before == []
    assert states == {"hold": BotState.STOPPED, "free": BotState.STOPPED}


def test_plan_layers_and_unknown_session_named(tmp_path: Path) -> None:
    cfg = load_agent_config(_fleet(tmp_path, textwrap.dedent("""
        [schedule]
        session = "24x7"
        on_close = "keep"
        [schedule.bots.hold]
        session = "XNYS"
        flatten_before_close_s = 60.0
    """)))
    hold = plan_for(cfg, "hold")
    assert hold is not None and hold.name == "XNYS" and hold.on_close == "keep"
    assert hold.flatten_before_ns == 60 * 10**9
    free = plan_for(cfg, "free")
    assert free is not None and free.name == "24x7"
    (tmp_path / "bad.toml").write_text('node = "n"\n[schedule]\nsession = "MOON"\n')
    with pytest.raises(ConfigError, match=r"schedule.session = 'MOON': unknown session"):
        load_agent_config(tmp_path / "bad.toml")


def test_agent_trading_day_drives_the_risk_engine_day(tmp_path: Path) -> None:
    cfg = load_agent_config(_fleet(tmp_path, '[trading_day]\ntz = "America/New_York"\n'
                                             'rollover = "17:00"\n'))
    risk = risk_config_for(cfg, load_risk_config(cfg.risk))  # the file leaves it out
    assert (risk.trading_day_tz, risk.trading_day_rollover) == ("America/New_York", "17:00")
    other = msgspec.structs.replace(risk, trading_day_tz="Europe/London",
                                    trading_day_rollover="00:00")
    with pytest.raises(ConfigError, match="must equal \\[trading_day\\]"):
        risk_config_for(cfg, other)


async def test_running_agent_engine_and_pnl_roll_the_day_at_the_configured_time(
    tmp_path: Path
) -> None:
    cfg = load_agent_config(_fleet(tmp_path, '[trading_day]\ntz = "America/New_York"\n'
                                             'rollover = "17:00"\n'))
    # a day labelled D runs from 17:00 New York on D to 17:00 on D+1 (qtd.projections)
    clock = SimClock(ns("2018-12-24 21:59:00"))  # 16:59 New York: still 2018-12-23's day
    async with running_agent(cfg, clock=clock, items={"goog_1d": synthetic_bars(20_000)}) as agent:
        assert agent.risk.day.label(clock.now_ns()) == "2018-12-23"
        assert agent.proj.trading_day.label(clock.now_ns()) == "2018-12-23"
        after = ns("2018-12-24 22:01:00")  # 17:01 New York: the next trading day
        assert agent.risk.day.label(after) == agent.proj.trading_day.label(after) == \
            "2018-12-24"
