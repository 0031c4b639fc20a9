"""Kill switch: scope matching, flatten orders, and the local kill file (parse, write, watch)."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path

import pytest

from qtd.control import KillCommand, decode_kill
from qtd.errors import ConfigError
from qtd.events import OrderType, Scope, Side, TradingState
from qtd.projections import Position
from qtd.risk import Approved
from qtd.risk.kill_file import (
    KillFileWatcher,
    flatten_requests,
    in_scope,
    parse_kill_file,
    remove_kill_file,
    write_kill_file,
)
from tests.unit.test_risk_harness import Harness, denied, req


@pytest.mark.parametrize(("scope", "key", "expected"), [
    (Scope.GLOBAL, "", [True, True, True]),
    (Scope.ACCOUNT, "a1", [True, False, True]),
    (Scope.STRATEGY, "b1", [True, True, False]),
    (Scope.SYMBOL, "X", [True, False, False]),
])
def test_scope_levels(scope: Scope, key: str, expected: list[bool]) -> None:
    items = [("b1", "a1", "X"), ("b1", "a2", "Y"), ("b2", "a1", "Y")]
    assert [in_scope(scope, key, *i) for i in items] == expected


def test_flatten_requests_are_reduce_only_market_orders_in_scope() -> None:
    long_, short, other, flat = (Position("b1", "a1", "X", "USD"), Position("b1", "a1", "Y", "USD"),
                                 Position("b2", "a1", "X", "USD"), Position("b1", "a1", "Z", "USD"))
    long_.qty, short.qty, other.qty = Decimal(5), Decimal(-3), Decimal(7)
    reqs = flatten_requests(KillCommand(scope=Scope.STRATEGY, key="b1", reason="r"),
                            [long_, short, other, flat], {"a1": "paper"})
    assert [(r.symbol, r.side, r.qty) for r in reqs] == [("X", Side.SELL, 5), ("Y", Side.BUY, 3)]
    assert all(r.reduce_only and r.order_type is OrderType.MARKET for r in reqs)


def test_engine_halt_returns_only_the_scopes_open_orders() -> None:
    h = Harness()
    _, a = h.place(req(limit="99"))
    _, b = h.place(req(limit="99", bot="bot2"))
    _, c = h.place(req(limit="99", symbol="MSFT"))
    assert h.engine.halt(Scope.STRATEGY, "bot2", "r") == [b]
    assert sorted(h.engine.halt(Scope.SYMBOL, "AAPL", "r")) == sorted([a, b])
    assert sorted(h.engine.halt(Scope.GLOBAL, "", "r")) == sorted([a, b, c])
    assert h.engine.states.get(Scope.GLOBAL) is TradingState.HALTED


def test_flatten_passes_a_halted_scope_once_and_only_if_it_reduces() -> None:
    h = Harness()
    h.trade(Side.BUY, "10", "100")
    h.engine.halt(Scope.GLOBAL, "", "r")
    flat = req(Side.SELL, "10", reduce_only=True)
    denied(h.check(flat), "trading_state")  # not allowed until the kill switch registers it
    h.engine.allow_flatten(flat)
    assert isinstance(h.check(flat), Approved)
    denied(h.check(flat), "trading_state")  # single use
    over = req(Side.SELL, "11", reduce_only=True)
    h.engine.allow_flatten(over)
    denied(h.check(over), "reduce_only")  # would flip: refused even for the kill switch


# --- kill file -----------------------------------------------------------------------------


def test_parse_json_toml_levels_and_empty() -> None:
    cmd = parse_kill_file(b'{"scope": "L3", "key": "bot7", "reason": "runaway", "flatten": true}')
    assert (cmd.scope, cmd.key, cmd.reason, cmd.flatten) == (
        Scope.STRATEGY, "bot7", "runaway", True)
    cmd = parse_kill_file(b'scope = "symbol"\nkey = "AAPL"\nreason = "halt"\n')
    assert (cmd.scope, cmd.key) == (Scope.SYMBOL, "AAPL")
    assert parse_kill_file(b"  \n").scope is Scope.GLOBAL


@pytest.mark.parametrize("data", [b"{not json", b'{"scope": "L2"}', b'{"scope": "L9"}',
                                  b'{"flatten": "yes"}'])
def test_bad_kill_file_content_is_a_config_error(data: bytes) -> None:
    with pytest.raises(ConfigError):
        parse_kill_file(data)


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    p = write_kill_file(tmp_path / "qtd.kill", scope=Scope.ACCOUNT, key="acct1", reason="r",
                        flatten=True, operator="alice")
    cmd = parse_kill_file(p.read_bytes())
    assert (cmd.scope, cmd.key, cmd.flatten, cmd.operator, cmd.source) == (
        Scope.ACCOUNT, "acct1", True, "alice", "kill_file")
    assert [f.name for f in tmp_path.iterdir()] == ["qtd.kill"]  # no temp file left
    remove_kill_file(p)
    remove_kill_file(p)
    assert not p.exists()


async def test_watcher_fires_on_the_next_poll_once_per_version(tmp_path: Path) -> None:
    path = tmp_path / "qtd.kill"
    fired: list[KillCommand] = []
    sleeps: list[float] = []
    step = asyncio.Event()

    async def on_kill(cmd: KillCommand) -> None:
        fired.append(cmd)

    async def sleeper(seconds: float) -> None:  # the test drives the polls
        sleeps.append(seconds)
        step.set()
        await asyncio.sleep(0)

    w = KillFileWatcher(on_kill, path, sleep=sleeper)
    assert w.poll() is None
    write_kill_file(path, scope=Scope.STRATEGY, key="bot1", reason="runaway")
    task = asyncio.create_task(w.run())
    while len(sleeps) < 1:
        await asyncio.sleep(0)
    assert [c.key for c in fired] == ["bot1"] and sleeps == [0.25]  # before the first sleep
    while len(sleeps) < 5:
        await asyncio.sleep(0)
    assert len(fired) == 1  # same version: fires once
    write_kill_file(path, scope=Scope.GLOBAL, reason="everything")
    n = len(sleeps)
    while len(sleeps) < n + 2:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [c.scope for c in fired] == [Scope.STRATEGY, Scope.GLOBAL]


def test_unreadable_kill_file_means_global_kill(tmp_path: Path) -> None:
    path = tmp_path / "qtd.kill"
    path.write_bytes(b"\xff\xfe garbage {")
    cmd = KillFileWatcher(lambda c: asyncio.sleep(0), path).poll()
    assert cmd is not None and cmd.scope is Scope.GLOBAL and "unreadable" in cmd.reason


async def test_watcher_with_real_sleep_triggers_within_one_poll(tmp_path: Path) -> None:
    path = tmp_path / "qtd.kill"
    got = asyncio.Event()
    seen_at: list[float] = []

    async def on_kill(cmd: KillCommand) -> None:
        seen_at.append(time.monotonic())
        got.set()

    task = asyncio.create_task(KillFileWatcher(on_kill, path, poll_s=0.25).run())
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    write_kill_file(path, reason="now")
    await asyncio.wait_for(got.wait(), timeout=2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen_at[0] - t0 <= 0.25 + 0.1  # one poll interval (+ scheduling slack)


def test_one_kill_struct_lenient_on_the_wire_strict_in_the_file() -> None:
    """A newer leader's kill with a field this agent does not know is still applied; the
    same field in the kill file is an error naming it; a wire kill without an id is a
    GLOBAL kill naming the problem (fail safe)."""
    wire = b'{"id":"k9","scope":"STRATEGY","key":"b1","reason":"r","future":1}'
    kill = decode_kill(wire)
    assert (kill.id, kill.scope, kill.key) == ("k9", Scope.STRATEGY, "b1")
    with pytest.raises(ConfigError, match="unknown field `future`"):
        parse_kill_file(b'{"scope": "L3", "key": "b1", "reason": "r", "future": 1}')
    with pytest.raises(ConfigError, match="unknown field `id`"):
        parse_kill_file(b'{"id": "k9", "reason": "r"}')
    no_id = decode_kill(b'{"scope":"STRATEGY","key":"b1","reason":"r"}', revision=3)
    assert no_id.scope is Scope.GLOBAL and no_id.id.startswith("undecodable-3-")
