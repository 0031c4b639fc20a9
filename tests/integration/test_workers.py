"""Strategy workers: the operator's code runs in worker processes; whatever it does — a C
call holding the GIL, unbounded allocation, an exception, a changed file — halts its bot
alone, with the reason, while the caller's event loop runs on."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from qtd.clock import SimClock
from qtd.feeds import Bar
from qtd.orders import OrderRequest
from qtd.proc import child_env
from qtd.runner import BotRunner, BotSpec, BotState
from qtd.workers.link import memory_of
from qtd.workers.load import exec_file, ref_for, strategies_in
from qtd.workers.pool import WorkerPool
from qtd.workers.protocol import StrategyRef, WorkerLimits

BUDGET = 0.3

HEADER = """
from qtd.strategy import Strategy

class S(Strategy):
    class Params(Strategy.Params):
        qty: int = 1
        stuck_at: int = -1
"""

BUYER = HEADER + """
    def on_bar(self, bar):
        self.buy(self.params.qty)
"""
C_CALL = HEADER + """
    n = 0
    def on_bar(self, bar):
        self.n += 1
        if self.n == self.params.stuck_at:
            sum(range(3 * 10**9))  # one C call holding the GIL for tens of seconds
        self.buy(self.params.qty)
"""
LOOPS = HEADER + """
    def on_bar(self, bar):
        while True:
            pass
"""
RAISES = HEADER + """
    def on_bar(self, bar):
        1 / 0
"""
HOG = HEADER + """
    held = []
    def on_bar(self, bar):
        self.held.append(bytearray(16 * 1024 * 1024))
