"""A stuck or greedy strategy costs its own worker, never the agent (issue 24, as the
adversary tried it), on real processes: nats-server on the shipped config (auth on), a
``qtd agent`` process with several paper bots on bundled GOOG bars, admission's smoke
backtest on, and the operator's commands (``qtd kill --local``, ``qtd events``) as
subprocesses.

- ``stuck``'s ``on_bar`` runs ``sum(range(3*10**9))`` (one C call holding the GIL for tens of
  seconds) once a marker file exists, so it passes admission. With the marker created while
  the agent runs, and the operator's kill file written as soon as the hook is inside that
  call: the kill is stored while the hook is still running, the other bots trade through
  the stuck period, the stuck bot is HALTED with a ``HookTimeout`` naming the budget and
  the killed worker, and the operator reads why with ``qtd events``. After SIGTERM no
  worker or template process of the agent remains.
- ``hog`` keeps 16 MiB more on each bar once its marker exists: it is HALTED at
  ``[workers] memory_mb`` with a ``StrategyError`` naming that setting while the agent's RSS
  stays flat. After SIGKILL of the agent its template and workers are gone too.

No assert is a wall-clock limit: the ordering facts come from the agent's store; the
measured delays are printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from qtd.bus import ensure_jetstream
from qtd.events import (
    AnyEvent,
    Fill,
    Scope,
    StrategyError,
    TradingState,
    TradingStateChanged,
)
from tests.agent_rig import store_events, wait_for
from tests.shipped import agent_config, log_match, processes, qtd_process, run_qtd, shipped_nats

pytestmark = pytest.mark.slow
NODE = "node-a"
BUDGET_S = 3.0  # hook_budget_s: the stuck period (the kill must land inside it)
MEMORY_MB = 64  # [workers] memory_mb
CHUNK_MB = 16  # what the hog keeps per bar
# Daily GOOG bars at 1,728,000x real time: one bar per 50 ms (150 ms over a weekend).
MARKET = "speed = 1728000.0\nloop = true"

STRATEGIES = {
    "stuck.py": '''
        import os
        import time

        from qtd.strategy import Strategy

        class Stuck(Strategy):
            """Once ``marker`` exists: writes "PID TIME_NS" to ``entered``, then runs one C
            call that holds the GIL for tens of seconds."""

            class Params(Strategy.Params):
                marker: str = ""
                entered: str = ""

            def on_bar(self, bar):
                if os.path.exists(self.params.marker):
                    with open(self.params.entered, "w") as f:
                        f.write(f"{os.getpid()} {time.time_ns()}")
                    sum(range(3 * 10**9))
    ''',
    "hog.py": '''
        import os

        from qtd.strategy import Strategy

        class Hog(Strategy):
            """Once ``marker`` exists: keeps ``chunk_mb`` MiB more (touched) on each bar;
            writes its pid to ``entered`` first."""

            class Params(Strategy.Params):
                marker: str = ""
                entered: str = ""
                chunk_mb: int = 16

            def on_start(self):
                self.kept = []

            def on_bar(self, bar):
                if os.path.exists(self.params.marker):
                    if not self.kept:
                        with open(self.params.entered, "w") as f:
                            f.write(str(os.getpid()))
                    self.kept.append(b"x" * (self.params.chunk_mb * 1024 * 1024))
    ''',
}


def _fleet(root: Path, url: str, bots: dict[str, dict[str, object]]) -> Path:
    """An agent config for ``bots`` (see :func:`tests.shipped.agent_config`) with admission's
    smoke backtest on, a short hook budget, a fast kill-file poll, no restarts, and
    ``[workers] memory_mb``; the strategies above beside the rig's."""
    extra = (f"hook_budget_s = {BUDGET_S}\nkill_poll_s = 0.05\n\n[restart]\nmax_per_hour = 0\n\n"
             f"[workers]\nmemory_mb = {MEMORY_MB}\n")
    cfg = agent_config(root, NODE, url, bots, extra=extra, market=MARKET)
    cfg.write_text(cfg.read_text().replace("admit_smoke = false", "admit_smoke = true"))
    for name, body in STRATEGIES.items():
        (root / "strategies" / name).write_text(textwrap.dedent(body))
    return cfg


