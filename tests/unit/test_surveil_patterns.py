"""Trade surveillance on crafted event logs: qtd's real event types appended to a real SQLite
event store, read back by ``qtd surveil`` (the CLI entry point, read-only)."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path

import pytest

from qtd.cli import build_parser
from qtd.commands.report import EXIT_FINDINGS, run_surveil
from qtd.events import (
    Event,
    Fill,
    OrderCanceled,
    OrderCancelRequested,
    OrderIntent,
    OrderRejected,
    OrderType,
    Side,
)
from qtd.quality.surveil import SurveilConfig, Surveillance
from qtd.store import EventStore

NODE = "node-a"
T0 = 1_764_000_000_000_000_000  # 2025-11-24T16:00:00Z
MS = 1_000_000
S = 1_000_000_000


def _intent(cid: str, bot: str, side: Side, qty: str, ts: int, *, account: str = "acct",
            symbol: str = "AAPL", limit: str | None = None, price: str = "100") -> OrderIntent:
    return OrderIntent(
        node=NODE, bot=bot, ts_event=ts, ts_init=ts, client_order_id=cid, cid_counter=1,
        account=account, venue="paper", symbol=symbol, side=side, qty=Decimal(qty),
        order_type=OrderType.LIMIT if limit else OrderType.MARKET,
        limit_price=Decimal(limit) if limit else None, decision_price=Decimal(price))


def _fill(cid: str, bot: str, side: Side, qty: str, ts: int, *, account: str = "acct",
          price: str = "100") -> Fill:
    return Fill(node=NODE, bot=bot, ts_event=ts, ts_init=ts, client_order_id=cid,
                trade_id="t-" + cid, account=account, venue="paper", symbol="AAPL", side=side,
                qty=Decimal(qty), price=Decimal(price))


def _cancel(cid: str, bot: str, ts: int, reason: str = "strategy") -> OrderCancelRequested:
    return OrderCancelRequested(node=NODE, bot=bot, ts_event=ts, ts_init=ts,
                                client_order_id=cid, reason=reason)


def _canceled(cid: str, bot: str, ts: int) -> OrderCanceled:
    return OrderCanceled(node=NODE, bot=bot, ts_event=ts, ts_init=ts, client_order_id=cid)


async def _store(tmp_path: Path, events: list[Event]) -> Path:
    path = tmp_path / "events.db"
    async with await EventStore.open(path, node=NODE) as s:
        await s.append_many(events)
    return path


async def _surveil(path: Path, *extra: str) -> tuple[int, dict[str, object]]:
    args = build_parser().parse_args(["surveil", "--db", str(path), "--json", *extra])
    out = io.StringIO()
    rc = await run_surveil(args, out)
    return rc, json.loads(out.getvalue())


def _normal_orders(bot: str, n: int, t: int, qty: str = "10") -> list[Event]:
    """``n`` filled market orders of 10 x 100 = 1,000 notional, alternating sides, 1 min
    apart: a bot's ordinary business (sets its median order notional)."""
    out: list[Event] = []
    for i in range(n):
        side = Side.BUY if i % 2 == 0 else Side.SELL
        cid = f"{bot}.n{i}"
        ts = t + i * 60 * S
        out += [_intent(cid, bot, side, qty, ts), _fill(cid, bot, side, qty, ts + 5 * MS)]
    return out


async def test_wash_trade_across_two_bots_on_one_account(tmp_path: Path) -> None:
    events: list[Event] = [
        _intent("a.1", "alpha", Side.BUY, "10", T0), _fill("a.1", "alpha", Side.BUY, "10", T0),
        _intent("b.1", "beta", Side.SELL, "10", T0 + 2 * S),
        _fill("b.1", "beta", Side.SELL, "10", T0 + 2 * S),
    ]
    path = await _store(tmp_path, events)
    rc, doc = await _surveil(path)
    assert rc == EXIT_FINDINGS
    [f] = doc["findings"]  # type: ignore[misc]
    assert f["pattern"] == "wash" and f["account"] == "acct" and f["bots"] == ["alpha", "beta"]
    refs = [(e["seq"], e["kind"], e["client_order_id"]) for e in f["events"]]
    assert refs == [(2, "Fill", "a.1"), (4, "Fill", "b.1")]
    assert f["value"] == pytest.approx(2.0)