"""


def ref(tmp: Path, name: str, source: str, **params: Any) -> StrategyRef:
    path = tmp / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    raw = path.read_bytes()
    cls = strategies_in(exec_file(path, raw))[0]
    return ref_for(path, raw, cls, msgspec.convert(params, cls.Params))


def bars(n: int, symbol: str = "GOOG") -> list[Bar]:
    return [Bar(symbol, i * 60_000_000_000, 60_000_000_000, Decimal(100), Decimal(101),
                Decimal(99), Decimal(100), Decimal(10)) for i in range(n)]


class Sink:
    def __init__(self) -> None:
        self.requests: list[OrderRequest] = []

    async def submit(self, req: OrderRequest) -> None:
        self.requests.append(req)

    def count(self, bot: str) -> int:
        return sum(1 for r in self.requests if r.bot == bot)


def runner(r: StrategyRef, pool: WorkerPool, sink: Sink, name: str,
           account: str = "a") -> BotRunner:
    spec = BotSpec(name=name, account=account, venue="paper", symbols=("GOOG",))
    return BotRunner(r, None, spec, clock=SimClock(1), submit=sink.submit, workers=pool,
                     hook_budget_s=BUDGET)


async def paced(n: int) -> Any:
    for b in bars(n):
        yield b
        await asyncio.sleep(0.01)


async def wait_for(cond: Any, what: str) -> None:
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("source,error", [(C_CALL, "HookTimeout"), (LOOPS, "HookTimeout"),
                                          (RAISES, "ZeroDivisionError")])
async def test_a_bad_hook_halts_its_bot_alone_while_the_loop_runs_on(
        tmp_path: Path, source: str, error: str) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(BUDGET / 10)

    pool, sink = WorkerPool(), Sink()
    bad = runner(ref(tmp_path, "bad", source, stuck_at=3), pool, sink, "bad")
    good = runner(ref(tmp_path, "good", BUYER), pool, sink, "good")
    tick = asyncio.create_task(ticker())
    try:
        bad_task = asyncio.create_task(bad.run(paced(40)))
        await wait_for(lambda: bad._remote is not None or bad_task.done(), "worker started")
        pid = bad._remote.worker.pid if bad._remote is not None else 0
        states = await asyncio.gather(bad_task, good.run(paced(40)))
        await wait_for(lambda: not pid or gone(pid), f"worker {pid} gone")
    finally:
        tick.cancel()
        await pool.close()
    assert states == [BotState.HALTED, BotState.STOPPED]
    assert bad.error is not None and bad.error.hook == "on_bar"
    assert bad.error.error_type == error, bad.error
    if error == "HookTimeout":
        assert f"did not return within {BUDGET} s (budget); worker pid {pid} killed" in \
            bad.error.message
        assert ticks >= 3  # the loop kept running while the hook was stuck
    else:
        assert "ZeroDivisionError" in bad.error.traceback and "bad.py" in bad.error.traceback
    assert sink.count("good") == 40  # the other bot never missed a bar


async def test_unbounded_allocation_stops_at_the_limit_and_the_caller_stays_flat(
        tmp_path: Path) -> None:
    pool, sink = WorkerPool(WorkerLimits(memory_mb=128)), Sink()
    hog = runner(ref(tmp_path, "hog", HOG), pool, sink, "hog")
    before = memory_of(os.getpid())[1]
    try:
        assert await hog.run(bars(100)) is BotState.HALTED
    finally:
        await pool.close()
    assert hog.error is not None
    assert hog.error.error_type in ("MemoryLimit", "WorkerGone"), hog.error
    assert "workers.memory_mb = 128 MiB" in hog.error.message, hog.error
    assert memory_of(os.getpid())[1] - before < 64 * 1024 * 1024  # the hog's 128+ MiB was not ours


async def test_a_file_changed_after_admission_is_refused_by_the_worker(tmp_path: Path) -> None:
    r = ref(tmp_path, "b", BUYER)
    Path(r.file).write_text(BUYER + "\n# edited after admission\n")
    pool, sink = WorkerPool(), Sink()
    bot = runner(r, pool, sink, "b")
    try:
        assert await bot.run(bars(3)) is BotState.HALTED
    finally:
        await pool.close()
    assert bot.error is not None and bot.error.hook == "import"
    assert "changed since admission" in bot.error.message and "admit it again" in \
        bot.error.message
    assert sink.requests == []


async def test_bots_grouped_by_account_share_a_worker_and_its_fate(tmp_path: Path) -> None:
    pool, sink = WorkerPool(WorkerLimits(group="account")), Sink()
    bad = runner(ref(tmp_path, "bad", C_CALL, stuck_at=5), pool, sink, "bad")
    good = runner(ref(tmp_path, "good", BUYER), pool, sink, "good")
    other = runner(ref(tmp_path, "other", BUYER), pool, sink, "other", account="b")
    try:
        states = await asyncio.gather(bad.run(paced(30)), good.run(paced(30)),
                                      other.run(paced(30)))
    finally:
        await pool.close()
    assert states == [BotState.HALTED, BotState.HALTED, BotState.STOPPED]
    assert good.error is not None and good.error.error_type == "WorkerGone"
    assert "worker of 'account:a'" in good.error.message and "bad: on_bar" in \
        good.error.message
    assert sink.count("other") == 30


async def test_params_swap_reaches_the_strategy_in_its_worker(tmp_path: Path) -> None:
    r = ref(tmp_path, "b", BUYER, qty=1)
    pool, sink = WorkerPool(), Sink()
    bot = runner(r, pool, sink, "b")
    try:
        assert await bot.start()
        for i, b in enumerate(bars(6)):
            if i == 3:
                bot.swap_params({**r.params, "qty": 5}, "h2")
            await bot.handle(b)
        assert await bot.finish() is BotState.STOPPED
    finally:
        await pool.close()
    assert [q.qty for q in sink.requests] == [1, 1, 1, 5, 5, 5]
    assert bot.ctx.inflight["GOOG"] == 18  # the agent's context follows the worker's orders


async def test_a_bad_params_swap_halts_the_bot_with_the_field(tmp_path: Path) -> None:
    r = ref(tmp_path, "b", BUYER)
    pool, sink = WorkerPool(), Sink()
    bot = runner(r, pool, sink, "b")
    try:
        assert await bot.start()
        bot.swap_params({**r.params, "qty": "many"}, "h2")
        await bot.handle(bars(1)[0])
    finally:
        await pool.close()
    assert bot.state is BotState.HALTED and bot.error is not None
    assert bot.error.hook == "params" and "qty" in bot.error.message


CHILD = """
import asyncio, sys
from qtd.clock import SimClock
from qtd.runner import BotRunner, BotSpec
from qtd.workers.pool import WorkerPool
from qtd.workers.protocol import StrategyRef
import msgspec

async def main():
    pool = WorkerPool()
    ref = msgspec.json.decode(sys.argv[1].encode(), type=StrategyRef)
    async def submit(req):
        return None
    r = BotRunner(ref, None, BotSpec(name="b", account="a", venue="paper", symbols=("GOOG",)),
                  clock=SimClock(1), submit=submit, workers=pool)
    assert await r.start()
    print(r._remote.worker.pid, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_workers_die_with_the_process_that_owns_them(tmp_path: Path) -> None:
    r = ref(tmp_path, "b", BUYER)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, msgspec.json.encode(r).decode()],
                            stdout=subprocess.PIPE, env=child_env(), text=True)
    try:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline())
        assert not gone(pid)
        proc.send_signal(signal.SIGKILL)  # no cleanup code runs in the owner
        proc.wait()
        await wait_for(lambda: gone(pid), f"worker {pid} gone after its owner was killed")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def test_a_restarted_runner_of_the_same_bot_keeps_its_worker_state(
        tmp_path: Path) -> None:
    """A deploy restart starts the new runner before the old one has detached: in a shared
    worker they are two attachments, and the old one leaving never stops the new one."""
    pool, sink = WorkerPool(WorkerLimits(group="account")), Sink()
    old = runner(ref(tmp_path, "v1", BUYER, qty=1), pool, sink, "b")
    new = runner(ref(tmp_path, "v2", BUYER, qty=2), pool, sink, "b")
    try:
        assert await old.start() and await new.start()
        assert old._remote is not None and new._remote is not None
        assert old._remote.worker is new._remote.worker  # one worker for account "a"
        assert await old.finish() is BotState.STOPPED
        for b in bars(3):
            await new.handle(b)
        assert await new.finish() is BotState.STOPPED
    finally:
        await pool.close()
    assert [q.qty for q in sink.requests] == [2, 2, 2]


