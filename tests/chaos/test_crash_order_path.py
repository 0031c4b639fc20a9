"""Chaos: SIGKILL the agent at random points of the order path, against a venue that
outlives it.

The test process serves the Binance stub (:mod:`tests.stubs.binance_stub`: REST and the
WebSocket API user data stream); a real ``qtd agent`` subprocess trades one bot on a
``broker = "binance"`` account through the real python-binance client pointed at it (bars
replayed as BTCUSDT at 100 bars/s, a flip of 0.1 BTC per bar: one MARKET order per bar,
filled by the venue in two partial fills, 40 % then 60 %).
Each iteration starts the agent and SIGKILLs it, either

* after a seeded random delay (anywhere: start-up, reconciliation, mid-order), or
* at a named point of the order path through the test-only hook ``QTD_TEST_CRASH_AT``
  (:mod:`qtd.agent.crashpoint`): after the intent is stored (before the submit), after the
  submit returned (before ``OrderSubmitted`` is stored), on a venue ack before it is stored,
  on a fill before it is stored — the pass number is seeded too.

Every iteration prints its seed and what it did; the next start must reconcile cleanly
(``Reconciliation.ok``: every order the store had open is resolved with the venue, positions
equal). At the end a last agent with no bot reconciles, and the test compares the store with
the venue: **zero duplicate submissions** (each client_order_id POSTed once at the stub),
**zero lost fills** (every venue trade in the store exactly once, no fill the venue lacks),
**positions equal**, and every order the venue saw has its intent stored.

Half the iterations (in a seeded order) use a named point, the points dealt in turn from a
seeded shuffle, so every point is hit at least ``CRASHES // 8`` times. CI runs
``QTD_CHAOS_CRASHES`` iterations (default 16: each point twice, eight timed kills);
``QTD_CHAOS_SOAK=1`` runs 300 (or ``QTD_CHAOS_CRASHES``) with longer trading windows.
``QTD_CHAOS_SEED`` replays a run.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest

from qtd.agent.crashpoint import ENV as CRASH_ENV
from qtd.agent.crashpoint import POINTS
from qtd.events import (
    AnyEvent,
    Fill,
    OrderCanceled,
    OrderIntent,
    OrderRejected,
    Reconciliation,
)
from qtd.store import EventStore
from tests.agent_rig import STRATEGIES, store_events, wait_for, write_binance_bot
from tests.stubs import StubServer
from tests.stubs.binance_stub import BinanceStub

SOAK = os.environ.get("QTD_CHAOS_SOAK") == "1"
CRASHES = int(os.environ.get("QTD_CHAOS_CRASHES", "300" if SOAK else "16"))
SEED = int(os.environ.get("QTD_CHAOS_SEED", str(time.time_ns() % 1_000_000)))
MAX_DELAY_S = 6.0 if SOAK else 2.5  # kill delay after the process starts (start-up ~1 s)
MAX_PASS = 200 if SOAK else 40  # the crash point fires at a pass in 1..MAX_PASS

RISK = """
[global]
duplicate_window_s = 0.0
order_spike_factor = 0.0
max_data_age_s = 600.0

[accounts.bn1]
equity = 10_000_000.0
currency = "USDT"

[strategy_defaults]

[symbols.BTCUSDT]
"""


def _write_config(root: Path, http_url: str, ws_url: str) -> tuple[Path, Path]:
    """(trading config, reconcile-only config) for one binance account on the stub."""
    (root / "strategies").mkdir(parents=True, exist_ok=True)
    (root / "bots").mkdir(exist_ok=True)
    (root / "nobots").mkdir(exist_ok=True)
    (root / "strategies" / "flipper.py").write_text(textwrap.dedent(STRATEGIES["flipper.py"]))
    (root / "risk.toml").write_text(RISK)
    write_binance_bot(root, qty=0.1, dataset="goog_1d")
    common = textwrap.dedent(f"""
        node = "node-a"
        state_dir = "state"
        risk = "risk.toml"
        kill_file = "kill"
        admit_smoke = false
        failsafe = "NONE"

        [accounts.bn1]
        broker = "binance"
        mode = "paper"
        base_url = "{http_url}/api"
        stream_url = "{ws_url}/ws-api/v3"
        credentials_env = ["QTD_T_KEY", "QTD_T_SECRET"]
        symbols = ["BTCUSDT"]
        connect_timeout_s = 10.0
        timeout_s = 2.0
    """)
    trade = root / "agent.toml"
    trade.write_text('bots = ["bots"]\n' + common + textwrap.dedent("""
        [market.bots.bnbot]
        dataset = "goog_1d"
        symbol = "BTCUSDT"
        speed = 8640000.0
        loop = true
    """))
    check = root / "reconcile.toml"
    check.write_text('bots = ["nobots"]\n' + common)
    return trade, check


@dataclass
class Tally:
    kills: int = 0
    by_point: Counter[str] = field(default_factory=Counter)
    fired: int = 0  # crash-point runs that died at the point (not by the fallback kill)
    recon_resolved: int = 0
    recon_imported: int = 0
    seconds: list[float] = field(default_factory=list)


async def _events(db: Path) -> list[AnyEvent]:
    return await store_events(db) if db.exists() else []


async def _last_seq(db: Path) -> int:
    """The store's last seq; 0 when there is no store yet or it is empty (an agent killed
    during start-up may leave a created but empty file)."""
    events = await _events(db)
    return events[-1].seq if events else 0


async def _reconciled_after(db: Path, seq: int) -> bool:
    if not db.exists():
        return False
    try:
        store = await EventStore.open(db, readonly=True)
    except Exception:
        return False
    try:
        return bool(await store.query(kind="Reconciliation", after_seq=seq, limit=1))
    finally:
        await store.close()


def _spawn(cfg: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "qtd.cli", "agent", "--config", str(cfg)], cwd=cfg.parent,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "QTD_T_KEY": "key", "QTD_T_SECRET": "secret", **env})


def _plan(crashes: int, seed: int) -> list[str | None]:
    """Per iteration, the named crash point or None (a timed kill): half the iterations use
    a point, in a seeded order, the points dealt from a seeded shuffle in turn, so that
    every point is hit ``crashes // (2 * len(POINTS))`` times or more."""
    rng = random.Random(seed)
    named = crashes // 2
    deck: list[str] = []
    while len(deck) < named:
        deck += rng.sample(POINTS, len(POINTS))
    plan: list[str | None] = [*deck[:named], *[None] * (crashes - named)]
    rng.shuffle(plan)
    return plan


