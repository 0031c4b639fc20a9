"""Supervisor restart policy with real BotRunners; JSON log lines."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from qtd.agent.config import RestartPolicy
from qtd.agent.logs import JsonFormatter
from qtd.agent.supervisor import BotSlot, Supervisor
from qtd.clock import SimClock
from qtd.events import Event, TradingStateChanged
from qtd.feeds import Bar
from qtd.runner import BotRunner, BotSpec, BotState
from qtd.strategy import Strategy
from qtd.workers.protocol import StrategyRef
from tests.agent_rig import synthetic_bars


class Boom(Strategy):
    class Params(Strategy.Params):
        pass

    def on_bar(self, bar: Bar) -> None:
        raise ValueError("bad bar")


class Quiet(Strategy):
    class Params(Strategy.Params):
        pass


def _supervisor(policy: RestartPolicy, cls: type[Strategy]) -> tuple[Supervisor, BotSlot,
                                                                     list[float], list[Event]]:
    sleeps: list[float] = []
    emitted: list[Event] = []
    now = [0.0]

    async def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s

    async def emit(ev: Event) -> None:
        emitted.append(ev)

    async def feed(bot: str) -> AsyncIterator[Any]:
        for b in synthetic_bars(3):
            yield b

    clock = SimClock(1)
    spec = BotSpec(name="b", account="a", venue="paper", symbols=("GOOG",))
    slot = BotSlot(spec, StrategyRef(file="x.py", source_hash="s", strategy=cls.__name__,
                                     params={}, content_hash="hash"))

    def make(s: BotSlot) -> BotRunner:
        async def submit(req: Any) -> None:
            return None
        return BotRunner(cls, cls.Params(), s.spec, clock=clock, submit=submit,
                         emit=emit, node="n")

    sup = Supervisor(policy, make, feed, emit, "n", clock.now_ns, monotonic=lambda: now[0],
                     sleep=sleep)
    sup.add(slot)
    return sup, slot, sleeps, emitted


async def test_restarts_with_doubling_backoff_then_stays_halted() -> None:
    sup, slot, sleeps, emitted = _supervisor(
        RestartPolicy(max_per_hour=3, backoff_s=1.0, backoff_max_s=3.0), Boom)
    assert await sup.run_bot(slot) is BotState.HALTED
    assert sleeps == [1.0, 2.0, 3.0] and slot.total_restarts == 3
    restarts = [e for e in emitted if isinstance(e, TradingStateChanged)
                and e.operator == "supervisor"]
    assert len(restarts) == 3 and "ValueError in on_bar: bad bar" in restarts[0].reason
    assert "bad bar" in slot.reason


async def test_no_restart_policy_and_normal_end() -> None:
    sup, slot, sleeps, _ = _supervisor(RestartPolicy(max_per_hour=0), Boom)
    assert await sup.run_bot(slot) is BotState.HALTED and sleeps == []
    sup2, slot2, _, _ = _supervisor(RestartPolicy(), Quiet)
    assert await sup2.run_bot(slot2) is BotState.STOPPED and slot2.total_restarts == 0


async def test_restarts_older_than_an_hour_do_not_count() -> None:
    sup, slot, _, _ = _supervisor(RestartPolicy(max_per_hour=1, backoff_s=1.0), Boom)
    slot.restarts.append(-4000.0)
    assert sup.may_restart(slot) == (True, 1.0)


def test_json_log_lines_carry_node_bot_and_client_order_id() -> None:
    rec = logging.LogRecord("qtd.agent", logging.WARNING, __file__, 1, "order %s", ("x",),
                            None)
    rec.bot, rec.client_order_id = "b1", "n.b1.abc.1"
    doc = json.loads(JsonFormatter("node-a").format(rec))
    assert doc["msg"] == "order x" and doc["node"] == "node-a" and doc["level"] == "WARNING"
    assert doc["bot"] == "b1" and doc["client_order_id"] == "n.b1.abc.1"
    assert doc["ts"].endswith("+00:00") and doc["logger"] == "qtd.agent"