async def test_workers_run_below_the_agents_cpu_priority_and_report_memory(
        tmp_path: Path) -> None:
    pool, sink = WorkerPool(WorkerLimits(nice=7)), Sink()
    bot = runner(ref(tmp_path, "b", BUYER), pool, sink, "b")
    try:
        assert await bot.start()
        (info,) = pool.workers()
        stat = Path(f"/proc/{info.pid}/stat").read_text().rsplit(")", 1)[1].split()
        assert int(stat[16]) == os.nice(0) + 7  # field 19 of proc(5): nice
        assert info.bots == ("b",) and 0 < info.unique_bytes < info.rss_bytes
        assert await bot.finish() is BotState.STOPPED
        assert pool.workers() == []  # its last bot gone, the worker is stopped
    finally:
        await pool.close()


ENVY = HEADER + """
    def on_bar(self, bar):
        import os
        self.buy(99 if os.environ.get("QTD_TEST_BROKER_SECRET") else 1)
"""
SNOOPS = HEADER + """
    def on_bar(self, bar):
        try:
            open(self.params_path(), "rb").read(16)  # the agent's store
        except PermissionError:
            pass  # caught: refused all the same
        self.buy(1)

    def params_path(self):
        return __import__("pathlib").Path(__file__).parent / "state" / "events.db"
"""
DIALS = HEADER + """
    def on_bar(self, bar):
        import socket
        socket.create_connection(("127.0.0.1", 9), timeout=1)
"""


async def test_a_worker_cannot_open_the_agents_store_or_read_its_secrets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QTD_TEST_BROKER_SECRET", "s3cret")  # as credentials_env would be
    (tmp_path / "state").mkdir()
    store = tmp_path / "state" / "events.db"
    store.write_bytes(b"SQLite format 3\x00")
    pool, sink = WorkerPool(protected=[str(store)]), Sink()
    bot = runner(ref(tmp_path, "snoop", SNOOPS), pool, sink, "snoop")
    envy = runner(ref(tmp_path, "envy", ENVY), pool, sink, "envy")
    try:
        states = await asyncio.gather(bot.run(bars(3)), envy.run(bars(3)))
    finally:
        await pool.close()
    assert states == [BotState.HALTED, BotState.STOPPED]
    assert sink.count("snoop") == 0  # halted before its orders were sent
    assert [q.qty for q in sink.requests] == [1, 1, 1]  # the agent's env never reached it
    assert bot.error is not None and bot.error.error_type == "SandboxRefusal", bot.error
    assert "may not open the agent's own files" in bot.error.message
    assert str(store) in bot.error.message and "snoop.py:" in bot.error.message


async def test_a_worker_has_no_network(tmp_path: Path) -> None:
    pool, sink = WorkerPool(), Sink()
    bot = runner(ref(tmp_path, "dial", DIALS), pool, sink, "dial")
    try:
        assert await bot.run(bars(2)) is BotState.HALTED
    finally:
        await pool.close()
    assert bot.error is not None and bot.error.hook == "on_bar"
    assert "may not use the network" in bot.error.message or \
        bot.error.error_type == "PermissionError", bot.error


async def test_kill_requests_in_one_read_are_each_handled_by_the_template(
        tmp_path: Path) -> None:
    """Bots overrunning on the same bar send their kills to the template together: one read
    holds several requests, or part of one. The template once died on that, and every
    worker with it."""
    pool, sink = WorkerPool(), Sink()
    stuck = [runner(ref(tmp_path, f"s{i}", BUYER), pool, sink, f"s{i}") for i in range(2)]
    good = runner(ref(tmp_path, "good", BUYER), pool, sink, "good")
    try:
        for r in [*stuck, good]:
            assert await r.start()
        pids = [r._remote.worker.pid for r in stuck if r._remote is not None]
        kills = b"".join(b'{"kill": %d, "sig": %d}\n' % (p, signal.SIGKILL) for p in pids)
        assert pool.template._sock is not None
        pool.template._sock.sendall(kills + b'{"kill": 1')  # two requests and half a third
        await wait_for(lambda: all(gone(p) for p in pids), "both workers killed")
        pool.template._sock.sendall(b', "sig": 0}\n')  # its end (not a worker: ignored)
        for b in bars(3):
            await good.handle(b)
        late = runner(ref(tmp_path, "late", BUYER), pool, sink, "late")
        assert await late.start()  # the template still forks workers
        assert await late.finish() is BotState.STOPPED
        assert await good.finish() is BotState.STOPPED
    finally:
        await pool.close()
    assert sink.count("good") == 3 and good.error is None
