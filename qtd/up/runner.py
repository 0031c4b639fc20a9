"""``qtd up``: nats-server, a leader and N agents on one machine, with a live summary.

Start order: nats-server (JetStream store in ``<state>/nats``), stream and KV, generated
configs, the leader, the agents (each a separate process). Shutdown order (Ctrl-C, SIGTERM
or ``--duration``): agents (SIGTERM, wait, SIGKILL after ``stop_timeout_s``), then the
leader, then nats-server. The stores stay; the next ``qtd up`` on the same state directory
resumes from them (agents reopen events.db and reconcile, the leader rebuilds from fleet.db
and its durable consumer continues, the kill switch in the KV bucket is still set if it was).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import sys
import time
import webbrowser
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import msgspec
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from rich.console import Console
from rich.live import Live

from qtd.bus import EVENTS_STREAM, BusConfig, EmbeddedNatsServer, connect, ensure_jetstream
from qtd.errors import OperationalError
from qtd.proc import python_argv
from qtd.up.configs import DEFAULT_BARS_PER_S, FleetPlan, generate, refuse_bad_bots
from qtd.up.context import publish_context
from qtd.up.layout import Layout, find_etc
from qtd.up.procs import Child, stop_children, stop_leftovers, write_pids
from qtd.up.summary import FleetWatch, render, rich_view, rows

DEFAULT_AGENTS = 2
READY_WAIT_S = 30.0  # piped output: the first table once every agent answered, or after this


@dataclass(frozen=True, slots=True)
class UpOptions:
    """Options of one ``qtd up`` run.

    Attributes:
        state_dir: the state directory (created).
        agents: number of agents; None: the previous run's count, else 2.
        bars_per_s: replay pace, bars (or ticks) per second per series.
        duration_s: stop after this many seconds (None: until Ctrl-C / SIGTERM).
        config_dir: etc/-like directory to generate from (default: the etc/ shipped with qtd).
        stop_timeout_s: per process group, seconds between SIGTERM and SIGKILL.
        refresh_s: seconds between summaries.
        clear: redraw the summary in place as a rich table (a terminal) instead of appending
            it as plain text lines (a pipe, a log, CI).
        open_browser: open the status page (if the leader serves one) once it answers.
    """

    state_dir: Path
    agents: int | None = None
    bars_per_s: float = DEFAULT_BARS_PER_S
    duration_s: float | None = None
    config_dir: Path | None = None
    stop_timeout_s: float = 20.0
    refresh_s: float = 1.0
    clear: bool = False
    open_browser: bool = False


@contextlib.contextmanager
def _locked(layout: Layout) -> Iterator[None]:
    fd = os.open(layout.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OperationalError(
                f"{layout.root}: another `qtd up` runs on this state directory; stop it "
                "(Ctrl-C) or pass another --state-dir", state_dir=str(layout.root)) from None
        yield
    finally:
        os.close(fd)


def _agent_count(layout: Layout, requested: int | None) -> int:
    try:
        previous = int(json.loads(layout.meta_file.read_text())["agents"])
    except (OSError, ValueError, KeyError, TypeError):
        previous = None
    count = requested or previous or DEFAULT_AGENTS
    layout.meta_file.write_text(json.dumps({"agents": count}) + "\n")
    return count


def _children(layout: Layout, plan: FleetPlan) -> tuple[Child, list[Child]]:
    qtd = python_argv("qtd.cli")  # the cwd is not on their sys.path (a ./qtd/ is not ours)
    leader = Child("leader", [*qtd, "leader", "--config", str(plan.leader_config)],
                   layout.log("leader"))
    agents = [Child(node, [*qtd, "agent", "--config", str(path)], layout.log(node))
              for node, path in plan.agent_configs.items()]
    return leader, agents


def web_url(plan: FleetPlan) -> str | None:
    """The status page URL when the leader config has a ``[web]`` table with a port."""
    web = plan.leader_doc.get("web")
    if not isinstance(web, dict) or web.get("enabled", True) is False or not web.get("port"):
        return None
    return f"http://{web.get('host', '127.0.0.1')}:{web['port']}/"


class Fleet:
    """One running fleet (see the module docstring); :func:`run_up` drives it."""

    def __init__(self, opts: UpOptions, layout: Layout, out: TextIO) -> None:
        self.opts, self.layout, self.out = opts, layout, out
        self.nats = EmbeddedNatsServer(layout.nats_dir, stop_timeout=opts.stop_timeout_s)
        self.leader: Child | None = None
        self.agents: list[Child] = []
        self.stop = asyncio.Event()
        self.started = time.monotonic()
        self.nc: Client | None = None
        self.watch: FleetWatch | None = None
        self.plan: FleetPlan | None = None
        self.live: Live | None = None

    def say(self, text: str) -> None:
        """Print to the terminal (above the live table while it runs); a closed pipe
        (``qtd up | head``) never stops the fleet uncleanly: output goes to /dev/null from
        then on."""
        try:
            if self.live is not None:
                self.live.console.print(text, markup=False, highlight=False)
            else:
                print(text, file=self.out, flush=True)
        except BrokenPipeError:
            self.out = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the run

    async def start(self) -> FleetPlan:
        """nats-server, stream and KV, configs, leader, agents.

        Raises:
            ConfigError: the example configs are missing or invalid, or a bot is refused
                (:func:`~qtd.up.configs.refuse_bad_bots`: nothing is started).
            OperationalError: nats-server did not start.
        """
        etc = find_etc(self.opts.config_dir)
        await refuse_bad_bots(etc)
        stopped = await stop_leftovers(self.layout.pids_file, str(self.layout.root))
        if stopped:
            self.say(f"stopped processes left by an earlier qtd up: {', '.join(stopped)}")
        agents = _agent_count(self.layout, self.opts.agents)
        await self.nats.start()
        self._record()
        self.nc = await connect(BusConfig(servers=(self.nats.url,), name="qtd-up"))
        await ensure_jetstream(self.nc.jetstream())
        plan = self.plan = generate(etc, self.layout, agents=agents, url=self.nats.url,
                                    bars_per_s=self.opts.bars_per_s)
        self.watch = FleetWatch(self.nc, _prefix(plan), plan.nodes)
        await self.watch.start()
        self.leader, self.agents = _children(self.layout, plan)
        for child in (self.leader, *self.agents):
            child.start()
        self._record()
        return plan

    def _record(self) -> None:
        pids = {c.name: c.pid for c in (self.leader, *self.agents) if c and c.pid}
        if self.nats.pid:
            pids["nats-server"] = self.nats.pid
        write_pids(self.layout.pids_file, {k: v for k, v in pids.items() if v is not None})

    def dead(self) -> list[Child]:
        """Children that exited while the fleet should be running."""
        return [c for c in (self.leader, *self.agents) if c and c.returncode() is not None]

    async def shutdown(self) -> dict[str, int | None]:
        """Agents; wait for the leader to consume their last events and save its final
        snapshot (``<state>/leader/snapshot.json``); the leader; nats-server."""
        codes = await stop_children(self.agents, self.opts.stop_timeout_s)
        if self.leader is not None and self.leader.returncode() is None:
            await self._final_snapshot()
        if self.leader is not None:
            codes |= await stop_children([self.leader], self.opts.stop_timeout_s)
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        await self.nats.stop()
        self.layout.pids_file.unlink(missing_ok=True)
        return codes

    async def _final_snapshot(self, timeout_s: float = 10.0) -> None:
        if self.nc is None or self.watch is None or self.plan is None:
            return
        durable = str(self.plan.leader_doc.get("ingest", {}).get("durable", "qtd-leader"))
        js = self.nc.jetstream()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(NotFoundError, TimeoutError):
                info = await js.consumer_info(EVENTS_STREAM, durable, timeout=1.0)
                if not info.num_pending and not info.num_ack_pending:
                    break
            await asyncio.sleep(0.1)
        else:
            self.say(f"the leader did not catch up within {timeout_s:g} s: it will resume "
                     "from its durable consumer next time")
        snap = await self.watch.poll(timeout=2.0)
        if snap is not None:
            path = self.layout.fleet_db.parent / "snapshot.json"
            path.write_bytes(msgspec.json.format(msgspec.json.encode(snap)))
            if self.opts.clear:
                Console(file=self.out).print(rich_view(self.watch, started=self.started,
                                                       extra=["final:"]))
            else:
                self.say(render(self.watch, started=self.started, extra=["final:"]))


def _prefix(plan: FleetPlan) -> str:
    return str(plan.leader_doc.get("bus", {}).get("prefix", "qtd"))


async def _open_browser(fleet: Fleet, url: str) -> None:
    # In a thread: a console browser (BROWSER=w3m) would otherwise stall the summary.
    try:
        ok = await asyncio.to_thread(webbrowser.open, url)
    except webbrowser.Error as e:
        ok, why = False, str(e)
    else:
        why = "no browser found"
    fleet.say(f"opened the status page in a browser: {url}" if ok else
              f"could not open a browser ({why}): open {url} yourself")


async def _watch(fleet: Fleet, plan: FleetPlan) -> None:
    assert fleet.watch is not None
    watch, pending = fleet.watch, set(plan.nodes)
    url = web_url(plan)
    header = [f"nats {fleet.nats.url}  state {fleet.layout.root}  logs {fleet.layout.logs_dir}"]
    header += [f"status page {url}"] if url else []
    if fleet.opts.open_browser and not url:
        fleet.say("--open: the leader config has no [web] table with a port: no status page")
    opened = not (url and fleet.opts.open_browser)
    changes = ChangeLog()
    with contextlib.ExitStack() as stack:
        if fleet.opts.clear:
            fleet.live = stack.enter_context(Live(
                rich_view(watch, started=fleet.started, extra=header),
                console=Console(file=fleet.out), auto_refresh=False, transient=True))
            stack.callback(setattr, fleet, "live", None)
        while not fleet.stop.is_set():
            if not opened and watch.snapshot is not None:
                await _open_browser(fleet, url or "")
                opened = True
            for node in list(pending):
                if await watch.agent_states(node, timeout=0.5):
                    pending.discard(node)
            await watch.poll()
            if fleet.live is not None:
                fleet.live.update(rich_view(watch, started=fleet.started, extra=header),
                                  refresh=True)
            else:
                ready = not pending or time.monotonic() - fleet.started > READY_WAIT_S
                for line in changes.lines(watch, fleet.started, header, ready=ready):
                    fleet.say(line)
            _check_alive(fleet)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fleet.stop.wait(), fleet.opts.refresh_s)


class ChangeLog:
    """What ``qtd up`` prints when its output is not a terminal (a pipe, a log, CI): the
    whole table once every agent answered and the leader has a snapshot, then one line per
    change (a bot's or node's state, the kill switch, the number of open alerts), and a
    one-line fleet total every :attr:`every_s` seconds so a log shows the fleet is alive.
    The final table is printed at shutdown (:meth:`Fleet._final_snapshot`)."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self.seen: dict[str, str] = {}
        self.shown = False
        self.last_total = time.monotonic()

    def lines(self, watch: FleetWatch, started: float, header: list[str], *,
              ready: bool) -> list[str]:
        """The lines to print after this poll (none while nothing changed)."""
        snap = watch.snapshot
        now = dict(self._state(watch))
        if not self.shown:
            if not ready or snap is None:
                return []
            self.shown, self.seen = True, now
            return ["", render(watch, started=started, extra=header), ""]
        stamp = time.strftime("%H:%M:%S")
        out = [f"{stamp} {key}: {self.seen.get(key, '-')} -> {value}"
               for key, value in now.items() if self.seen.get(key) != value]
        self.seen = now
        if snap is not None and time.monotonic() - self.last_total >= self.every_s:
            self.last_total = time.monotonic()
            t = snap.totals
            out.append(f"{stamp} fleet: {t.orders} orders, {t.fills} fills, realized "
                       f"{t.realized:,.2f}, pnl today {t.pnl_today:,.2f} {snap.currency}")
        return out

    @staticmethod
    def _state(watch: FleetWatch) -> Iterator[tuple[str, str]]:
        for row in rows(watch):
            node, bot, state = row[0], row[1], row[2]
            yield (node if bot == "(node)" else f"{node} {bot}"), str(state)
        snap = watch.snapshot
        if snap is not None:
            kills = ", ".join(f"{k.scope} {k.key}".strip() for k in snap.kill.kills)
            yield "kill switch", kills or "none"
            yield "open alerts", str(len(snap.alerts))


