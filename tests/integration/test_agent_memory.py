"""An agent's memory does not grow per order (issue 21, finding 11): done orders beyond
``terminal_orders_kept`` are retired from memory (the store keeps them), the counts are in
the ``status`` reply, and a late fill for a retired order is still applied exactly once.
The RSS soak over 200,000 orders is ``benchmarks/soak.py``."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from qtd.bus import ensure_jetstream
from qtd.control import NodeRequest
from qtd.control.transport import request
from qtd.events import Fill
from qtd.runner import BotState
from tests.agent_rig import running_agent, synthetic_bars, wait_for, write_fleet
from tests.shipped import agent_config, processes, qtd_process, shipped_nats

KEPT = 1_000  # the default terminal_orders_kept (etc/agent.toml)
FAST = "speed = 1e9\nloop = true"


async def test_a_trading_agent_holds_at_most_the_configured_done_orders(
    tmp_path: Path,
) -> None:
    """A real agent process with the default config ordering on every bar: past 1,300
    orders the status reply counts at most ``terminal_orders_kept`` done orders in memory,
    the rest retired."""
    async with shipped_nats(tmp_path / "nats") as nats:
        cfg = agent_config(tmp_path / "fleet", "node-a", nats.url, {"b1": {"qty": 1.0}},
                           extra="hook_budget_s = 5.0", market=FAST)
        leader = await nats.connect("leader")
        await ensure_jetstream(leader.jetstream(), "qtd")  # the leader's job, as in production
        with processes() as procs:
            procs.append(qtd_process(["agent", "--config", str(cfg)], tmp_path / "agent.log"))
            seen: list[dict[str, Any]] = []

            async def status() -> dict[str, Any] | None:
                try:
                    reply = await request(leader, "node-a", "status",
                                          NodeRequest(operator="test", reason="memory"))
                except Exception:  # not up yet
                    return None
                seen.append(reply.data)
                return reply.data

            async def retired_many() -> bool:
                data = await status()
                return data is not None and data["orders"]["retired"] >= 300

            await wait_for(retired_many, timeout_s=120, step_s=0.2)
            for _ in range(5):
                await status()
    for data in seen:
        orders = data["orders"]
        assert orders["terminal_kept"] == KEPT
        assert orders["terminal_held"] <= KEPT, orders
        assert orders["held"] <= KEPT + data["open_orders"], (orders, data["open_orders"])
    assert seen[-1]["orders"]["retired"] >= 300


async def test_a_late_fill_for_a_retired_order_is_applied_once(tmp_path: Path) -> None:
    """About 40 orders with 5 done orders kept: the first order is retired. Its fill sent again
    is a duplicate; a late fill with a new trade id is stored and counted once, and stays
    so after a restart (which retires again and leaves no stale open order in the engine)."""
    cfg = write_fleet(tmp_path, {"b1": {"qty": 1.0}}, market="speed = 1e9",
                      extra="terminal_orders_kept = 5\nhook_budget_s = 5.0")
    async with running_agent(cfg, items={"goog_1d": synthetic_bars(40)}) as agent:
        book = agent.proj.orders
        slot = agent.supervisor.slots["b1"]
        # the feed has ended (the bot orders no more) and its last order is done
        await wait_for(lambda: slot.state is BotState.STOPPED and book.stats().retired >= 30
                       and not any(book.open_orders()), timeout_s=60)
        first = (await agent.store.query(kind="Fill", limit=1))[0]
        assert isinstance(first, Fill)
        cid, key = first.client_order_id, (first.bot, first.account, first.symbol)
        assert book.get(cid) is None  # retired
        before = agent.proj.positions[key].qty
        assert await agent.router.on_venue_event(msgspec.structs.replace(first, seq=0)) is None
        assert agent.proj.positions[key].qty == before
        late = msgspec.structs.replace(first, seq=0, trade_id="late-1", qty=Decimal("0.5"))
        assert await agent.router.on_venue_event(late) is not None
        assert await agent.router.on_venue_event(late) is None
        assert agent.proj.positions[key].qty == before + Decimal("0.5")
        stats = book.stats()
        assert stats.terminal_held <= 5 and stats.recalled >= 1
        assert cid not in agent.risk.open  # (the bot may have a newer order in flight)
        paper = agent.brokers["paper-main"]
        assert len(paper.fills) <= 2 * 5 + 1 and len(paper.submitted) <= 2 * 5 + 1
        fills = await agent.store.query(kind="Fill", client_order_id=cid)
    assert sorted(f.trade_id for f in fills if isinstance(f, Fill)) == sorted(
        [first.trade_id, "late-1"])

    async with running_agent(cfg, items={"goog_1d": []}) as agent:
        stats = agent.proj.orders.stats()
        assert stats.held <= 5 and stats.retired >= 30
        assert not agent.risk.open  # retired orders were not restored as open
        assert agent.proj.positions[key].qty == before + Decimal("0.5")
        assert await agent.router.on_venue_event(late) is None
        assert agent.proj.positions[key].qty == before + Decimal("0.5")
