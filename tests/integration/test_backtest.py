"""Backtest = the live order path + historical feed + paper broker + simulated clock."""

from __future__ import annotations

from pathlib import Path

from qtd.admit import admit_bot
from qtd.backtest import BacktestBot, run_backtest
from qtd.data import load_dataset
from qtd.events import Fill, OrderIntent, OrderSubmitted
from qtd.projections import Projections
from qtd.risk.config import bind_profiles, load_risk_config
from qtd.runner import BotSpec
from qtd.store import EventStore

ROOT = Path(__file__).resolve().parents[2]


async def _bot(name: str) -> BacktestBot:
    adm = await admit_bot(ROOT / f"etc/bots/{name}.toml", smoke=False)
    assert adm.ok, adm.problems
    return BacktestBot(
        strategy=adm.strategy_cls, params=adm.params_obj,
        spec=BotSpec(name=name, account="paper-main", venue="paper", symbols=("GOOG",)),
    )


async def _run(tmp: Path, tag: str) -> tuple[EventStore, dict]:
    store = await EventStore.open(tmp / f"{tag}.db", node="bt")
    risk = bind_profiles(load_risk_config(ROOT / "etc/risk.toml"),
                         {"momo-goog": "momo-goog", "revert-goog": "revert-goog"})
    bots = [await _bot("momo-goog"), await _bot("revert-goog")]
    result = await run_backtest(bots, load_dataset("goog_1d"), store=store, risk=risk)
    return store, result.bots


async def test_two_bots_on_real_goog_data_trade_through_the_order_path(tmp_path: Path) -> None:
    store, bots = await _run(tmp_path, "a")
    try:
        assert bots["momo-goog"].fills > 10 and bots["revert-goog"].fills > 10
        assert all(b.state == "STOPPED" and not b.error for b in bots.values())
        events = [e async for e in store.replay()]
        first_seen: dict[str, str] = {}
        for e in events:  # intent before submit before any fill, for every order
            cid = getattr(e, "client_order_id", None)
            if cid is not None:
                first_seen.setdefault(cid, type(e).__name__)
        assert set(first_seen.values()) == {"OrderIntent"}
        intents = {e.client_order_id for e in events if isinstance(e, OrderIntent)}
        assert {e.client_order_id for e in events if isinstance(e, Fill)} <= intents
        assert sum(isinstance(e, OrderSubmitted) for e in events) == len(intents)
        rebuilt = await Projections().rebuild(store.replay_batches())
        realized = {b: sum((p.realized for p in rebuilt.positions.values() if p.bot == b), 0)
                    for b in bots}
        assert realized == {b: r.realized for b, r in bots.items()}
    finally:
        await store.close()


async def test_same_data_same_code_same_result(tmp_path: Path) -> None:
    s1, a = await _run(tmp_path, "a")
    s2, b = await _run(tmp_path, "b")
    try:
        assert a == b
        # client_order_ids differ only by the store incarnation hash: compare bot + counter
        fills1 = [(e.bot, e.client_order_id.rsplit(".", 1)[1], e.qty, e.price)
                  for e in await s1.query(kind="Fill")]
        fills2 = [(e.bot, e.client_order_id.rsplit(".", 1)[1], e.qty, e.price)
                  for e in await s2.query(kind="Fill")]
        assert fills1 == fills2 and fills1
    finally:
        await s1.close()
        await s2.close()
