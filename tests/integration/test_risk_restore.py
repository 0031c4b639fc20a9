"""After a restart the risk engine is rebuilt from the store: a HALTED scope stays HALTED
(nothing resumes by itself) and per-day / cooldown counters keep counting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtd.control import KillCommand
from qtd.events import OrderDenied, OrderIntent, Scope, TradingState
from qtd.projections import Projections
from qtd.risk import RiskEngine, parse_risk_config
from qtd.store import EventStore
from tests.integration.test_execution import CFG, Rig


async def _restored(store: EventStore, cfg: dict[str, Any], now_ns: int) -> Rig:
    """A fresh rig on the same store, its engine restored by replay (as the agent does)."""
    rig = Rig(store, cfg=cfg)
    rig.clock.set(now_ns)
    rig.proj = Projections()
    rig.engine = RiskEngine(parse_risk_config(cfg), rig.proj, rig.clock, store.node)
    rig.router.proj, rig.router.risk = rig.proj, rig.engine
    async for batch in store.replay_batches():
        for ev in batch:
            rig.proj.apply(ev)
            rig.engine.restore(ev)
    await rig.price("AAPL", "100")
    return rig


async def test_halted_strategy_stays_halted_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    async with await EventStore.open(path, node="n1") as store:
        rig = Rig(store)
        await rig.price("AAPL", "100")
        assert isinstance(await rig.submit(), OrderIntent)
        await rig.router.kill(KillCommand(scope=Scope.STRATEGY, key="bot1", reason="test"))
        now = rig.clock.now_ns()
    async with await EventStore.open(path, node="n1") as store:
        rig = await _restored(store, CFG, now + 10**9)
        assert rig.engine.states.get(Scope.STRATEGY, "bot1") is TradingState.HALTED
        denied = await rig.submit()
        assert isinstance(denied, OrderDenied) and denied.check == "trading_state"
        assert isinstance(await rig.submit(bot="bot2"), OrderIntent)  # others unaffected


async def _orders_then_restart(tmp_path: Path, cfg: dict[str, Any], n: int,
                               gap_s: int, after_s: int) -> OrderDenied | OrderIntent:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "e.db"
    async with await EventStore.open(path, node="n1") as store:
        rig = Rig(store, cfg=cfg)
        await rig.price("AAPL", "100")
        for _ in range(n):
            rig.clock.advance(gap_s * 10**9)
            await rig.price("AAPL", "100")
            assert isinstance(await rig.submit(), OrderIntent)
        last = rig.clock.now_ns()
    async with await EventStore.open(path, node="n1") as store:
        rig = await _restored(store, cfg, last + after_s * 10**9)
        result: OrderDenied | OrderIntent = await rig.submit()
        return result


async def test_trades_per_day_survive_restart(tmp_path: Path) -> None:
    cfg = {**CFG, "strategies": {"bot1": {"max_trades_per_day": 3}, "bot2": {}}}
    d = await _orders_then_restart(tmp_path, cfg, n=3, gap_s=60, after_s=60)
    assert isinstance(d, OrderDenied) and d.check == "max_trades_per_day", d


async def test_cooldown_survives_restart(tmp_path: Path) -> None:
    cfg = {**CFG, "strategies": {"bot1": {"trade_cooldown_s": 30.0}, "bot2": {}}}
    d = await _orders_then_restart(tmp_path, cfg, n=1, gap_s=1, after_s=5)
    assert isinstance(d, OrderDenied) and d.check == "trade_cooldown", d
    later = await _orders_then_restart(tmp_path / "x", cfg, n=1, gap_s=1, after_s=40)
    assert isinstance(later, OrderIntent)
