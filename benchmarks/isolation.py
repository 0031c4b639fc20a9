"""Bots in worker processes (issue 24): what a stuck or greedy strategy costs everything else.

Real worker processes throughout: :class:`~qtd.workers.pool.WorkerPool` (fork-server
template, one worker per bot unless said otherwise) and :class:`~qtd.runner.BotRunner` given
a :class:`~qtd.workers.protocol.StrategyRef` to strategy files written to a temporary
directory. References run the same bots inline (``BotRunner`` given the class) in the same
run. Figures:

1. **Local kill with one bot stuck in a C call.** N other bots (``--bots``, default 8) get a
   bar every ``--bar-ms`` (20) on a fixed schedule from their own task (``runner.handle``;
   a late bar is handed at once, as from a socket) while one bot's worker is
   inside ``sum(range(3*10**9))`` (one C call holding its GIL, ~40 s here). A helper thread
   delivers ``--kills`` kills at random times with ``loop.call_soon_threadsafe`` (as a kill
   file poll or a NATS message reaches the event loop). Each kill runs
   :meth:`qtd.execution.OrderRouter.kill` — what ``Control.apply_file_kill`` and
   ``Control.apply_kill`` call — on a real RiskEngine, EventStore (under /dev/shm) and
   PaperBroker, then resumes. Timed: from the delivery (the thread's ``perf_counter_ns``
   just before ``call_soon_threadsafe``) to HALTED in force (``RiskEngine.halt`` returned:
   the router's ``KillReport.halted_ns`` after its start). Also shown: from the kill's due
   time (the thread's schedule), which includes the thread's own wake-up. The stuck bot's
   hook budget is raised to outlast the kill window so its C call runs throughout (a core
   busy; figure 3 uses the default budget). Reference, same run: the same scenario inline,
   where the C call runs on the event loop thread; it is capped at ``--inline-stall-s``
   (default 3 s: one ``sum(range(n))`` call, n calibrated here) instead of ~40 s, and timed
   from the due time (the thread cannot even run while the C call holds the GIL).
   Floor, same windows: a no-op callback delivered the same way halfway between kills (how
   soon this process's loop runs anything a thread hands it, under the current load).
2. **The other bots' bar → order request** (``runner.handle`` called → the ``OrderRequest``
   reaches the ``submit`` callable), p99, with and without the stuck bot, alternating
   ``--rounds`` times in the same run; target ratio ≤ 1.2. Also from each bar's due time
   (queueing included). Floor: a bare round trip of the same ``Call`` frame to an echo
   child process on asyncio streams, on the bots' schedule (no qtd code), same windows.
3. **The stuck bot itself** (default budget ``--budget`` 0.5 s), ``--stuck-reps`` times while
   the others run: from its ``handle`` call (the hook starts within the transport time after
   it) to its ``TradingStateChanged`` HALTED reaching ``emit``, and to its worker pid gone
   (``os.kill(pid, 0)`` raises ``ProcessLookupError``; polled every 0.5 ms by a thread);
   target ≤ budget + 100 ms.
4. **Unbounded allocation:** a bot appending 5 MiB every 100 ms (50 MiB/s, pages written)
   with ``workers.memory_mb = --memory-mb`` (256): how it is stopped (the StrategyError), and
   this process's RSS before/after (target: flat, < 32 MiB growth).
5. **Transport per bar:** a strategy ordering on every bar, ``--bars`` bars one at a time,
   worker and inline bots interleaved bar by bar; bar in → order request out p50/p99;
   target worker p99 ≤ 100 µs. Floors, interleaved too: the bare round trip of the same
   frame to an echo child, on asyncio streams and with blocking ``send``/``recv``.
6. **Memory:** 50 bots (``--fleet``), one worker each, 20 bars each: unique memory (USS) per
   worker (:meth:`WorkerPool.workers`), min/median/max and total; this process's and the
   template's RSS/USS (this process stands for the agent: it also holds the benchmark and
   the inline references); then ``group = "account"`` with the bots on 5 accounts.

The machine is shared: load average and core count are printed, and the floors show what
it allowed in the same run. About 40 s with the defaults on 2 cores. Exits 1 if a target
is missed.

    python benchmarks/isolation.py [--bots 8] [--kills 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.isolation_parts import (  # noqa: E402
    BUYER,
    HOG,
    MIB,
    STUCK,
    Echo,
    KillRig,
    KillThread,
    Paced,
    Report,
    Stamps,
    Strategies,
    bar,
    call_frame,
    children_running,
    kill_offsets,
    poll_gone,
    runner,
    summary,
)
from qtd.runner import BotState  # noqa: E402
from qtd.workers.forker import TEMPLATE_MODULE  # noqa: E402
from qtd.workers.link import memory_of  # noqa: E402
from qtd.workers.pool import WorkerPool  # noqa: E402
from qtd.workers.protocol import WorkerLimits  # noqa: E402

Figures = dict[str, Any]


# --- 1-3: kills and the other bots' latency with a stuck bot --------------------------------


async def kill_window(rig: KillRig, paced: Paced, kills: int, window_s: float) -> None:
    """Deliver ``kills`` kills over ``window_s`` and wait for all of them to be in force."""
    kt = KillThread(asyncio.get_running_loop(), rig, kill_offsets(kills, window_s))
    paced.take()
    rig.take()
    kt.go()
    await kt.joined()


async def stuck_window(pool: WorkerPool, st: Strategies, rig: KillRig, paced: Paced,
                       kills: int, window_s: float, n: int) -> None:
    """A kill window with one bot stuck in its worker's C call throughout (its budget
    outlasts the window; it is killed for overrunning it right after)."""
    name = f"stuck{n}"
    r = runner(st.ref(name, STUCK, stuck_at=1), None, name, paced.stamps, pool,
               budget=window_s + 1.0)
    assert await r.start()
    hook = asyncio.create_task(r.handle(bar(0)))
    await asyncio.sleep(0.05)  # the worker is in the C call
    await kill_window(rig, paced, kills, window_s)
    await hook
    assert r.state is BotState.HALTED and r.error is not None, r.error
    await r.finish()


async def stuck_rep(pool: WorkerPool, st: Strategies, stamps: Stamps, budget: float, n: int
                    ) -> tuple[int, int, str]:
    """One stuck bot at ``budget``: (ns to HALTED, ns to its worker pid gone, its error),
    from its ``handle`` call."""
    name = f"rep{n}"
    r = runner(st.ref(name, STUCK, stuck_at=1), None, name, stamps, pool, budget=budget)
    assert await r.start()
    pid = next(w.pid for w in pool.workers() if name in w.bots)
    gone: list[int] = []
    t0 = time.perf_counter_ns()
    th = threading.Thread(target=poll_gone, args=(pid, gone, budget + 10.0), daemon=True)
    th.start()
    await r.handle(bar(0))
    while th.is_alive():
        await asyncio.sleep(0.01)
    await r.finish()
    assert r.error is not None and name in stamps.halted and gone, (r.error, gone)
    err = f"{r.error.error_type} in {r.error.hook}: {r.error.message}"
    return stamps.halted[name] - t0, gone[0] - t0, err


async def in_workers(st: Strategies, stamps: Stamps, rig: KillRig, args: argparse.Namespace
                     ) -> Figures:
    """Figures 1-3 in workers: ``--rounds`` pairs of kill windows (no stuck bot, then a
    stuck bot), then ``--stuck-reps`` stuck bots at the default budget."""
    pool, echo = WorkerPool(), await Echo.start()
    names = [f"bot{i}" for i in range(args.bots)]
    paced = Paced([runner(st.ref(n, BUYER), None, n, stamps, pool) for n in names], stamps,
                  args.bar_ms / 1e3, echo, call_frame())
    out: Figures = defaultdict(list)
    per, window = max(1, args.kills // args.rounds), args.kill_window_s / args.rounds
    try:
        await paced.start()
        await asyncio.sleep(0.5)  # warm
        for n in range(args.rounds):
            for stuck in (False, True):
                key = "stuck" if stuck else "base"
                if stuck:
                    await stuck_window(pool, st, rig, paced, per, window, n)
                else:
                    await kill_window(rig, paced, per, window)
                handed, due, echoes = paced.take()
                out[f"bar_{key}"] += handed
                out[f"bar_{key}_due"] += due
                out[f"echo_{key}"] += echoes
                sent, due, probes = rig.take()
                out[f"kill_{key}_sent"] += sent
                out[f"kill_{key}_due"] += due
                out[f"probe_{key}"] += probes
        for n in range(args.stuck_reps):
            halted, gone, out["stuck_error"] = await stuck_rep(pool, st, stamps, args.budget, n)
            out["stuck_halted"].append(halted)
            out["stuck_gone"].append(gone)
        states = await paced.stop()
        assert all(s is BotState.STOPPED for s in states), states
    finally:
        await pool.close()
        await echo.close()
    return out


def calibrate(stall_s: float) -> int:
    """A ``sum(range(n))`` count that runs about ``stall_s`` seconds here."""
    t = time.perf_counter()
    sum(range(10**7))
    return int(stall_s / (time.perf_counter() - t) * 10**7)


async def inline_reference(st: Strategies, stamps: Stamps, rig: KillRig,
                           args: argparse.Namespace) -> Figures:
    """Figure 1's reference: the same bots inline; the stuck one's C call (capped at
    ``--inline-stall-s``) runs on the event loop thread."""
    runners = []
    for i in range(args.bots):
        cls, p, _ = st.load(f"ibot{i}", BUYER)
        runners.append(runner(cls, p, f"ibot{i}", stamps, None))
    paced = Paced(runners, stamps, args.bar_ms / 1e3)
    cls, p, _ = st.load("istuck", STUCK, stuck_at=1, count=calibrate(args.inline_stall_s))
    stuck = runner(cls, p, "istuck", stamps, None, budget=args.budget)
    await paced.start()
    assert await stuck.start()
    await asyncio.sleep(0.5)
    kt = KillThread(asyncio.get_running_loop(), rig,
                    kill_offsets(args.inline_kills, args.inline_stall_s))
    paced.take()
    rig.take()
    t0 = time.perf_counter_ns()
    kt.go()
    await stuck.handle(bar(0))  # the loop is blocked for the whole C call
    stall = time.perf_counter_ns() - t0
    await kt.joined()
    await asyncio.sleep(0.5)  # the bars that waited reach their orders
    bars, bars_due, _ = paced.take()
    sent, due, _ = rig.take()
    await paced.stop()
    await stuck.finish()
    err = stuck.error  # inline, the watchdog cannot run while the C call holds the GIL
    return {"kill_sent": sent, "kill_due": due, "bar_stuck": bars, "bar_stuck_due": bars_due,
            "stall_ns": stall,
            "stuck_error": f"{err.error_type}: {err.message}" if err else "not halted"}


# --- 4-6: memory, transport ------------------------------------------------------------------


async def memory_hog(st: Strategies, args: argparse.Namespace) -> Figures:
    """Figure 4: 5 MiB appended per bar, a bar every 100 ms (50 MiB/s)."""
    pool, stamps = WorkerPool(WorkerLimits(memory_mb=args.memory_mb)), Stamps()
    r = runner(st.ref("hog", HOG, chunk_mb=5), None, "hog", stamps, pool)
    try:
        assert await r.start()
        before = memory_of(os.getpid())[1]
        peak, worker_peak, i = before, 0, 0
        t0 = time.perf_counter()
        while r.state is BotState.RUNNING and i < 10 * args.memory_mb:
            await r.handle(bar(i))
            i += 1
            peak = max(peak, memory_of(os.getpid())[1])
            worker_peak = max([worker_peak, *(w.rss_bytes for w in pool.workers())])
            await asyncio.sleep(0.1)
        stopped_s = time.perf_counter() - t0
        await r.finish()
    finally:
        await pool.close()
    after = memory_of(os.getpid())[1]
    err = r.error
    return {"state": r.state.value, "bars": i, "stopped_s": stopped_s,
            "error_type": err.error_type if err else "", "error": err.message if err else "",
            "rss_before": before, "rss_after": after, "rss_peak": peak,
            "worker_rss_peak": worker_peak}


async def transport(st: Strategies, args: argparse.Namespace) -> Figures:
    """Figure 5: one bot in a worker, one inline, the same strategy, and the bare round trips
    of the same Call frame, interleaved bar by bar."""
    pool, stamps, echo = WorkerPool(), Stamps(), await Echo.start()
    cls, p, ref = st.load("trivial", BUYER)
    w = runner(ref, None, "worker", stamps, pool)
    i = runner(cls, p, "inline", stamps, None)
    msg = call_frame()
    out: Figures = defaultdict(list)
    try:
        assert await w.start() and await i.start()
        for k in range(args.bars + args.warmup):
            if k == args.warmup:
                stamps.take(["worker", "inline"])  # warm-up
                out.clear()
            for r in ((w, i) if k % 2 else (i, w)):
                stamps.bar(r.name)
                await r.handle(bar(k))
            out["blocking"].append(echo.blocking(msg))
            out["streamed"].append(await echo.streamed(msg))
        out["worker"], out["inline"] = stamps.take(["worker"])[0], stamps.take(["inline"])[0]
        await w.finish()
        await i.finish()
    finally:
        await pool.close()
        await echo.close()
    out["frame_bytes"] = len(msg)
    return out


async def fleet(st: Strategies, n: int, group: str, accounts: int) -> Figures:
    """Figure 6: ``n`` bots in workers (grouped by ``group``), 20 bars each."""
    pool, stamps = WorkerPool(WorkerLimits(group=group)), Stamps()
    runners = [runner(st.ref(f"f{k}", BUYER), None, f"f{k}", stamps, pool,
                      account=f"acct{k % accounts}") for k in range(n)]
    try:
        assert all(await asyncio.gather(*(r.start() for r in runners)))
        for k in range(20):
            await asyncio.gather(*(r.handle(bar(k)) for r in runners))
        workers = pool.workers()
        templates = children_running(TEMPLATE_MODULE)
        assert len(templates) == 1, f"worker templates found: {templates}"
        tmpl = memory_of(templates[0])
        me = memory_of(os.getpid())
        for r in runners:
            await r.finish()
    finally:
        await pool.close()
    uss = [w.unique_bytes for w in workers]
    return {"group": group, "bots": n, "workers": len(workers), "uss": uss,
            "rss": [w.rss_bytes for w in workers], "template_uss": tmpl[0],
            "template_rss": tmpl[1], "agent_uss": me[0], "agent_rss": me[1]}


# --- the report ------------------------------------------------------------------------------


def spread(xs: list[int], unit: str, scale: float) -> str:
    s = summary(xs, scale)
    return f"p50 {s['p50']:.3g} / p99 {s['p99']:.3g} / max {s['max']:.3g} {unit} (n={s['n']})"


def kill_rows(rep: Report, w: Figures, ref: Figures, args: argparse.Namespace) -> None:
    ms = 1e6
    p99 = summary(w["kill_stuck_sent"])["p99"]
    rep.row("1 local kill, stuck bot in a worker (delivery -> HALTED)",
            spread(w["kill_stuck_sent"], "ms", ms), "target p99 <= 1 ms", p99 <= 1e6)
    rep.row("  same, from the kill's due time", spread(w["kill_stuck_due"], "ms", ms),
            f"inline reference {spread(ref['kill_due'], 's', 1e9)}, its C call capped at "
            f"{ref['stall_ns'] / 1e9:.2f} s (42 s in the issue)")
    rep.row("  same, no stuck bot (delivery -> HALTED)", spread(w["kill_base_sent"], "ms", ms),
            "same run, alternating windows")
    rep.row("  floor: no-op callback, stuck bot", spread(w["probe_stuck"], "ms", ms),
            f"no stuck bot: {spread(w['probe_base'], 'ms', ms)}")
    rep.note(f"1: inline, delivery -> HALTED reads {spread(ref['kill_sent'], 'ms', ms)}: the "
             "delivering thread itself waits for the GIL until the C call returns, so only "
             "the due time measures the inline kill")
    base, stuck = summary(w["bar_base"]), summary(w["bar_stuck"])
    ratio = stuck["p99"] / base["p99"]
    rep.row(f"2 other {args.bots} bots' bar -> order p99, stuck / no stuck",
            f"{stuck['p99'] / ms:.3f} / {base['p99'] / ms:.3f} ms = {ratio:.2f}x "
            f"(p50 {stuck['p50'] / ms:.3f} / {base['p50'] / ms:.3f} ms)",
            "target <= 1.2x", ratio <= 1.2)
    base, stuck = summary(w["echo_base"]), summary(w["echo_stuck"])
    rep.row("  floor: bare echo round trip p99, stuck / no stuck",
            f"{stuck['p99'] / ms:.3f} / {base['p99'] / ms:.3f} ms = "
            f"{stuck['p99'] / base['p99']:.2f}x", "same schedule, no qtd code")
    base, stuck = summary(w["bar_base_due"]), summary(w["bar_stuck_due"])
    inline = summary(ref["bar_stuck_due"])
    rep.row("  same, from the bar's due time",
            f"{stuck['p99'] / ms:.3f} / {base['p99'] / ms:.3f} ms = "
            f"{stuck['p99'] / base['p99']:.2f}x",
            f"inline with the stuck bot: p99 {inline['p99'] / 1e9:.2f} s, max "
            f"{inline['max'] / 1e9:.2f} s")
    limit = (args.budget + 0.1) * 1e9
    rep.row("3 stuck bot: hook call -> bot HALTED", spread(w["stuck_halted"], "ms", ms),
            f"target max <= budget + 100 ms = {limit / ms:.0f} ms",
            max(w["stuck_halted"]) <= limit)
    rep.row("  hook call -> worker pid gone", spread(w["stuck_gone"], "ms", ms),
            f"target max <= {limit / ms:.0f} ms", max(w["stuck_gone"]) <= limit)
    rep.note(f"3: the stuck bot's StrategyError: {w['stuck_error']}")
    rep.note(f"1: the inline stuck bot: {ref['stuck_error']}")
    rep.data["kills"] = {k: summary(v) if isinstance(v, list) else v for k, v in w.items()}
    rep.data["inline_reference"] = {k: summary(v) if isinstance(v, list) else v
                                    for k, v in ref.items()}


def memory_rows(rep: Report, m: Figures, args: argparse.Namespace) -> None:
    stopped = m["state"] == "HALTED" and m["error_type"] in ("MemoryLimit", "WorkerGone")
    rep.row(f"4 50 MiB/s allocator, memory_mb={args.memory_mb}: stopped",
            f"{m['state']} after {m['stopped_s']:.1f} s, {5 * (m['bars'] - 1)} MiB held, "
            f"worker RSS peak {m['worker_rss_peak'] / MIB:.0f} MiB",
            "target: stopped at its limit", stopped)
    rep.note(f"4: StrategyError {m['error_type']}: {m['error']}")
    grew = m["rss_after"] - m["rss_before"]
    rep.row("  this process's RSS before / peak / after",
            f"{m['rss_before'] / MIB:.1f} / {m['rss_peak'] / MIB:.1f} / "
            f"{m['rss_after'] / MIB:.1f} MiB", "target: flat (< 32 MiB growth)",
            max(grew, m["rss_peak"] - m["rss_before"]) < 32 * MIB)
    rep.data["memory"] = m


def transport_rows(rep: Report, t: Figures) -> None:
    w, i = summary(t["worker"], 1e3), summary(t["inline"], 1e3)
    rep.row("5 bar -> order request, strategy in a worker",
            spread(t["worker"], "us", 1e3), "target p99 <= 100 us", w["p99"] <= 100)
    rep.row("  same strategy inline (reference)", spread(t["inline"], "us", 1e3),
            f"worker - inline: +{w['p50'] - i['p50']:.0f} us p50, +{w['p99'] - i['p99']:.0f} "
            "us p99")
    rep.row(f"  bare round trip, {t['frame_bytes']} B frame, asyncio streams",
            spread(t["streamed"], "us", 1e3), "floor: echo child, no msgspec, no runner")
    rep.row("  bare round trip, blocking send/recv", spread(t["blocking"], "us", 1e3),
            "floor: kernel + scheduler only")
    rep.data["transport"] = {k: summary(v, 1e3) if isinstance(v, list) else v
                             for k, v in t.items()}


def fleet_rows(rep: Report, f: Figures) -> None:
    uss = f["uss"]
    label = f"{f['bots']} bots, group={f['group']}: {f['workers']} workers"
    rep.row(f"6 {label}: USS per worker",
            f"min {min(uss) / MIB:.2f} / median {statistics.median(uss) / MIB:.2f} / "
            f"max {max(uss) / MIB:.2f} MiB; total {sum(uss) / MIB:.1f} MiB",
            f"RSS per worker median {statistics.median(f['rss']) / MIB:.1f} MiB "
            "(shared template pages included)")
    rep.row("  agent (this process) / template USS, RSS",
            f"{f['agent_uss'] / MIB:.1f} / {f['template_uss'] / MIB:.1f} MiB USS; "
            f"{f['agent_rss'] / MIB:.1f} / {f['template_rss'] / MIB:.1f} MiB RSS",
            f"total unique: {(sum(uss) + f['agent_uss'] + f['template_uss']) / MIB:.1f} MiB; "
            f"unforked: ~{f['workers']} x {f['template_rss'] / MIB:.0f} MiB = "
            f"{f['workers'] * f['template_rss'] / MIB:.0f} MiB")
    rep.data[f"fleet_{f['group']}"] = {**f, "uss_mib": summary(uss, MIB)}


async def run(args: argparse.Namespace, parts: set[str]) -> Report:
    rep = Report()
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory(dir=shm) as db:
        st = Strategies(Path(tmp))
        if "kills" in parts:
            rig, stamps = await KillRig.open(Path(db)), Stamps()
            try:
                w = await in_workers(st, stamps, rig, args)
                ref = await inline_reference(st, stamps, rig, args)
            finally:
                await rig.close()
            kill_rows(rep, w, ref, args)
        if "memory" in parts:
            memory_rows(rep, await memory_hog(st, args), args)
        if "transport" in parts:
            transport_rows(rep, await transport(st, args))
        if "fleet" in parts:
            fleet_rows(rep, await fleet(st, args.fleet, "bot", args.fleet))
            if args.accounts:
                fleet_rows(rep, await fleet(st, args.fleet, "account", args.accounts))
    return rep


PARTS = ("kills", "memory", "transport", "fleet")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = ap.add_argument
    add("--bots", type=int, default=8, help="other bots on paced bars (default 8)")
    add("--bar-ms", type=float, default=20.0, help="bar interval per bot, ms (default 20)")
    add("--kills", type=int, default=200, help="kills with/without the stuck bot (200 each)")
    add("--kill-window-s", type=float, default=8.0,
        help="seconds the kills are spread over, each way (default 8)")
    add("--rounds", type=int, default=2,
        help="alternations of no-stuck / stuck windows (default 2)")
    add("--stuck-reps", type=int, default=5, help="stuck bots at the default budget (5)")
    add("--budget", type=float, default=0.5, help="hook budget, s (default 0.5)")
    add("--inline-stall-s", type=float, default=3.0,
        help="the inline reference's C call, s (default 3; ~40 s uncapped)")
    add("--inline-kills", type=int, default=50, help="kills in the inline reference (50)")
    add("--memory-mb", type=int, default=256, help="workers.memory_mb for figure 4 (256)")
    add("--bars", type=int, default=5000, help="bars per bot for figure 5 (default 5000)")
    add("--warmup", type=int, default=200, help="bars not counted in figure 5 (200)")
    add("--fleet", type=int, default=50, help="bots for figure 6 (default 50)")
    add("--accounts", type=int, default=5,
        help="accounts for figure 6's group=account run (default 5; 0 skips it)")
    add("--only", default=",".join(PARTS), help=f"parts to run (default {','.join(PARTS)})")
    add("--json", metavar="PATH", help="also write the figures as JSON to PATH ('-': stdout)")
    add("--verbose", action="store_true", help="show qtd's log (halts, kills) on stderr")
    args = ap.parse_args(argv)
    unknown = set(args.only.split(",")) - set(PARTS)
    if unknown:
        ap.error(f"--only: unknown {sorted(unknown)}; known: {', '.join(PARTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.getLogger("qtd").setLevel(logging.INFO if args.verbose else logging.CRITICAL)
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"python {platform.python_version()}; {args.bots} paced bots, a bar every "
          f"{args.bar_ms:g} ms each; hook budget {args.budget} s", flush=True)
    t0 = time.perf_counter()
    rep = asyncio.run(run(args, set(args.only.split(","))))
    print(rep.table())
    for note in rep.notes:
        print(note)
    print(f"({time.perf_counter() - t0:.0f} s; load now {os.getloadavg()[0]:.2f})")
    if args.json:
        rep.data["args"] = vars(args)
        rep.data["machine"] = {"cores": os.cpu_count(), "load_before": load,
                               "load_after": os.getloadavg()}
        rep.data["units"] = {"kills": "ns", "inline_reference": "ns", "transport": "us",
                             "memory": "bytes, s", "fleet_*": "bytes"}
        rep.data["missed"] = rep.missed
        text = json.dumps(rep.data, indent=1, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if rep.missed:
        print("MISSED: " + "; ".join(m.strip() for m in rep.missed))
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