async def _one_crash(i: int, point_at: str | None, cfg: Path, db: Path, tally: Tally) -> str:
    seed = SEED * 1000 + i
    rng = random.Random(seed)
    env: dict[str, str] = {}
    if point_at is not None:
        point, n = point_at, rng.randint(1, MAX_PASS)
        env[CRASH_ENV] = f"{point}:{n}"
        what = f"crash point {point} pass {n}"
    else:
        point = "delay"
        what = f"SIGKILL after {rng.uniform(0.5, MAX_DELAY_S):.3f} s"
    delay = float(what.split()[2]) if point == "delay" else MAX_DELAY_S + 20
    before = await _last_seq(db)
    t0 = time.perf_counter()
    proc = _spawn(cfg, env)
    try:
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.wait), delay)
        except TimeoutError:
            proc.send_signal(signal.SIGKILL)
        rc = await asyncio.to_thread(proc.wait)
    finally:
        if proc.poll() is None:
            proc.kill()
        err = proc.communicate()[1]
    tally.seconds.append(time.perf_counter() - t0)
    assert rc == -signal.SIGKILL, f"iteration {i} seed {seed}: exit {rc}: {err.decode()[-3000:]}"
    tally.kills += 1
    tally.by_point[point] += 1
    if point != "delay" and time.perf_counter() - t0 < delay:
        tally.fired += 1
    after = await _events(db)
    recs = [e for e in after if isinstance(e, Reconciliation) and e.seq > before]
    for r in recs:  # this run's start-up reconciliation settled the previous kill
        assert r.ok, f"iteration {i} seed {seed}: reconciliation not clean: {r}"
        tally.recon_resolved += len(r.resolved)
        tally.recon_imported += r.fills_imported
    line = (f"[crash {i:3d}] seed={seed} {what}: {len(after) - before} events, "
            f"{len(recs)} reconciliation(s)")
    print(line, flush=True)
    return line


def _check_against_venue(events: list[AnyEvent], venue: BinanceStub) -> dict[str, int]:
    dup = {cid: n for cid, n in venue.post_counts.items() if n != 1}
    assert not dup, f"duplicate submissions at the venue: {dup}"
    intents = {e.client_order_id: e for e in events if isinstance(e, OrderIntent)}
    unknown = sorted(set(venue.orders) - set(intents))
    assert not unknown, f"orders at the venue with no stored intent: {unknown[:5]}"
    fills = [e for e in events if isinstance(e, Fill)]
    per_trade = Counter(f.trade_id for f in fills)
    venue_trades = {str(t["id"]) for t in venue.trades}
    lost = sorted(venue_trades - set(per_trade))
    twice = {t: n for t, n in per_trade.items() if n > 1}
    phantom = sorted(set(per_trade) - venue_trades)
    assert not lost, f"{len(lost)} venue fills missing from the store: {lost[:5]}"
    assert not twice, f"fills stored twice: {twice}"
    assert not phantom, f"fills the venue never made: {phantom[:5]}"
    net = sum((f.qty if f.side.value == "BUY" else -f.qty for f in fills), Decimal(0))
    assert net == venue.balances["BTC"], f"position store={net} venue={venue.balances['BTC']}"
    never_sent = [c for c in intents if c not in venue.orders]
    settled = {e.client_order_id for e in events if isinstance(e, OrderCanceled | OrderRejected)}
    still_open = sorted(set(never_sent) - settled)
    assert not still_open, f"intents the venue never saw are still open: {still_open[:5]}"
    return {"orders": len(venue.orders), "fills": len(fills), "never_sent": len(never_sent)}


