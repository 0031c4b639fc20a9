"""Chaos: the agent's event store stops taking writes while it trades.

A real ``qtd agent`` subprocess trades two paper bots against a real nats-server with a real
SQLite store; the test then breaks the store under it:

* **disk full**: ``RLIMIT_FSIZE`` set on the running agent with ``prlimit`` (unprivileged;
  the agent ignores ``SIGXFSZ``, so SQLite's WAL writes fail with ``EFBIG``/short writes:
  ``SQLITE_FULL`` or ``SQLITE_IOERR``, exactly what a full disk gives SQLite's write path);
* **read-only store**: SQLite's own ``PRAGMA query_only`` on the agent's connection through
  the test-only flag ``QTD_TEST_STORE_READONLY`` (a genuine ``SQLITE_READONLY``; a read-only
  remount is refused by the kernel while the file is open for writing).

Required (issue #10): GLOBAL HALTED in the risk engine, a P1 over NATS core, nothing
committed lost, the daemon alive, every event accepted meanwhile written in order once the
store recovers, the agent still HALTED until an operator resumes it, and trading again after
the resume. Figures printed: fault → P1 seen by the test, and detection → HALTED inside the
agent (the breach's ``value``, measured with ``perf_counter_ns``).
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from qtd.bus import BusConfig, EmbeddedNatsServer, connect
from qtd.errors import StoreError
from qtd.events import (
    AnyEvent,
    Fill,
    OrderDenied,
    OrderIntent,
    RiskBreach,
    Scope,
    TradingState,
    TradingStateChanged,
)
from qtd.leader.daemon import Leader, start_leader
from qtd.store import EventStore
from qtd.store.agentstore import AgentStore, StoreHooks
from tests import factories
from tests.agent_rig import (
    seq_above,
    store_events,
    stream_events,
    wait_for,
    write_fleet,
)
from tests.factories import NODE
from tests.integration.leader_peer import PageReceiver, leader_config

FIGURES: dict[str, list[float]] = {"fault_to_p1_s": [], "fault_to_page_s": [],
                                   "detect_to_halted_ms": []}


class _Breaches:
    """The leader side of the P1: store-fault breaches received on ``qtd.hb.node-a``."""

    def __init__(self) -> None:
        self.got: list[tuple[float, RiskBreach]] = []

    async def on_msg(self, msg: object) -> None:
        data = getattr(msg, "data", b"")
        try:
            ev = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return
        if isinstance(ev, dict) and ev.get("kind") == "RiskBreach":
            self.got.append((time.perf_counter(), msgspec.json.decode(data, type=RiskBreach)))


async def _run_fault(tmp_path: Path, server: EmbeddedNatsServer,
                     inject: Callable[[subprocess.Popen[bytes]], str],
                     heal: Callable[[subprocess.Popen[bytes]], None],
                     env: dict[str, str] | None = None) -> list[str]:
    cfg = write_fleet(tmp_path, {"b1": {}, "b2": {}}, bus_url=server.url,
                      market="speed = 8640000.0\nloop = true")
    db = tmp_path / "state" / "events.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "qtd.cli", "agent", "--config", str(cfg)], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    nc = await connect(BusConfig(servers=(server.url,)))
    breaches = _Breaches()
    await nc.subscribe("qtd.hb.node-a", cb=breaches.on_msg)
    pages = PageReceiver()
    leader = await start_leader(leader_config(tmp_path, server, page_url=pages.url,
                                              hb_timeout_s=30.0))
    try:
        await wait_for(lambda: seq_above(db, 300), 30)
        committed = await store_events(db)  # committed before the fault: must all survive
        what = inject(proc)
        t_fault = time.perf_counter()
        await wait_for(lambda: bool(breaches.got), 20)
        t_p1, breach = breaches.got[0]
        FIGURES["fault_to_p1_s"].append(t_p1 - t_fault)
        FIGURES["detect_to_halted_ms"].append(breach.value * 1e3)
        await wait_for(lambda: _store_page(pages), 20)  # the leader paged it, P1
        FIGURES["fault_to_page_s"].append(time.perf_counter() - t_fault)
        await wait_for(lambda: _held_by_storage(leader), 20)  # every bot says why
        assert breach.check == "store_fault" and breach.severity.value == "P1"
        assert breach.scope is Scope.GLOBAL and breach.action == "halted"
        await asyncio.sleep(2.0)  # faulted for a while: bars keep coming, orders denied
        assert proc.poll() is None, "the agent died on a store fault"
        during = len(breaches.got)
        heal(proc)
        await wait_for(lambda: _halt_stored(db), 20)  # the buffer, halt first, written
        await asyncio.sleep(1.0)  # still HALTED: no intent after the halt
        halted = await store_events(db)
        assert proc.poll() is None
        reply = await nc.request("qtd.ctl.node-a.resume", msgspec.json.encode(
            {"operator": "alice", "reason": "disk cleaned"}), timeout=10)
        assert msgspec.json.decode(reply.data)["ok"], reply.data
        n_after_resume = len(halted)
        await wait_for(lambda: _intents_after(db, n_after_resume), 20)
        await wait_for(lambda: not _held_by_storage(leader, any), 20)  # and no longer
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(proc.communicate, timeout=30)
        assert proc.returncode == 0, out.decode()[-3000:]
        stream = await stream_events(nc.jetstream())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        await nc.close()
        await leader.stop()
        pages.close()
    final = await store_events(db)
    _check(committed, halted, final, stream)
    print(f"\n[storage {what}] breach P1 x{during} while faulted; fault -> P1 seen "
          f"{(t_p1 - t_fault) * 1e3:.1f} ms; detection -> HALTED in agent "
          f"{breach.value * 1e3:.3f} ms; {breach.message[:160]}")
    return [breach.message]


def _check(committed: list[AnyEvent], halted: list[AnyEvent], final: list[AnyEvent],
           stream: list[tuple[str, AnyEvent]]) -> None:
    assert final[:len(committed)] == committed, "an event committed before the fault changed"
    intents = {e.client_order_id: e.seq for e in final if isinstance(e, OrderIntent)}
    for f in (e for e in final if isinstance(e, Fill)):  # write-ahead held throughout
        assert intents.get(f.client_order_id, f.seq) < f.seq, f"fill without a stored intent: {f}"
    assert [e.seq for e in final] == list(range(1, len(final) + 1)), "a gap in seq"
    halt = next(e for e in halted if isinstance(e, TradingStateChanged)
                and e.scope is Scope.GLOBAL and e.new is TradingState.HALTED)
    assert halt.seq > committed[-1].seq
    breach = next(e for e in halted if isinstance(e, RiskBreach) and e.check == "store_fault")
    assert breach.seq < halt.seq  # the breach then the state change, first in the buffer
    after = [e for e in halted if e.seq > halt.seq]
    assert not [e for e in after if isinstance(e, OrderIntent)], "an order after the halt"
    denied = [e for e in after if isinstance(e, OrderDenied)]
    assert denied, "no order was even tried while halted (the test proves nothing)"
    resumed = [e for e in final if isinstance(e, TradingStateChanged) and e.seq > halt.seq
               and e.scope is Scope.GLOBAL and e.new is TradingState.ACTIVE]
    assert resumed and resumed[0].operator == "alice"
    assert any(isinstance(e, OrderIntent) and e.seq > resumed[0].seq for e in final)
    ids = [mid for mid, _ in stream]
    assert len(ids) == len(set(ids))
    # in JetStream once, in order, through the resume (events stored during the shutdown
    # after the outbox's last drain are re-sent from the watermark at the next start)
    assert [ev for _, ev in stream] == final[:len(stream)], "JetStream differs from the store"
    assert len(stream) > resumed[0].seq


def _store_page(pages: PageReceiver) -> bool:
    return any(b.get("title", "").startswith("[P1]") and "event store cannot write"
               in b.get("title", "") for b in pages.bodies)


async def _halt_stored(db: Path) -> bool:
    if not db.exists():
        return False
    store = await EventStore.open(db, readonly=True)
    try:
        rows = await store.query(kind="TradingStateChanged", newest_first=True, limit=20)
    finally:
        await store.close()
    return any(isinstance(e, TradingStateChanged) and e.scope is Scope.GLOBAL
               and e.new is TradingState.HALTED for e in rows)


async def _intents_after(db: Path, n: int) -> bool:
    store = await EventStore.open(db, readonly=True)
    try:
        return bool(await store.query(kind="OrderIntent", after_seq=n, limit=1))
    finally:
        await store.close()


@pytest.mark.slow
def _held_by_storage(leader: Leader, agg: Any = all) -> bool:
    """The leader shows the bots HALTED by the store fault (issue 22: why is it halted)."""
    bots = [b for b in leader.status.snapshot().bots if b.bot in ("b1", "b2")]
    return bool(bots) and agg(b.effective_state == "HALTED" and b.causes[0].kind == "storage"
                              and b.causes[0].check == "store_fault" for b in bots)


async def test_file_size_limit_halts_pages_p1_buffers_and_recovers(
    tmp_path: Path, server: EmbeddedNatsServer
) -> None:
    """Unprivileged disk full: RLIMIT_FSIZE = 1 byte on the running agent, so every WAL
    write fails with EFBIG (SQLite: SQLITE_IOERR_WRITE, "disk I/O error"; a short write is
    retried by SQLite and then fails the same way); space returns when the limit is
    lifted."""
    wal = tmp_path / "state" / "events.db-wal"

    def fill_disk(proc: subprocess.Popen[bytes]) -> str:
        size = wal.stat().st_size if wal.exists() else 0
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
        return f"disk full (RLIMIT_FSIZE=1 on a {size} B WAL)"

    def free_space(proc: subprocess.Popen[bytes]) -> None:
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE,
                         (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    msgs = await _run_fault(tmp_path, server, fill_disk, free_space)
    assert "disk I/O error" in msgs[0], msgs


@pytest.mark.slow
async def test_full_tmpfs_halts_pages_p1_buffers_and_recovers(
    tmp_path: Path, server: EmbeddedNatsServer
) -> None:
    """A real full file system (ENOSPC, SQLite: SQLITE_FULL): the state directory is a
    16 MiB tmpfs and the test fills it with a ballast file; space returns when the ballast
    is deleted. Mounting needs privileges: skipped where the test cannot mount."""
    state = tmp_path / "state"
    state.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "qtd-test", str(state)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    ballast = state / "ballast"

    def fill_disk(proc: subprocess.Popen[bytes]) -> str:
        fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * (1 << 16)):  # unbuffered: ENOSPC ends the loop
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        return f"disk full (tmpfs 16 MiB, ballast {ballast.stat().st_size} B)"

    def free_space(proc: subprocess.Popen[bytes]) -> None:
        ballast.unlink()

    try:
        msgs = await _run_fault(tmp_path, server, fill_disk, free_space)
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)
    assert "full" in msgs[0], msgs


@pytest.mark.slow
async def test_read_only_store_halts_pages_p1_buffers_and_recovers(
    tmp_path: Path, server: EmbeddedNatsServer
) -> None:
    flag = tmp_path / "store-readonly"

    def read_only(proc: subprocess.Popen[bytes]) -> str:
        flag.touch()
        return "read-only (PRAGMA query_only)"

    def writable(proc: subprocess.Popen[bytes]) -> None:
        flag.unlink()

    msgs = await _run_fault(tmp_path, server, read_only, writable,
                            {"QTD_TEST_STORE_READONLY": str(flag)})
    assert "readonly" in msgs[0] or "read-only" in msgs[0], msgs


async def test_store_buffers_in_order_refuses_intents_and_writes_first_on_recovery(
    tmp_path: Path
) -> None:
    """The store side alone (real SQLite, SQLite's own SQLITE_READONLY): while faulted an
    intent is refused, everything else is kept with the seq it will have and is neither
    written nor published; on recovery it is written first, in order, then published."""
    flag = tmp_path / "ro"
    tripped: list[str] = []
    published: list[int] = []

    class Policy:
        def on_fault(self, exc: StoreError, detected_ns: int) -> None:
            tripped.append(str(exc))

        async def on_recover(self, written: int, faulted_s: float) -> None:
            pass

    store = await AgentStore.open_with(
        tmp_path / "events.db", node=NODE, hooks=StoreHooks(
            listener=lambda evs: published.extend(e.seq for e in evs), faults=Policy(),
            probe_s=0.02, readonly_flag=str(flag)))
    faults = store.faults
    assert faults is not None
    try:
        await store.append(factories.intent("c1"))
        flag.touch()
        held = await store.append(factories.accepted("c1"))
        assert faults.faulted and len(tripped) == 1 and "readonly" in tripped[0]
        with pytest.raises(StoreError):
            await store.append(factories.intent("c2", counter=2))
        more = await store.append_many([factories.fill("c1", "t1", qty="4", price="10"),
                                        factories.fill("c1", "t2", qty="6", price="10")])
        await store.set_watermark(1)  # skipped while faulted, no raise
        assert [held.seq, *(e.seq for e in more)] == [2, 3, 4]
        assert store.last_seq == 1 and published == [1]  # nothing written or sent yet
        flag.unlink()
        await wait_for(lambda: not faults.faulted, 5)
        assert published == [1, 2, 3, 4] and store.last_seq == 4
        stored = await store.query()
        assert [type(e).__name__ for e in stored] == ["OrderIntent", "OrderAccepted", "Fill",
                                                      "Fill"]
        assert stored[1:] == [held, *more] and len(tripped) == 1
        after = await store.append(factories.intent("c3", counter=3))  # writes again
        assert after.seq == 5 and published[-1] == 5
    finally:
        await store.close()


def teardown_module() -> None:
    for name, values in FIGURES.items():
        if values:
            print(f"\n[storage faults] {name}: n={len(values)} max={max(values):.3f} "
                  f"min={min(values):.3f}")