async def test_no_wash_outside_window_same_bot_or_other_account(tmp_path: Path) -> None:
    events: list[Event] = [
        # 6 s apart: outside the 5 s window
        _intent("a.1", "alpha", Side.BUY, "10", T0), _fill("a.1", "alpha", Side.BUY, "10", T0),
        _intent("b.1", "beta", Side.SELL, "10", T0 + 6 * S),
        _fill("b.1", "beta", Side.SELL, "10", T0 + 6 * S),
        # one bot reversing its own position: not a wash across bots
        _intent("a.2", "alpha", Side.SELL, "10", T0 + 7 * S),
        _fill("a.2", "alpha", Side.SELL, "10", T0 + 7 * S),
        # another account, 1 s later
        _intent("c.1", "gamma", Side.BUY, "10", T0 + 100 * S, account="other"),
        _fill("c.1", "gamma", Side.BUY, "10", T0 + 100 * S, account="other"),
        _intent("d.1", "delta", Side.SELL, "10", T0 + 101 * S),
        _fill("d.1", "delta", Side.SELL, "10", T0 + 101 * S),
    ]
    rc, doc = await _surveil(await _store(tmp_path, events))
    assert rc == 0 and doc["findings"] == []
    # the same log with a 10 s window finds the first pair (the threshold is honoured)
    rc, doc = await _surveil(tmp_path / "events.db", "--set", "wash_window_s=10")
    assert rc == EXIT_FINDINGS
    assert [f["bots"] for f in doc["findings"]] == [["alpha", "beta"]]  # type: ignore[index]


def test_wash_reports_the_earliest_opposite_fill_of_another_bot() -> None:
    """Fills are kept per (bot, side): the match is still the earliest arrival among other
    bots' opposite-side fills in the window, and a busy single bot never matches itself."""
    sv = Surveillance(SurveilConfig(wash_window_s=5.0))
    own = [_fill(f"a.{i}", "alpha", Side.BUY if i % 2 else Side.SELL, "1", T0 + i * MS,
                 account="solo") for i in range(1000)]  # one bot churning its own position
    assert sv.feed_many(list(own)) == []
    sv.feed(_fill("g.1", "gamma", Side.BUY, "1", T0 - 9 * S))  # outside the window (9 s)
    sv.feed(_fill("b.1", "beta", Side.BUY, "1", T0 + 2 * S))   # earliest candidate
    sv.feed(_fill("g.2", "gamma", Side.BUY, "1", T0 + 3 * S))  # later candidate
    sv.feed(_fill("b.2", "beta", Side.SELL, "1", T0 + 3 * S))  # same side as the probe
    [f] = sv.feed(_fill("d.1", "delta", Side.SELL, "1", T0 + 4 * S))
    assert f.bots == ["beta", "delta"] and f.value == pytest.approx(2.0)
    assert [e.client_order_id for e in f.events] == ["b.1", "d.1"]


def test_surveillance_holds_only_open_orders() -> None:
    """Filled, canceled, rejected and expired orders are dropped at once (bounded memory on
    the leader); a cancel after a partial fill is still no spoof."""
    sv = Surveillance()
    sv.feed_many(_normal_orders("alpha", 30, T0))  # 30 filled orders: a median notional
    big = T0 + 3600 * S
    sv.feed_many([_intent("p.1", "alpha", Side.BUY, "1000", big),
                  _intent("r.1", "alpha", Side.BUY, "10", big),
                  _intent("o.1", "alpha", Side.BUY, "10", big)])
    assert sorted(sv.orders) == ["o.1", "p.1", "r.1"]
    sv.feed(OrderRejected(node=NODE, bot="alpha", ts_event=big, ts_init=big,
                          client_order_id="r.1", reason="insufficient funds"))
    sv.feed(_fill("p.1", "alpha", Side.BUY, "1", big + 10 * MS))  # partial fill
    assert sv.feed(_cancel("p.1", "alpha", big + 20 * MS)) == []  # big, fast, but filled
    assert sorted(sv.orders) == ["o.1"]


async def test_spoofing_large_order_canceled_within_100ms(tmp_path: Path) -> None:
    t = T0 + 3600 * S
    events = [*_normal_orders("alpha", 6, T0),
              _intent("a.big", "alpha", Side.BUY, "500", t, limit="99.5"),
              _cancel("a.big", "alpha", t + 40 * MS), _canceled("a.big", "alpha", t + 45 * MS)]
    rc, doc = await _surveil(await _store(tmp_path, events))
    assert rc == EXIT_FINDINGS
    [f] = doc["findings"]  # type: ignore[misc]
    assert f["pattern"] == "spoof" and f["bots"] == ["alpha"]
    assert f["value"] == pytest.approx(40.0)  # ms from intent to cancel
    assert [(e["kind"], e["client_order_id"], e["seq"]) for e in f["events"]] == [
        ("OrderIntent", "a.big", 13), ("OrderCancelRequested", "a.big", 14)]
    assert "49.8x" in f["message"]  # 500 x 99.5 against the median 1,000


