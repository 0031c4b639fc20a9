"""A restarted bot knows the position it holds (money safety).

A strategy that keeps ``target_position(3)`` must send one order over two agent runs on the
same store: after the restart its runner is seeded from the event store's projections, so it
is already at target. Without the seeding it would believe it is flat and buy 3 more.
"""

from __future__ import annotations

import textwrap
from decimal import Decimal
from pathlib import Path

from qtd.events import Fill, OrderIntent
from tests.agent_rig import running_agent, store_events, synthetic_bars, wait_for, write_fleet
from tests.sqlfile import main_file_rows, read_rows

HOLDER = '''
    from qtd.strategy import Strategy

    class Holder(Strategy):
        """Holds a fixed target position."""

        class Params(Strategy.Params):
            qty: float = 3.0

        def on_bar(self, bar):
            self.target_position(self.params.qty)
'''


async def test_restarted_bot_keeps_its_position_instead_of_buying_it_again(
        tmp_path: Path) -> None:
    cfg = write_fleet(tmp_path, {"h1": {"_strategy": "holder", "qty": 3.0}})
    (tmp_path / "strategies" / "holder.py").write_text(textwrap.dedent(HOLDER))
    for _ in range(2):
        async with running_agent(cfg, items={"goog_1d": synthetic_bars(40)}) as agent:
            feed = next(iter(agent.feeds.values()))
            await wait_for(feed.done.is_set, 30)

            def held() -> Decimal:
                pos = agent.proj.position("h1", "paper-main", "GOOG")
                return pos.qty if pos is not None else Decimal(0)

            await wait_for(lambda: held() == 3, 10)
    stored = await store_events(tmp_path / "state" / "events.db")
    intents = [e for e in stored if isinstance(e, OrderIntent) and e.bot == "h1"]
    fills = [e for e in stored if isinstance(e, Fill) and e.bot == "h1"]
    assert len(intents) == 1, [(i.side, i.qty) for i in intents]
    assert sum(f.qty for f in fills) == 3


async def test_running_agent_keeps_its_store_lookups_up_to_date(tmp_path: Path) -> None:
    """The order path's commits leave the bot / symbol / client_order_id lookups and the WAL
    checkpoint out; the agent's ``store-upkeep`` task does both while it runs, once its
    store is quiet."""
    cfg = write_fleet(tmp_path, {"h1": {"_strategy": "holder", "qty": 3.0}})
    (tmp_path / "strategies" / "holder.py").write_text(textwrap.dedent(HOLDER))
    db = tmp_path / "state" / "events.db"

    def keys_seq() -> int:
        return int(str(read_rows(db, "SELECT value FROM meta WHERE key = 'keys_seq'")[0][0]))

    async with running_agent(cfg, items={"goog_1d": synthetic_bars(40)}) as agent:
        feed = next(iter(agent.feeds.values()))
        await wait_for(feed.done.is_set, 30)

        async def filled() -> bool:
            return sum(e.qty for e in await agent.store.query(bot="h1", kind="Fill")
                       if isinstance(e, Fill)) == 3

        await wait_for(filled, 10)
        fills = [e for e in await agent.store.query(bot="h1") if isinstance(e, Fill)]
        target = max(f.seq for f in fills)
        await wait_for(lambda: keys_seq() >= target, 10)  # not closed yet: the task did it
        # ... and copied the WAL into the main file (a commit no longer does, under 64 MiB)
        await wait_for(lambda: main_file_rows(
            db, "SELECT count(*) FROM events WHERE seq >= ?", target) == [(1,)], 10)
        assert [e.seq for e in await agent.store.query(
            client_order_id=fills[0].client_order_id) if isinstance(e, Fill)] == [
            f.seq for f in fills if f.client_order_id == fills[0].client_order_id]
