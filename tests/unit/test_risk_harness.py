"""A small driver around a real RiskEngine + Projections (shared by the risk unit tests),
and tests of the plumbing it relies on: approvals reserve exposure, fills and cancels
release it."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from qtd.clock import SimClock
from qtd.events import (
    Fill,
    OrderCanceled,
    OrderCancelRequested,
    OrderIntent,
    OrderType,
    Scope,
    Side,
)
from qtd.orders import OrderRequest
from qtd.projections import Projections
from qtd.risk import Approved, Denied, RiskEngine, parse_risk_config
from qtd.risk.tokens import TokenError

NS = 1_000_000_000
T0 = 1_700_000_000 * NS  # 2023-11-14 22:13:20 UTC
NODE = "node-a"

BASE: dict[str, Any] = {
    "global": {"duplicate_window_s": 0.0, "order_spike_factor": 0.0},
    "accounts": {"acct1": {"equity": 1_000_000.0}, "acct2": {"equity": 1_000_000.0}},
    "strategies": {"bot1": {}, "bot2": {}},
    "symbols": {"AAPL": {}, "MSFT": {}, "GME": {}},
    "breakers": {"broker_errors": {"max_error_rate": 0.1}},
}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Harness:
    """Drives one engine: ``place`` = check + bind + intent applied, like the router."""

    def __init__(self, over: dict[str, Any] | None = None, *, price: str | None = "100") -> None:
        self.clock = SimClock(T0)
        self.proj = Projections()
        self.cfg = parse_risk_config(merge(BASE, over or {}))
        self.engine = RiskEngine(self.cfg, self.proj, self.clock, NODE)
        self.n = 0
        self.trades = 0
        if price is not None:
            for sym in self.cfg.symbols:
                self.mark(sym, price)

    def advance(self, seconds: float) -> None:
        self.clock.advance(int(seconds * NS))

    def mark(self, symbol: str, price: str | Decimal) -> None:
        self.engine.on_market_data(symbol, Decimal(price), self.clock.now_ns())

    def check(self, req: OrderRequest) -> Approved | Denied:
        return self.engine.check(req, self.clock.now_ns())

    def place(self, req: OrderRequest) -> tuple[Approved | Denied, str]:
        res = self.check(req)
        if not isinstance(res, Approved):
            return res, ""
        self.n += 1
        cid = f"c{self.n}"
        now = self.clock.now_ns()
        intent = OrderIntent(
            node=NODE, bot=req.bot, ts_event=now, ts_init=now, client_order_id=cid,
            cid_counter=self.n, account=req.account, venue="paper", symbol=req.symbol,
            side=req.side, qty=req.qty, order_type=req.order_type,
            limit_price=req.limit_price, reduce_only=req.reduce_only,
        )
        res.bind(intent)
        self.feed(intent)
        return res, cid

    def feed(self, event: Any) -> None:
        self.proj.apply(event)
        self.engine.on_event(event)

    def fill(self, cid: str, qty: str | Decimal | None = None, price: str | None = None) -> Fill:
        rec = self.proj.orders.get(cid)
        assert rec is not None
        self.trades += 1
        now = self.clock.now_ns()
        mark = self.engine.mark(rec.symbol).price
        f = Fill(
            node=NODE, bot=rec.bot, ts_event=now, ts_init=now, client_order_id=cid,
            trade_id=f"t{self.trades}", account=rec.account, venue="paper", symbol=rec.symbol,
            side=rec.side, qty=Decimal(qty) if qty is not None else rec.leaves_qty,
            price=Decimal(price) if price is not None else (rec.intent.limit_price or mark),
        )
        self.feed(f)
        return f

    def cancel(self, cid: str) -> None:
        now = self.clock.now_ns()
        rec = self.proj.orders.get(cid)
        assert rec is not None
        self.feed(OrderCanceled(node=NODE, bot=rec.bot, ts_event=now, ts_init=now,
                                client_order_id=cid))

    def trade(self, side: Side, qty: str, price: str, **kw: Any) -> str:
        """Place a market order and fill it completely at ``price``."""
        self.mark(kw.get("symbol", "AAPL"), price)
        res, cid = self.place(req(side, qty, **kw))
        assert isinstance(res, Approved), getattr(res, "denial", None)
        self.fill(cid, price=price)
        return cid


def req(
    side: Side | str = Side.BUY, qty: str | Decimal = "10", *, symbol: str = "AAPL",
    bot: str = "bot1", account: str = "acct1", limit: str | None = None,
    reduce_only: bool = False, order_type: OrderType | None = None,
) -> OrderRequest:
    ot = order_type or (OrderType.LIMIT if limit is not None else OrderType.MARKET)
    return OrderRequest(
        bot=bot, account=account, venue="paper", symbol=symbol, side=Side(side),
        qty=Decimal(qty), order_type=ot, limit_price=Decimal(limit) if limit else None,
        reduce_only=reduce_only,
    )


def denied(res: Approved | Denied, check: str | None = None) -> str:
    """Assert a denial (of ``check``) and return its check name."""
    assert isinstance(res, Denied), "expected a denial, got an approval"
    if check is not None:
        assert res.denial.check == check, res.denial.message
    return res.denial.check


# --- the plumbing --------------------------------------------------------------------------


def test_approval_reserves_exposure_until_fill_or_cancel() -> None:
    h = Harness()
    _, c1 = h.place(req(qty="10", limit="100"))
    exp = h.engine.position_keys("bot1", "acct1", "AAPL")[0]
    assert (exp.qty, exp.buy_open) == (0, 10)
    h.fill(c1, qty="4")
    assert (exp.qty, exp.buy_open) == (4, 6)
    h.cancel(c1)
    assert (exp.qty, exp.buy_open) == (4, 0)
    assert not h.engine.open
    assert h.engine.counter(Scope.STRATEGY, "bot1").open_orders == 0


def test_cancel_request_marks_leaves_as_canceling() -> None:
    h = Harness()
    _, c1 = h.place(req(Side.SELL, "5", limit="100"))
    now = h.clock.now_ns()
    h.feed(OrderCancelRequested(node=NODE, bot="bot1", ts_event=now, ts_init=now,
                                client_order_id=c1))
    exp = h.engine.position_keys("bot1", "acct1", "AAPL")[0]
    assert (exp.sell_open, exp.sell_cxl) == (5, 5)


def test_approval_binds_once_and_only_to_its_request() -> None:
    h = Harness()
    res = h.check(req(qty="10"))
    assert isinstance(res, Approved)
    now = h.clock.now_ns()
    other = OrderIntent(
        node=NODE, bot="bot1", ts_event=now, ts_init=now, client_order_id="x", cid_counter=1,
        account="acct1", venue="paper", symbol="AAPL", side=Side.BUY, qty=Decimal(11),
    )
    with pytest.raises(TokenError):
        res.bind(other)
    good = msgspec.structs.replace(other, qty=Decimal(10))
    res.bind(good)
    with pytest.raises(TokenError):
        res.bind(good)


def test_duplicate_memory_is_pruned() -> None:
    h = Harness({"global": {"duplicate_window_s": 0.5}})
    for i in range(5000):
        assert isinstance(h.check(req(qty=str(i + 1))), Approved)
        h.advance(0.001)
    assert len(h.engine.duplicates) <= 4097
