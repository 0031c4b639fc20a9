"""The agent hands prices to every broker that takes them (:class:`qtd.brokers.base.PriceFed`),
qtd's paper broker or a simulated venue's, not only to :class:`PaperBroker`."""

from __future__ import annotations

from decimal import Decimal

from qtd.brokers.base import PriceFed, fed_by_prices
from qtd.brokers.paper import PaperBroker
from qtd.clock import SimClock


class _Fed:
    def __init__(self) -> None:
        self.seen: list[tuple[str, Decimal, int]] = []

    def on_price(self, symbol: str, price: Decimal, ts_ns: int) -> None:
        self.seen.append((symbol, price, ts_ns))


def test_any_broker_with_on_price_is_fed_and_others_are_not() -> None:
    paper = PaperBroker(account="a", node="n", clock=SimClock(1))
    assert fed_by_prices(paper) and isinstance(paper, PriceFed)
    assert fed_by_prices(_Fed()) and fed_by_prices(_Fed())  # the second answer is cached
    assert not fed_by_prices(object())
