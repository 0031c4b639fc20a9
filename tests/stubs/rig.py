"""The full order path around one real broker adapter: OrderRouter + RiskEngine + a real
SQLite store, with the adapter's report stream consumed by the router."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from qtd.brokers.base import Broker
from qtd.clock import LiveClock
from qtd.events import AnyEvent, OrderIntent, OrderState, OrderType, Side
from qtd.execution import OrderRouter
from qtd.orders import ClientOrderIds, OrderRecord, OrderRequest
from qtd.projections import Projections
from qtd.risk import RiskEngine, parse_risk_config
from qtd.store import EventStore


def risk_config(account: str, symbols: list[str]) -> dict[str, Any]:
    return {
        "global": {"duplicate_window_s": 0.0, "order_spike_factor": 0.0,
                   "max_data_age_s": 600.0},
        "accounts": {account: {"equity": 1_000_000.0}},
        "strategies": {"bot1": {}},
        "symbols": {s: {} for s in symbols},
    }


class Rig:
    """Router, engine and projections over ``store``, wired to ``broker``."""

    def __init__(self, store: EventStore, broker: Broker, symbols: list[str]) -> None:
        self.store, self.broker, self.clock, self.proj = store, broker, LiveClock(), Projections()
        cfg = parse_risk_config(risk_config(broker.account, symbols))
        self.engine = RiskEngine(cfg, self.proj, self.clock, store.node)
        self.router = OrderRouter(store=store, clock=self.clock, risk=self.engine,
                                  cids=ClientOrderIds(store), brokers={broker.account: broker},
                                  projections=self.proj)
        self._task: asyncio.Task[None] | None = None

    async def start(self, prices: dict[str, str]) -> Rig:
        for sym, px in prices.items():
            await self.router.on_market_data(sym, Decimal(px), self.clock.now_ns())
        self._task = asyncio.create_task(self.router.consume(self.broker), name="consume")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def submit(self, symbol: str, qty: str, side: Side = Side.BUY,
                     limit: str | None = None) -> OrderIntent:
        out = await self.router.submit(OrderRequest(
            bot="bot1", account=self.broker.account, venue=self.broker.venue, symbol=symbol,
            side=side, qty=Decimal(qty),
            order_type=OrderType.LIMIT if limit else OrderType.MARKET,
            limit_price=Decimal(limit) if limit else None,
        ))
        assert isinstance(out, OrderIntent), out
        return out

    def order(self, cid: str) -> OrderRecord:
        rec = self.proj.orders.get(cid)
        assert rec is not None
        return rec

    async def until(self, cid: str, state: OrderState, timeout: float = 5.0) -> OrderRecord:
        deadline = asyncio.get_running_loop().time() + timeout
        while self.order(cid).state is not state:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{cid} is {self.order(cid).state}, expected {state}; "
                                     f"{await self.store.query()}")
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # projections lead the store append by one await
        return self.order(cid)

    async def kinds(self, cid: str | None = None) -> list[str]:
        events: list[AnyEvent] = await self.store.query(client_order_id=cid) if cid else \
            await self.store.query()
        return [type(e).__name__ for e in events]