async def test_no_spoof_when_small_slow_filled_or_kill_switch(tmp_path: Path) -> None:
    t = T0 + 3600 * S
    events = [
        *_normal_orders("alpha", 6, T0),
        # ordinary size, canceled fast
        _intent("s.1", "alpha", Side.BUY, "10", t, limit="99"), _cancel("s.1", "alpha", t + MS),
        # large but canceled after 150 ms
        _intent("s.2", "alpha", Side.BUY, "500", t + S, limit="99"),
        _cancel("s.2", "alpha", t + S + 150 * MS),
        # large, fast, but partly filled first
        _intent("s.3", "alpha", Side.BUY, "500", t + 2 * S, limit="99"),
        _fill("s.3", "alpha", Side.BUY, "1", t + 2 * S + 10 * MS),
        _cancel("s.3", "alpha", t + 2 * S + 20 * MS),
        # large, fast, canceled by the kill switch
        _intent("s.4", "alpha", Side.BUY, "500", t + 3 * S, limit="99"),
        _cancel("s.4", "alpha", t + 3 * S + 5 * MS, reason="kill switch: runaway"),
    ]
    rc, doc = await _surveil(await _store(tmp_path, events))
    assert (rc, doc["findings"]) == (0, [])


async def test_layering_three_levels_canceled_in_sequence(tmp_path: Path) -> None:
    t = T0
    events: list[Event] = []
    for i, px in enumerate(("99.9", "99.8", "99.7")):
        events.append(_intent(f"L.{i}", "alpha", Side.BUY, "10", t + i * MS, limit=px))
    for i in range(3):
        events.append(_cancel(f"L.{i}", "alpha", t + 2 * S + i * 200 * MS))
    rc, doc = await _surveil(await _store(tmp_path, events))
    assert rc == EXIT_FINDINGS
    [f] = doc["findings"]  # type: ignore[misc]
    assert f["pattern"] == "layer" and f["value"] == 3.0
    cids = [e["client_order_id"] for e in f["events"]]
    assert cids == ["L.0", "L.0", "L.1", "L.1", "L.2", "L.2"]
    assert [e["seq"] for e in f["events"]] == [1, 4, 2, 5, 3, 6]


async def test_no_layering_with_two_levels_or_slow_cancels(tmp_path: Path) -> None:
    t = T0
    events: list[Event] = [
        # two levels only (three orders)
        _intent("A.0", "alpha", Side.BUY, "10", t, limit="99.9"),
        _intent("A.1", "alpha", Side.BUY, "10", t, limit="99.8"),
        _intent("A.2", "alpha", Side.BUY, "10", t, limit="99.8"),
        _cancel("A.0", "alpha", t + S), _cancel("A.1", "alpha", t + S + MS),
        _cancel("A.2", "alpha", t + S + 2 * MS),
        # three levels, but cancels 5 s apart: not one sequence
        *[_intent(f"B.{i}", "alpha", Side.SELL, "10", t, limit=px)
          for i, px in enumerate(("101", "102", "103"))],
        *[_cancel(f"B.{i}", "alpha", t + 10 * S + i * 5 * S) for i in range(3)],
    ]
    rc, doc = await _surveil(await _store(tmp_path, events))
    assert (rc, doc["findings"]) == (0, [])


def test_incremental_feed_returns_finding_at_the_completing_event() -> None:
    sv = Surveillance(SurveilConfig(layer_levels=2))
    a = _intent("x.0", "alpha", Side.SELL, "1", T0, limit="10")
    b = _intent("x.1", "alpha", Side.SELL, "1", T0, limit="11")
    assert sv.feed_many([a, b, _cancel("x.0", "alpha", T0 + S)]) == []
    [f] = sv.feed(_cancel("x.1", "alpha", T0 + S + MS))
    assert f.pattern == "layer" and f.key == "layer:acct:AAPL:SELL"


async def test_bad_setting_is_a_clear_error(tmp_path: Path) -> None:
    from qtd.errors import ConfigError

    path = await _store(tmp_path, [])
    with pytest.raises(ConfigError, match="layer_levels"):
        await _surveil(path, "--set", "layer_levels=1")
