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
  the killed worker, and the operator reads why with ``qtd events`` and on the leader's
  ``/api/bots``. After SIGTERM no worker or template process of the agent remains.
- ``hog`` keeps 16 MiB more on each bar once its marker exists: it is HALTED at
  ``[workers] memory_mb`` with a ``StrategyError`` naming that setting while the agent's RSS
  stays flat. SIGKILL of the agent while another bot's worker is inside a long C call (it
  never reads its closed link): the template and every worker are gone too.

No assert is a wall-clock limit: the ordering facts come from the agent's store; the
measured delays are printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import textwrap
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

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
from tests.shipped import (
    agent_config,
    leader_config,
    leader_web_url,
    log_match,
    processes,
    qtd_process,
    run_qtd,
    shipped_nats,
)

pytestmark = pytest.mark.slow
NODE = "node-a"
BUDGET_S = 5.0  # hook_budget_s: the stuck period (`qtd kill --local` must run inside it)
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


async def _fills(db: Path, bots: Sequence[str]) -> dict[str, int]:
    counts = dict.fromkeys(bots, 0)
    for e in await store_events(db) if db.exists() else []:
        if isinstance(e, Fill) and e.bot in counts:
            counts[e.bot] += 1
    return counts


class Running:
    """An agent process of the test and what the test reads of it (``web``: the leader's
    status page, "" without a leader)."""

    def __init__(self, proc: subprocess.Popen[bytes], cfg: Path, web: str) -> None:
        self.proc, self.cfg, self.web = proc, cfg, web
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

    async def runner_cause(self, bot: str) -> dict[str, Any]:
        """The leader's ``runner`` cause of ``bot`` (``/api/bots``), once it has one."""
        found: list[dict[str, Any]] = []

        async def seen() -> bool:
            bots = await asyncio.to_thread(_get_json, f"{self.web}/api/bots")
            found[:] = [c for b in bots if b["bot"] == bot for c in b["causes"]
                        if c["kind"] == "runner"]
            return bool(found)
        await wait_for(seen, 30, step_s=0.2)
        return found[0]


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


@contextlib.asynccontextmanager
async def _agent(tmp: Path, bots: dict[str, dict[str, object]], *, leader: bool = False,
                 ) -> AsyncIterator[Running]:
    """nats-server on the shipped config, a leader (its status page) when ``leader``, and a
    ready ``qtd agent`` process running ``bots``; all stopped on exit."""
    async with shipped_nats(tmp / "nats") as nats:
        # the stream and buckets a leader creates (the agent may not), so it connects at once
        await ensure_jetstream((await nats.connect("leader")).jetstream())
        cfg = _fleet(tmp / NODE, nats.url, bots)
        with processes() as procs:
            web = ""
            if leader:
                procs.append(qtd_process(["leader", "--config", str(
                    leader_config(tmp, nats.url))], tmp / "leader.log"))
                web = await leader_web_url(tmp / "leader.log")
            log = tmp / "agent.log"
            procs.append(qtd_process(["agent", "--config", str(cfg)], log))
            ready = await log_match(log, rf"agent {NODE} ready: .*".encode())
            assert f"ready: {len(bots)} bots, 0 refused".encode() in ready[0], \
                log.read_text()[-3000:]
            # once started, each daemon's start-up heap leaves the garbage collector's scans
            for daemon_log in [log, tmp / "leader.log"] if leader else [log]:
                frozen = await log_match(daemon_log, rb"start-up heap frozen: (\d+) objects")
                assert int(frozen[1]) > 10_000, frozen[0]
            yield Running(procs[-1], cfg, web)


async def _entered(path: Path, fields: int) -> list[int]:
    """The numbers a strategy wrote to ``path`` once its marker was seen."""
    await wait_for(lambda: path.exists() and len(path.read_text().split()) == fields, 30)
    return [int(x) for x in path.read_text().split()]