@pytest.mark.slow
@pytest.mark.timeout(1800 if SOAK else 600)
async def test_sigkill_at_random_points_of_the_order_path(tmp_path: Path) -> None:
    venue = BinanceStub(price="300", orders_per_10s=10_000)
    venue.fill_fractions = [Decimal("0.4"), Decimal("0.6")]  # two partial fills per order
    server = await StubServer(venue.app).start()
    tally = Tally()
    t_start = time.perf_counter()
    print(f"\n[crash suite] seed={SEED} crashes={CRASHES} soak={SOAK}", flush=True)
    try:
        cfg, check_cfg = _write_config(tmp_path, server.http_url, server.ws_url)
        db = tmp_path / "state" / "events.db"
        for i, point in enumerate(_plan(CRASHES, SEED)):
            await _one_crash(i, point, cfg, db, tally)
        before = await _last_seq(db)
        final = _spawn(check_cfg, {})  # no bot: start-up reconciliation only, then stop
        try:
            await wait_for(lambda: _reconciled_after(db, before), 30)
            final.send_signal(signal.SIGTERM)
            _, err = await asyncio.to_thread(final.communicate, timeout=30)
            assert final.returncode == 0, err.decode()[-3000:]
        finally:
            if final.poll() is None:
                final.kill()
                final.communicate()
    finally:
        await server.stop()
    events = await store_events(db)
    last = [e for e in events if isinstance(e, Reconciliation)][-1]
    assert last.ok and not last.unresolved and not last.position_mismatches, last
    counts = _check_against_venue(events, venue)
    assert tally.kills == CRASHES and counts["orders"] > CRASHES  # it really traded
    assert all(tally.by_point[p] for p in POINTS) or 2 * len(POINTS) > CRASHES, tally.by_point
    print(f"[crash suite] seed={SEED}: crashes injected {tally.kills} "
          f"({dict(tally.by_point)}; {tally.fired} died at the named point), "
          f"orders at venue {counts['orders']}, fills {counts['fills']}, duplicate "
          f"submissions 0, fills lost 0, positions equal "
          f"({venue.balances['BTC'].normalize()} BTC); "
          f"intents never sent (settled canceled/rejected) {counts['never_sent']}; reconciliation "
          f"resolved {tally.recon_resolved} orders, imported {tally.recon_imported} fills; "
          f"per iteration mean {sum(tally.seconds) / len(tally.seconds):.2f} s, total "
          f"{time.perf_counter() - t_start:.1f} s", flush=True)


async def test_fill_of_a_resting_order_while_the_agent_is_down_is_imported(
    tmp_path: Path
) -> None:
    """A resting LIMIT order is partially filled at the venue while the agent is down (the
    order stays open there): the restart's reconciliation must import that fill."""
    venue = BinanceStub(price="300")
    server = await StubServer(venue.app).start()
    try:
        cfg, _ = _write_config(tmp_path, server.http_url, server.ws_url)
        bot = tmp_path / "bots" / "bnbot.toml"
        bot.write_text(bot.read_text().replace("flipper.py", "rester.py")
                       .replace("qty = 0.1", "qty = 1.0"))
        (tmp_path / "strategies" / "rester.py").write_text(
            textwrap.dedent(STRATEGIES["rester.py"]))
        db = tmp_path / "state" / "events.db"
        first = _spawn(cfg, {})
        try:
            await wait_for(lambda: bool(venue.orders), 30)
            cid = next(iter(venue.orders))
            await wait_for(lambda: _has(db, cid, "OrderAccepted"), 10)
        finally:
            first.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.communicate)
        await venue.fill(cid, "0.4")  # while the agent is down; the order stays open
        assert venue.orders[cid]["status"] == "PARTIALLY_FILLED"
        before = await _last_seq(db)
        second = _spawn(cfg, {})
        try:
            await wait_for(lambda: _reconciled_after(db, before), 30)
        finally:
            second.send_signal(signal.SIGKILL)
            await asyncio.to_thread(second.communicate)
    finally:
        await server.stop()
    events = await store_events(db)
    rec = [e for e in events if isinstance(e, Reconciliation)][-1]
    fills = [e for e in events if isinstance(e, Fill) and e.client_order_id == cid]
    assert [str(f.qty) for f in fills] == ["0.4"], rec
    assert rec.ok, rec


async def _has(db: Path, cid: str, kind: str) -> bool:
    if not db.exists():
        return False
    store = await EventStore.open(db, readonly=True)
    try:
        return bool(await store.query(kind=kind, client_order_id=cid, limit=1))
    finally:
        await store.close()