# --- processes, from /proc ---------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time in clock ticks) of ``pid``, None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return fields[0], int(fields[1]), int(fields[19])


def _descendants(root: int) -> dict[int, int]:
    """pid → start time of every live descendant of ``root`` (children, grandchildren...)."""
    parent: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None and st[0] not in "ZX":
            parent[int(entry)] = (st[1], st[2])
    found: dict[int, int] = {}
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        for child, (ppid, start) in parent.items():
            if ppid == pid and child not in found:
                found[child] = start
                frontier.append(child)
    return found


def _survivors(family: dict[int, int]) -> list[int]:
    """The processes of ``family`` still running (a zombie has ended; a reused pid with
    another start time is another process)."""
    out = []
    for pid, start in family.items():
        st = _stat(pid)
        if st is not None and st[0] not in "ZX" and st[2] == start:
            out.append(pid)
    return out


def _rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` from ``/proc/PID/status``, KiB (0 once it ended)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


# --- the store ---------------------------------------------------------------------------------


def _errors(events: Sequence[AnyEvent], bot: str) -> list[StrategyError]:
    return [e for e in events if isinstance(e, StrategyError) and e.bot == bot]


async def _halted(db: Path, bot: str) -> bool:
    return bool(_errors(await store_events(db), bot)) if db.exists() else False


async def _fills(db: Path, bots: Sequence[str], after_ns: int = 0) -> dict[str, int]:
    counts = dict.fromkeys(bots, 0)
    for e in await store_events(db) if db.exists() else []:
        if isinstance(e, Fill) and e.bot in counts and e.ts_event > after_ns:
            counts[e.bot] += 1
    return counts


class Running:
    """An agent process of the test and what the test reads of it."""

    def __init__(self, proc: subprocess.Popen[bytes], cfg: Path) -> None:
        self.proc, self.cfg = proc, cfg
        self.db = cfg.parent / "state" / "events.db"

    async def trading(self, bots: Sequence[str]) -> None:
        """Wait until each of ``bots`` has a fill in the store."""
        async def filled() -> bool:
            return min((await _fills(self.db, bots)).values()) > 0
        await wait_for(filled, 60)

    async def halted(self, bot: str) -> StrategyError:
        """Wait for ``bot``'s StrategyError (the hang guard is generous)."""
        await wait_for(lambda: _halted(self.db, bot), BUDGET_S + 30)
        (err,) = _errors(await store_events(self.db), bot)
        return err


@contextlib.asynccontextmanager
async def _agent(tmp: Path, bots: dict[str, dict[str, object]]) -> AsyncIterator[Running]:
    """nats-server on the shipped config and a ready ``qtd agent`` process running
    ``bots``; both stopped on exit."""
    async with shipped_nats(tmp / "nats") as nats:
        # the stream and buckets a leader creates (the agent may not), so it connects at once
        await ensure_jetstream((await nats.connect("leader")).jetstream())
        cfg = _fleet(tmp / NODE, nats.url, bots)
        with processes() as procs:
            log = tmp / "agent.log"
            procs.append(qtd_process(["agent", "--config", str(cfg)], log))
            await log_match(log, rf"agent {NODE} ready: {len(bots)} bots, 0 refused".encode())
            yield Running(procs[-1], cfg)


async def _entered(path: Path, fields: int) -> list[int]:
    """The numbers a strategy wrote to ``path`` once its marker was seen."""
    await wait_for(lambda: path.exists() and len(path.read_text().split()) == fields, 30)
    return [int(x) for x in path.read_text().split()]


async def _kill_local(cfg: Path, reason: str) -> int:
    """``qtd kill --local --config CFG`` (the README's kill with NATS down: the agent's kill
    file); returns the kill file's mtime, UTC ns (when it was written)."""
    out = await asyncio.to_thread(run_qtd, ["kill", "--local", "--config", str(cfg),
                                            "--reason", reason, "--operator", "alice"])
    assert out.returncode == 0, out.stdout + out.stderr
    return (cfg.parent / "kill").stat().st_mtime_ns


async def _stop(agent: subprocess.Popen[bytes], sig: signal.Signals) -> list[int]:
    """Send ``sig`` to the agent and reap it; its descendants (found before) still running
    once it ended (SIGTERM), or once they had 10 s to die with it (SIGKILL)."""
    family = _descendants(agent.pid)
    assert family, "no template or worker found under the agent"
    t0 = time.monotonic()
    agent.send_signal(sig)
    code = await asyncio.to_thread(agent.wait, 30)
    assert code == (0 if sig is signal.SIGTERM else -sig), code
    if sig is signal.SIGKILL:
        with contextlib.suppress(TimeoutError):
            await wait_for(lambda: not _survivors(family), 10)
    print(f"\n{sig.name}: agent and its {len(family)} descendants gone in "
          f"{(time.monotonic() - t0) * 1e3:.1f} ms")
    return _survivors(family)


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.1f} ms"


def _stuck_period(events: Sequence[AnyEvent], bot: str, t0: int, t1: int) -> list[AnyEvent]:
    return [e for e in events if e.bot == bot and t0 < e.ts_event < t1]


async def test_a_stuck_strategy_halts_alone_and_the_kill_lands_while_it_is_stuck(
        tmp_path: Path) -> None:
    marker, entered = tmp_path / "stuck.marker", tmp_path / "stuck.entered"
    async with _agent(tmp_path, {
            "stuck": {"_strategy": "stuck", "marker": str(marker), "entered": str(entered)},
            "flip-a": {}, "flip-b": {}}) as agent:
        await agent.trading(("flip-a", "flip-b"))
        family = _descendants(agent.proc.pid)
        assert len(family) == 4, family  # the template and one worker per bot
        # The adversary's marker: stuck's next on_bar enters sum(range(3*10**9)); the
        # operator's kill is written as soon as the hook is in that call.
        marker.touch()
        worker, t_enter = await _entered(entered, 2)
        assert worker in family
        t_written = await _kill_local(agent.cfg, "stuck bot")
        err = await agent.halted("stuck")
        await wait_for(lambda: not _survivors({worker: family[worker]}), 10)
        t_gone = time.time_ns()
        events = await store_events(agent.db)
        # The operator reads why on the host: `qtd events` on the agent's store.
        why = await asyncio.to_thread(run_qtd, ["events", "--db", str(agent.db), "--bot",
                                                "stuck", "--kind", "StrategyError", "--json"])
        left = await _stop(agent.proc, signal.SIGTERM)

    assert (err.hook, err.error_type) == ("on_bar", "HookTimeout"), err
    assert f"within {BUDGET_S} s (budget); worker pid {worker} killed" in err.message, err
    (bot_halt,) = [e for e in events if isinstance(e, TradingStateChanged)
                   and e.scope is Scope.STRATEGY and e.scope_key == "stuck"]
    assert bot_halt.new is TradingState.HALTED and "HookTimeout" in bot_halt.reason
    (kill,) = [e for e in events if isinstance(e, TradingStateChanged)
               and e.scope is Scope.GLOBAL and e.new is TradingState.HALTED]
    assert (kill.reason, kill.operator) == ("kill switch: stuck bot", "alice")
    # The kill was applied while the hook was still inside sum(range(3*10**9)): after it
    # entered the call and before the runner gave up on it (it never returned).
    assert t_enter < t_written <= kill.ts_event < err.ts_event, (t_enter, t_written, kill, err)
    assert kill.seq < err.seq
    # The other bots traded through the stuck period (fills after the hook entered the call
    # and before the kill), and their orders kept coming after the kill (denied).
    for bot in ("flip-a", "flip-b"):
        theirs = _stuck_period(events, bot, t_enter, err.ts_event)
        assert any(isinstance(e, Fill) and e.ts_event < kill.ts_event for e in theirs), bot
        assert any(e.ts_event > kill.ts_event for e in theirs), bot
        assert _errors(events, bot) == []
    # What the operator read names the hook, the error, the budget and the killed worker.
    assert why.returncode == 0 and why.stdout.count('"kind":"StrategyError"') == 1, why
    for text in ('"hook":"on_bar"', '"error_type":"HookTimeout"', f"within {BUDGET_S} s",
                 f"worker pid {worker} killed"):
        assert text in why.stdout, why.stdout
    assert left == [], f"processes of the stopped agent still running: {left}"

    stamps = sorted(e.ts_event for b in ("flip-a", "flip-b")
                    for e in _stuck_period(events, b, t_enter, err.ts_event))
    print(f"\nkill file written -> GLOBAL HALTED stored: {_ms(kill.ts_event - t_written)}"
          f"\nhook entered the C call -> StrategyError stored: {_ms(err.ts_event - t_enter)}"
          f" (budget {BUDGET_S} s); -> worker {worker} seen gone: {_ms(t_gone - t_enter)}"
          f"\nother bots' events in the stuck period: {len(stamps)}, longest gap "
          f"{_ms(max(b - a for a, b in itertools.pairwise([t_enter, *stamps])))}")


async def test_a_hog_strategy_stops_at_its_memory_limit_and_dies_with_its_agent(
        tmp_path: Path) -> None:
    marker, entered = tmp_path / "hog.marker", tmp_path / "hog.entered"
    async with _agent(tmp_path, {
            "hog": {"_strategy": "hog", "marker": str(marker), "entered": str(entered),
                    "chunk_mb": CHUNK_MB},
            "flip-a": {}, "flip-b": {}}) as agent:
        await agent.trading(("flip-a", "flip-b"))
        base = _rss_kib(agent.proc.pid)
        marker.touch()
        (worker,) = await _entered(entered, 1)
        worker_base = _rss_kib(worker)
        peaks = {agent.proc.pid: base, worker: worker_base}
        sampler = asyncio.create_task(_sample(peaks), name="rss-sampler")
        try:
            err = await agent.halted("hog")
        finally:
            sampler.cancel()
        await wait_for(lambda: _rss_kib(worker) == 0, 10)
        events = await store_events(agent.db)
        left = await _stop(agent.proc, signal.SIGKILL)

    assert err.hook == "on_bar", err
    assert f"workers.memory_mb = {MEMORY_MB} MiB" in err.message, err
    assert [e.bot for e in events if isinstance(e, StrategyError)] == ["hog"]
    # The hog's chunks went to its worker, and the agent's RSS stayed flat.
    grew = peaks[agent.proc.pid] - base
    assert peaks[worker] - worker_base >= CHUNK_MB * 1024, (peaks, worker_base)
    assert grew < MEMORY_MB * 1024 // 4, (grew, base)
    assert left == [], f"processes of the SIGKILLed agent still running: {left}"
    print(f"\nhog halted: {err.error_type}: {err.message}"
          f"\nagent VmRSS {base} KiB, peak +{grew} KiB; hog worker VmRSS {worker_base} KiB, "
          f"peak +{peaks[worker] - worker_base} KiB (limit {MEMORY_MB} MiB)")


async def _sample(peaks: dict[int, int]) -> None:
    """Keep the peak VmRSS of each pid of ``peaks`` (KiB) until cancelled."""
    while True:
        for pid in peaks:
            peaks[pid] = max(peaks[pid], _rss_kib(pid))
        await asyncio.sleep(0.005)