async def _kill_local(cfg: Path, reason: str) -> int:
    """``qtd kill --local --config CFG`` (the README's kill with NATS down: the agent's kill
    file); returns the kill file's mtime, UTC ns: when it was written, by the kernel's
    coarse clock (at most a tick early, so delays measured from it are not flattered)."""
    out = await asyncio.to_thread(run_qtd, ["kill", "--local", "--config", str(cfg),
                                            "--reason", reason, "--operator", "alice"])
    assert out.returncode == 0, out.stdout + out.stderr
    return (cfg.parent / "kill").stat().st_mtime_ns


async def _stop(agent: subprocess.Popen[bytes], sig: signal.Signals) -> list[int]:
    """Send ``sig`` to the agent and reap it; returns its descendants (found before) still
    running once it ended (SIGTERM: it stops them itself), or once they had 10 s to die with
    it (SIGKILL: the kernel ends them). Those are then SIGKILLed here (the test started
    them)."""
    family = _descendants(agent.pid)
    assert family, "no template or worker found under the agent"
    t0 = time.monotonic()
    agent.send_signal(sig)
    code = await asyncio.to_thread(agent.wait, 30)
    assert code == (0 if sig is signal.SIGTERM else -sig), code
    if sig is signal.SIGKILL:
        with contextlib.suppress(TimeoutError):
            await wait_for(lambda: not _survivors(family), 10)
    left = _survivors(family)
    print(f"\n{sig.name}: agent gone, {len(family) - len(left)} of its {len(family)} "
          f"descendants too, in {(time.monotonic() - t0) * 1e3:.1f} ms")
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.1f} ms"


async def test_a_stuck_strategy_halts_alone_and_the_kill_lands_while_it_is_stuck(
        tmp_path: Path) -> None:
    marker, entered = tmp_path / "stuck.marker", tmp_path / "stuck.entered"
    async with _agent(tmp_path, {
            "stuck": {"_strategy": "stuck", "marker": str(marker), "entered": str(entered)},
            "flip-a": {}, "flip-b": {}}, leader=True) as agent:
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
        # The operator reads why: `qtd events` on the agent's store, the leader's API.
        why = await asyncio.to_thread(run_qtd, ["events", "--db", str(agent.db), "--bot",
                                                "stuck", "--kind", "StrategyError", "--json"])
        cause = await agent.runner_cause("stuck")
        events = await store_events(agent.db)
        left = await _stop(agent.proc, signal.SIGTERM)

    assert (err.hook, err.error_type) == ("on_bar", "HookTimeout"), err
    named = f"within {BUDGET_S} s (budget); worker pid {worker} killed"
    assert named in err.message, err
    kill = _kill_before_halt(events, t_enter, t_written, err)
    _others_traded(events, ("flip-a", "flip-b"), t_enter, kill, err)
    # What the operator read names the hook, the error, the budget and the killed worker.
    assert why.returncode == 0 and why.stdout.count('"kind":"StrategyError"') == 1, why
    for text in ('"hook":"on_bar"', '"error_type":"HookTimeout"', named):
        assert text in why.stdout, why.stdout
    assert cause["state"] == "HALTED" and "HookTimeout in on_bar" in cause["reason"], cause
    assert named in cause["reason"], cause
    assert left == [], f"processes of the stopped agent still running: {left}"
    print(f"\nkill file written -> GLOBAL HALTED stored: {_ms(kill.ts_event - t_written)}"
          f" (written {_ms(t_written - t_enter)} after the hook entered the C call)"
          f"\nhook entered the C call -> StrategyError stored: {_ms(err.ts_event - t_enter)}"
          f" (budget {BUDGET_S} s); -> worker {worker} seen gone: {_ms(t_gone - t_enter)}")


