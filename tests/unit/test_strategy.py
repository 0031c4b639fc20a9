"""Strategy DSL: params schema, order verbs, read-only views."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

import msgspec
import pytest
from msgspec import Meta

from qtd.clock import SimClock
from qtd.events import Fill, OrderType, Side, TimeInForce
from qtd.strategy import CancelAll, Strategy, StrategyContext


class S(Strategy):
    class Params(Strategy.Params):
        n: Annotated[int, Meta(ge=2)] = 5
        qty: Annotated[float, Meta(gt=0)] = 3.0


def make(symbols: tuple[str, ...] = ("AAA", "BBB")) -> tuple[S, StrategyContext]:
    ctx = StrategyContext(bot="b", account="a", venue="paper", symbols=symbols,
                          clock=SimClock(7), strategy="S")
    ctx.mark("AAA", Decimal(100))
    return S(ctx, S.Params()), ctx


def fill(side: Side, qty: str, price: str, symbol: str = "AAA") -> Fill:
    return Fill(node="n", bot="b", ts_event=0, ts_init=0, client_order_id="c", trade_id="t",
                account="a", venue="paper", symbol=symbol, side=side, qty=Decimal(qty),
                price=Decimal(price))


def test_params_inherit_frozen_and_forbid_unknown() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"n": 3, "x": 1}, S.Params)
    with pytest.raises(msgspec.ValidationError, match=">= 2"):
        msgspec.convert({"n": 1}, S.Params)
    with pytest.raises(AttributeError):
        S.Params().n = 4  # type: ignore[misc]
    assert S.name == "S" and S.max_order_qty(S.Params()) == Decimal("3.0")


def test_params_must_subclass_base() -> None:
    with pytest.raises(TypeError, match=r"must subclass Strategy\.Params"):
        class Bad(Strategy):
            class Params(msgspec.Struct):
                pass


def test_buy_sell_limit_and_tif() -> None:
    s, ctx = make()
    b = s.buy(2)
    lim = s.sell("1.5", symbol="BBB", limit=99.5, tif=TimeInForce.IOC, reason="r")
    assert (b.side, b.qty, b.order_type, b.decision_price) == (
        Side.BUY, Decimal(2), OrderType.MARKET, Decimal(100))
    assert (lim.symbol, lim.limit_price, lim.order_type, lim.tif, lim.reason) == (
        "BBB", Decimal("99.5"), OrderType.LIMIT, TimeInForce.IOC, "r")
    assert ctx.take_outbox() == [b, lim] and ctx.outbox == []
    assert ctx.inflight == {"AAA": Decimal(2), "BBB": Decimal("-1.5")}


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_bad_quantities_raise(bad: float) -> None:
    s, _ = make()
    with pytest.raises(ValueError):
        s.buy(bad)


def test_unknown_symbol_and_bad_limit_raise() -> None:
    s, _ = make()
    with pytest.raises(ValueError, match="not one of"):
        s.buy(1, symbol="ZZZ")
    with pytest.raises(ValueError, match="limit price"):
        s.buy(1, limit=0)


def test_target_position_counts_position_and_inflight() -> None:
    s, ctx = make()
    assert s.target_position(5).qty == Decimal(5)  # type: ignore[union-attr]
    assert s.target_position(5) is None  # in flight already
    ctx.apply_fill(fill(Side.BUY, "5", "100"))
    assert ctx.inflight["AAA"] == 0 and s.position.qty == 5
    short = s.target_position(-2)
    assert short is not None and (short.side, short.qty) == (Side.SELL, Decimal(7))


def test_flatten_and_cancel_all() -> None:
    s, ctx = make()
    assert s.flatten() is None
    ctx.apply_fill(fill(Side.SELL, "4", "100"))
    f = s.flatten()
    assert f is not None and (f.side, f.qty, f.reduce_only) == (Side.BUY, Decimal(4), True)
    s.cancel_all()
    assert isinstance(ctx.outbox[-1], CancelAll) and ctx.inflight["AAA"] == 0


def test_position_pnl_views_are_read_only_copies() -> None:
    s, ctx = make()
    ctx.apply_fill(fill(Side.BUY, "2", "90"))
    ctx.apply_fill(fill(Side.SELL, "1", "95"))
    pos = s.position
    assert (pos.qty, pos.avg_price, pos.realized, pos.unrealized) == (
        Decimal(1), Decimal(90), Decimal(5), Decimal(10))
    assert s.pnl.total == Decimal(15) and s.position_of("BBB").qty == 0
    with pytest.raises(AttributeError):
        pos.qty = Decimal(9)  # type: ignore[misc]
    assert s.clock.now_ns() == 7 and s.symbols == ("AAA", "BBB") and s.last_price() == 100


def test_context_needs_a_symbol() -> None:
    with pytest.raises(ValueError):
        StrategyContext(bot="b", account="a", venue="v", symbols=(), clock=SimClock())