def _check_alive(fleet: Fleet) -> None:
    dead = fleet.dead()
    if dead:
        c = dead[0]
        raise OperationalError(
            f"{c.name} exited with status {c.returncode()} (see {c.log_path}); last lines:\n"
            f"{c.log_tail()}", name=c.name, log=str(c.log_path))


async def run_up(opts: UpOptions, out: TextIO = sys.stdout) -> int:
    """Run the fleet until ``opts.duration_s`` elapses or SIGINT/SIGTERM; returns 0.

    Raises:
        ConfigError: the example configs are missing or invalid.
        OperationalError: another ``qtd up`` holds the state directory, nats-server did not
            start, or a leader/agent process exited on its own (the fleet is stopped first).
    """
    layout = Layout.at(opts.state_dir)
    layout.create()
    with _locked(layout):
        fleet = Fleet(opts, layout, out)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, fleet.stop.set)
        try:
            plan = await fleet.start()
            for line in publish_context(layout, plan, fleet.nats.url, web_url(plan)):
                fleet.say(line)
            if opts.duration_s is not None:  # counted from the fleet's start, not admission's
                loop.call_later(opts.duration_s, fleet.stop.set)
            fleet.say(f"fleet up: {', '.join(f'{n}: {len(b)} bots' for n, b in plan.nodes.items())}"
                      f" (Ctrl-C stops it)")
            await _watch(fleet, plan)
        finally:
            fleet.say("stopping: agents, then the leader, then nats-server ...")
            codes = await fleet.shutdown()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            fleet.say("stopped: " + ", ".join(f"{n} exit {c}" for n, c in codes.items()))
            fleet.say(f"stores kept: {layout.root}/node-*/events.db, {layout.fleet_db} "
                      f"(qtd positions --db {layout.root}/node-1/events.db); "
                      "`qtd up` again resumes")
    return 0
