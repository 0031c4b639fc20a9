"""Builders for agent tests: a fleet directory (strategies, bot configs, risk, agent TOML),
synthetic bars, an in-process agent context, and a JetStream reader (the "leader side")."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import textwrap
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from qtd.agent.config import AgentConfig, load_agent_config
from qtd.agent.daemon import Agent, build_agent
from qtd.bus import EVENTS_STREAM
from qtd.clock import Clock
from qtd.events import AnyEvent, from_json
from qtd.feeds import Bar
from qtd.store import EventStore

STRATEGIES = {
    "flipper.py": '''
        from qtd.strategy import Strategy

        class Flipper(Strategy):
            """Buys qty on odd bars, goes flat on even bars; raises from bar boom_after on."""

            class Params(Strategy.Params):
                qty: float = 1.0
                boom_after: int = 0

            def on_start(self):
                self.n = 0

            def on_bar(self, bar):
                self.n += 1
                if self.params.boom_after and self.n >= self.params.boom_after:
                    raise RuntimeError("boom")
                self.target_position(self.params.qty if self.n % 2 else 0)
    ''',
    "rester.py": '''
        from qtd.strategy import Strategy

        class Rester(Strategy):
            """Places one limit buy at half the first price (it rests: never fills)."""

            class Params(Strategy.Params):
                qty: float = 1.0

            def on_start(self):
                self.sent = False

            def on_bar(self, bar):
                if not self.sent:
                    self.sent = True
                    self.buy(self.params.qty, limit=round(float(bar.close) / 2, 2))
    ''',
}

RISK = """
[global]
duplicate_window_s = 0.0
order_spike_factor = 0.0
max_data_age_s = 60.0

[accounts.paper-main]
equity = 10_000_000.0

[strategy_defaults]

[symbols.GOOG]
"""


def write_fleet(root: Path, bots: dict[str, dict[str, Any]], *, node: str = "node-a",
                bus_url: str | None = None, strategy: str = "flipper", extra: str = "",
                market: str = "speed = 8640000.0") -> Path:
    """Write strategies, ``bots/<name>.toml``, ``risk.toml`` and ``agent.toml`` under
    ``root``; return the agent config path. ``bots`` maps name → params (a ``_strategy``
    key picks another strategy file)."""
    (root / "strategies").mkdir(parents=True, exist_ok=True)
    (root / "bots").mkdir(exist_ok=True)
    for name, body in STRATEGIES.items():
        (root / "strategies" / name).write_text(textwrap.dedent(body))
    (root / "risk.toml").write_text(RISK)
    for name, params in bots.items():
        params = dict(params)
        strat = params.pop("_strategy", strategy)
        lines = "\n".join(f"{k} = {v!r}" for k, v in params.items())
        (root / "bots" / f"{name}.toml").write_text(
            f'name = "{name}"\nstrategy = "../strategies/{strat}.py"\nvenue = "paper"\n'
            f'account = "paper-main"\nsymbols = ["GOOG"]\n\n[smoke]\ndataset = "goog_1d"\n\n'
            f"[params]\n{lines}\n")
    bus = f'[bus]\nservers = ["{bus_url}"]\nreconnect_wait_min = 0.05\n' \
          f'reconnect_wait_max = 0.25\ninitial_connect_timeout = 2.0\n' if bus_url else ""
    cfg = root / "agent.toml"
    cfg.write_text(
        f'node = "{node}"\nstate_dir = "state"\nbots = ["bots"]\nrisk = "risk.toml"\n'
        f'kill_file = "kill"\nadmit_smoke = false\nfailsafe = "NONE"\nbus_wait_s = 5.0\n'
        f"{extra}\n{bus}\n[accounts.paper-main]\n\n[market]\n{market}\n")
    return cfg


def write_binance_bot(root: Path, *, name: str = "bnbot", account: str = "bn1",
                      strategy: str = "flipper", qty: float = 0.01,
                      dataset: str = "btcusd_1mo") -> Path:
    """``bots/<name>.toml``: a bot trading BTCUSDT (quote USDT) on binance account
    ``account`` with ``strategies/<strategy>.py``; returns its path."""
    path = root / "bots" / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nstrategy = "../strategies/{strategy}.py"\nvenue = "binance"\n'
        f'account = "{account}"\nsymbols = ["BTCUSDT"]\ncurrency = "USDT"\n\n'
        f'[smoke]\ndataset = "{dataset}"\n\n[params]\nqty = {qty!r}\n')
    return path


def synthetic_bars(n: int, symbol: str = "GOOG", start: int = 1_600_000_000_000_000_000,
                   step_ns: int = 60_000_000_000) -> list[Bar]:
    """``n`` one-minute bars around 100 (deterministic zig-zag)."""
    out = []
    for i in range(n):
        px = Decimal(100 + (i % 7)) + Decimal(i % 3) / 10
        out.append(Bar(symbol, start + i * step_ns, step_ns, px, px + 1, px - 1, px,
                       Decimal(100)))
    return out


@contextlib.asynccontextmanager
async def running_agent(cfg: AgentConfig | Path, *, clock: Clock | None = None,
                        items: dict[str, list[Any]] | None = None,
                        timeout_s: float = 20.0) -> AsyncIterator[Agent]:
    """An agent built from a config (optionally with a simulated clock) and running in
    this event loop; stopped (cleanly) on exit."""
    if isinstance(cfg, Path):
        cfg = load_agent_config(cfg)
    agent = await build_agent(cfg, clock=clock, items=items)
    task = asyncio.create_task(agent.run(), name="agent")
    ready = asyncio.create_task(agent.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=timeout_s,
                                 return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:
        ready.cancel()
        if task.done():
            task.result()  # raise the start-up error
        task.cancel()
        raise TimeoutError("agent did not become ready")
    try:
        yield agent
    finally:
        agent.request_shutdown()
        assert await asyncio.wait_for(task, timeout_s) == 0


async def wait_for(pred: Any, timeout_s: float = 10.0, step_s: float = 0.05) -> None:
    """Poll ``pred()`` (sync or async) until true or raise TimeoutError."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        got = pred()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(step_s)


async def stream_events(js: JetStreamContext) -> list[tuple[str, AnyEvent]]:
    """(Msg-Id, event) of every message in QTD_EVENTS, in stream order (the leader side)."""
    info = await js.stream_info(EVENTS_STREAM)
    total = info.state.messages
    sub = await js.pull_subscribe(">", stream=EVENTS_STREAM)
    out: list[tuple[str, AnyEvent]] = []
    while len(out) < total:
        for m in await sub.fetch(min(500, total - len(out)), timeout=5):
            out.append((m.headers["Nats-Msg-Id"], from_json(m.data)))
            await m.ack()
    await sub.unsubscribe()
    return out


async def store_events(path: Path) -> list[AnyEvent]:
    """Every event of a store file (opened read-only)."""
    store = await EventStore.open(path, readonly=True)
    try:
        return await store.query()
    finally:
        await store.close()


async def last_seq_of(db: Path) -> int:
    """The last seq of a store file another process may be writing (0 if not readable yet)."""
    if not db.exists():
        return 0
    try:
        store = await EventStore.open(db, readonly=True)
    except Exception:
        return 0
    try:
        return store.last_seq
    finally:
        await store.close()


async def seq_above(db: Path, n: int) -> bool:
    """Whether the store file's last seq is above ``n`` (for ``wait_for``)."""
    return await last_seq_of(db) > n


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    """SIGTERM a child this test started, SIGKILL it after ``timeout_s``, and reap it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
