"""Order lifecycle: client_order_id, state precedence, idempotence under reordering."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qtd.errors import ConfigError
from qtd.events import OrderExpired, OrderRejected, OrderState, Side
from qtd.orders import ApplyResult, ClientOrderIds, OrderBook, client_order_id
from qtd.projections import Projections
from tests.factories import NODE, accepted, canceled, fill, intent, submitted

BINANCE_CID = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")  # Binance spot API docs


def test_client_order_id_is_deterministic_and_fits_binance() -> None:
    a = client_order_id("server-a.prod", "momentum es 1min", "inc1", 42)
    assert a == client_order_id("server-a.prod", "momentum es 1min", "inc1", 42)
    assert BINANCE_CID.match(a), a
    assert a.endswith(".42")
    longest = client_order_id("n" * 64, "b" * 64, "i" * 32, 9_999_999_999)
    assert len(longest) <= 36 and BINANCE_CID.match(longest)


def test_client_order_id_differs_by_bot_node_incarnation_and_counter() -> None:
    base = client_order_id("node-a", "bot-with-a-long-name-1", "inc", 1)
    others = {
        client_order_id("node-b", "bot-with-a-long-name-1", "inc", 1),
        client_order_id("node-a", "bot-with-a-long-name-2", "inc", 1),  # same 8-char prefix
        client_order_id("node-a", "bot-with-a-long-name-1", "inc2", 1),
        client_order_id("node-a", "bot-with-a-long-name-1", "inc", 2),
    }
    assert base not in others and len(others) == 4


@pytest.mark.parametrize("counter", [0, -1, 10_000_000_000])
def test_client_order_id_rejects_counter_out_of_range(counter: int) -> None:
    with pytest.raises(ConfigError, match="counter"):
        client_order_id("n", "b", "i", counter)


class _Store:
    node, incarnation = NODE, "inc"

    def __init__(self, last: dict[str, int]) -> None:
        self.last, self.calls = last, 0

    async def last_cid_counter(self, bot: str) -> int:
        self.calls += 1
        return self.last.get(bot, 0)


async def test_client_order_ids_resume_from_the_stored_counter() -> None:
    src = _Store({"bot1": 41})
    ids = ClientOrderIds(src)
    assert (await ids.next("bot1"))[1] == 42
    assert (await ids.next("bot1"))[1] == 43
    assert (await ids.next("bot2"))[1] == 1
    assert src.calls == 2  # the store is asked once per bot


async def test_client_order_ids_are_client_order_id_of_each_counter() -> None:
    src = _Store({"bot1": 9, "bot-two": 0})
    ids = ClientOrderIds(src)
    for bot, n in [("bot1", 10), ("bot-two", 1), ("bot1", 11), ("bot-two", 2), ("bot1", 12)]:
        assert await ids.next(bot) == (client_order_id(src.node, bot, src.incarnation, n), n)


def test_happy_path_states() -> None:
    book = OrderBook()
    book.apply(intent("c1", qty="10"))
    assert book.orders["c1"].state is OrderState.PENDING_SUBMIT
    book.apply(submitted("c1"))
    assert book.orders["c1"].state is OrderState.SUBMITTED
    book.apply(accepted("c1"))
    assert book.orders["c1"].state is OrderState.ACCEPTED
    book.apply(fill("c1", "t1", qty="4", price="100"))
    rec = book.orders["c1"]
    assert rec.state is OrderState.PARTIALLY_FILLED and rec.leaves_qty == Decimal(6)
    book.apply(fill("c1", "t2", qty="6", price="101"))
    assert rec.state is OrderState.FILLED and rec.leaves_qty == 0
    assert rec.avg_fill_price == Decimal("100.6")
    assert list(book.open_orders()) == []


def test_late_ack_never_unfills_and_duplicate_trade_is_ignored() -> None:
    book = OrderBook()
    book.apply(intent("c1", qty="5"))
    assert book.apply(fill("c1", "t1", qty="5", price="10")) is ApplyResult.APPLIED
    assert book.apply(accepted("c1")) is ApplyResult.APPLIED
    assert book.apply(canceled("c1")) is ApplyResult.APPLIED
    assert book.apply(fill("c1", "t1", qty="5", price="10")) is ApplyResult.DUPLICATE
    rec = book.orders["c1"]
    assert rec.state is OrderState.FILLED and rec.filled_qty == 5


def test_cancel_after_partial_fill_is_canceled_with_fill_kept() -> None:
    book = OrderBook()
    book.apply(intent("c1", qty="5"))
    book.apply(fill("c1", "t1", qty="2", price="10"))
    book.apply(canceled("c1"))
    rec = book.orders["c1"]
    assert rec.state is OrderState.CANCELED and rec.filled_qty == 2 and rec.leaves_qty == 0


def test_reject_and_expire_precedence() -> None:
    book = OrderBook()
    book.apply(intent("c1"))
    book.apply(accepted("c1"))
    ev = OrderRejected(node=NODE, bot="bot1", ts_event=5, ts_init=5, client_order_id="c1",
                       reason="insufficient buying power")
    book.apply(ev)
    assert book.orders["c1"].state is OrderState.REJECTED
    book.apply(intent("c2"))
    book.apply(OrderExpired(node=NODE, bot="bot1", ts_event=5, ts_init=5, client_order_id="c2"))
    assert book.orders["c2"].state is OrderState.EXPIRED
    assert book.apply(accepted("c2")) is ApplyResult.APPLIED  # late ack: still EXPIRED
    assert book.orders["c2"].state is OrderState.EXPIRED


def test_fill_for_unknown_order_is_flagged_counted_and_adopted() -> None:
    proj = Projections()
    assert proj.apply(fill("ghost", "t9", qty="3", price="50")) is ApplyResult.ORPHAN
    assert proj.apply(fill("ghost", "t9", qty="3", price="50")) is ApplyResult.DUPLICATE
    assert len(proj.anomalies) == 1 and "ghost" in proj.anomalies[0][1]
    pos = proj.position("bot1", "acct1", "AAPL")
    assert pos is not None and pos.qty == 3  # real exposure, counted once
    proj.apply(intent("ghost", qty="3"))
    rec = proj.orders.orders["ghost"]
    assert rec.state is OrderState.FILLED and rec.filled_qty == 3
    assert proj.position("bot1", "acct1", "AAPL").qty == 3  # type: ignore[union-attr]


# --- property: duplicated and reordered venue updates ---------------------------------------

MARK = Decimal("100.00")


@st.composite
def order_streams(draw: st.DrawFn) -> tuple[list, list]:  # type: ignore[type-arg]
    n = draw(st.integers(1, 6))
    intents, updates = [], []
    for i in range(n):
        cid = f"c{i}"
        symbol = draw(st.sampled_from(["AAPL", "MSFT"]))
        side = draw(st.sampled_from([Side.BUY, Side.SELL]))
        parts = draw(st.lists(st.integers(1, 50), min_size=0, max_size=4))
        qty = sum(parts) + draw(st.integers(0, 20)) if parts else draw(st.integers(1, 50))
        intents.append(intent(cid, symbol=symbol, side=side, qty=str(qty), counter=i + 1))
        seq = [submitted(cid), accepted(cid)]
        for j, q in enumerate(parts):
            price = Decimal(draw(st.integers(9000, 11000))) / 100
            seq.append(fill(cid, f"{cid}-t{j}", qty=str(q), price=price, symbol=symbol,
                            side=side, commission="0.01"))
        if sum(parts) < qty:
            seq.append(canceled(cid))
        updates.append(seq)
    # in-order delivery: orders' updates interleaved, each order's updates in order
    in_order: list = []
    cursors = [0] * n
    picks = draw(st.lists(st.integers(0, n - 1), min_size=sum(map(len, updates)) * 2,
                          max_size=sum(map(len, updates)) * 2))
    for k in picks + list(range(n)) * max(map(len, updates)):
        if cursors[k] < len(updates[k]):
            in_order.append(updates[k][cursors[k]])
            cursors[k] += 1
    # perturbed delivery: any permutation, plus duplicates of random updates
    dups = draw(st.lists(st.sampled_from(in_order), max_size=len(in_order)))
    perturbed = draw(st.permutations(in_order + dups))
    return intents + in_order, intents + list(perturbed)


def _fills_by_position(events: list) -> dict:
    seen: set = set()
    out: dict = {}
    for e in events:
        if type(e).__name__ == "Fill" and e.trade_id not in seen:
            seen.add(e.trade_id)
            out.setdefault((e.bot, e.account, e.symbol), []).append(e.trade_id)
    return out


@settings(max_examples=300, deadline=None)
@given(order_streams())
def test_any_interleaving_of_duplicated_reordered_updates_converges(streams: tuple) -> None:
    in_order, perturbed = streams
    a, b = Projections(), Projections()
    for e in in_order:
        a.apply(e)
    for e in perturbed:
        b.apply(e)
    sa, sb = a.state(), b.state()
    assert sa["orders"] == sb["orders"]  # states, filled qty, cost, trade ids
    assert sa["orphans"] == sb["orphans"] == []
    for key, pa in a.positions.items():
        pb = b.positions[key]
        assert pa.qty == pb.qty
        assert pa.fees == pb.fees
        assert pa.total_pnl(MARK) == pb.total_pnl(MARK)  # exact: Decimal, order-independent
    if _fills_by_position(in_order) == _fills_by_position(perturbed):
        assert sa == sb  # same fill sequence per position: identical realized PnL too


def test_order_book_keeps_only_the_most_recent_terminal_orders() -> None:
    """``keep_terminal`` bounds memory: open orders stay, the oldest done ones go; a late
    fill of a forgotten order is still counted in the position (as an orphan)."""
    proj = Projections(keep_terminal=2)
    book = proj.orders
    for i in range(5):
        proj.apply(intent(f"c{i}", counter=i + 1))
    proj.apply(accepted("c4"))  # stays open throughout
    for i in range(4):  # c0, c1 filled; c2, c3 canceled: terminal in that order
        proj.apply(fill(f"c{i}", f"t{i}", qty="10", price="100") if i < 2 else canceled(f"c{i}"))
    assert sorted(book.orders) == ["c2", "c3", "c4"] and book.forgotten == 2
    assert book.get("c4") is not None and book.get("c4").state is OrderState.ACCEPTED
    # a duplicate event of a kept terminal order doesn't queue it twice
    assert proj.apply(canceled("c3")) is ApplyResult.DUPLICATE
    assert proj.apply(fill("c0", "late", qty="1", price="100")) is ApplyResult.ORPHAN
    assert proj.positions[("bot1", "acct1", "AAPL")].qty == Decimal(21)
    with pytest.raises(ValueError, match="keep_terminal=-1"):
        OrderBook(keep_terminal=-1)


def test_a_retired_order_recalled_from_its_events_takes_a_late_fill_once() -> None:
    """``recall`` rebuilds a retired order from its stored events (what the router reads
    from the store): the fill already counted is a duplicate, a late one counts once."""
    proj = Projections(keep_terminal=1)
    book = proj.orders
    stored = [intent("c0", counter=1), accepted("c0"),
              fill("c0", "t0", qty="10", price="100")]
    for ev in [*stored, intent("c1", counter=2), fill("c1", "t1", qty="10", price="100")]:
        proj.apply(ev)
    assert book.get("c0") is None and book.retired_cid(stored[2]) == "c0"
    assert book.retired_cid(stored[0]) is None  # an intent is not a venue update
    rec = book.recall(stored)
    assert rec is not None and rec.state is OrderState.FILLED and rec.filled_qty == 10
    assert book.recall(stored) is None  # already held: nothing rebuilt twice
    assert proj.apply(stored[2]) is ApplyResult.DUPLICATE
    late = fill("c0", "late", qty="1", price="100")
    assert proj.apply(late) is ApplyResult.APPLIED
    assert proj.apply(late) is ApplyResult.DUPLICATE
    assert proj.positions[("bot1", "acct1", "AAPL")].qty == Decimal(21)
    assert book.recall([stored[2]]) is None  # no intent: never our order
    st = book.stats()
    assert (st.held, st.terminal_held, st.terminal_kept, st.recalled) == (1, 1, 1, 1)
    assert st.retired == 2  # c0, then c1 when c0 came back


def test_order_book_keeps_every_order_by_default() -> None:
    proj = Projections()
    for i in range(50):
        proj.apply(intent(f"c{i}", counter=i + 1))
        proj.apply(fill(f"c{i}", f"t{i}", qty="10", price="100"))
    assert len(proj.orders.orders) == 50 and proj.orders.forgotten == 0