def _kill_before_halt(events: Sequence[AnyEvent], t_enter: int, t_written: int,
                      err: StrategyError) -> TradingStateChanged:
    """The kill file's GLOBAL HALTED, checked to be stored while the stuck hook was inside
    sum(range(3*10**9)): after it entered the call, before the runner gave up on it (it
    never returned); and the bot's own HALTED after its error."""
    (kill,) = [e for e in events if isinstance(e, TradingStateChanged)
               and e.scope is Scope.GLOBAL and e.new is TradingState.HALTED]
    assert (kill.reason, kill.operator) == ("kill switch: stuck bot", "alice")
    assert t_enter < t_written < err.ts_event, (
        "the scenario needs the kill written within the budget: `qtd kill --local` took "
        f"{_ms(t_written - t_enter)} (a loaded machine? raise BUDGET_S)")
    assert t_written <= kill.ts_event < err.ts_event, (t_written, kill, err)
    assert kill.seq < err.seq
    (bot_halt,) = [e for e in events if isinstance(e, TradingStateChanged)
                   and e.scope is Scope.STRATEGY and e.scope_key == err.bot]
    assert bot_halt.new is TradingState.HALTED and "HookTimeout" in bot_halt.reason
    assert bot_halt.seq > err.seq
    return kill


def _others_traded(events: Sequence[AnyEvent], bots: Sequence[str], t_enter: int,
                   kill: TradingStateChanged, err: StrategyError) -> None:
    """Each of ``bots`` has fills stored in the stuck period before the kill, and events
    (its denied orders) after it; none of them failed."""
    stamps = []
    for bot in bots:
        theirs = [e for e in events if e.bot == bot and t_enter < e.ts_event < err.ts_event]
        assert any(isinstance(e, Fill) and e.ts_event < kill.ts_event for e in theirs), bot
        assert any(e.ts_event > kill.ts_event for e in theirs), bot
        assert _errors(events, bot) == []
        stamps += [e.ts_event for e in theirs]
    stamps = [t_enter, *sorted(stamps), err.ts_event]
    print(f"\nother bots' events stored in the stuck period: {len(stamps) - 2}, longest gap "
          f"{_ms(max(b - a for a, b in itertools.pairwise(stamps)))} (a bar: 50 ms, "
          f"150 ms over a weekend)")


async def test_a_hog_stops_at_its_memory_limit_and_workers_die_with_a_killed_agent(
        tmp_path: Path) -> None:
    hog, stuck = tmp_path / "hog.marker", tmp_path / "stuck.marker"
    async with _agent(tmp_path, {
            "hog": {"_strategy": "hog", "marker": str(hog), "entered": f"{hog}.pid",
                    "chunk_mb": CHUNK_MB},
            "stuck": {"_strategy": "stuck", "marker": str(stuck), "entered": f"{stuck}.pid"},
            "flip-a": {}}) as agent:
        await agent.trading(("flip-a",))
        base = _rss_kib(agent.proc.pid)
        hog.touch()
        (worker,) = await _entered(Path(f"{hog}.pid"), 1)
        worker_base = _rss_kib(worker)
        peaks = {agent.proc.pid: base, worker: worker_base}
        sampler = asyncio.create_task(_sample(peaks), name="rss-sampler")
        try:
            err = await agent.halted("hog")
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        await wait_for(lambda: _rss_kib(worker) == 0, 10)
        events = await store_events(agent.db)
        # SIGKILL while stuck's worker is inside its C call: it never reads the closed link,
        # only the kernel can end it with its template.
        stuck.touch()
        busy, _ = await _entered(Path(f"{stuck}.pid"), 2)
        family = _descendants(agent.proc.pid)
        left = await _stop(agent.proc, signal.SIGKILL)

    assert err.hook == "on_bar", err
    assert err.message.endswith(f"(workers.memory_mb = {MEMORY_MB} MiB)"), err
    assert [e.bot for e in events if isinstance(e, StrategyError)] == ["hog"]
    # The hog's chunks went to its worker, and the agent's RSS stayed flat.
    grew = peaks[agent.proc.pid] - base
    assert peaks[worker] - worker_base >= CHUNK_MB * 1024, (peaks, worker_base)
    assert grew < MEMORY_MB * 1024 // 4, (grew, base)
    assert busy in family and len(family) == 3, family  # template, stuck's and flip-a's
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
