"""Admission runs strategy code in a child process: no network, a scratch working directory,
CPU/memory limits; the caller (``qtd validate``, an agent) is never touched by it.

Each strategy here is ``strategies/ma_cross.py`` with a hostile line or two at the top of its
module body: what admission sees is a normal strategy that also misbehaves on import.
"""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from pathlib import Path

from qtd.admit import admit_bot
from qtd.admit.sandbox import Limits
from qtd.bus import ensure_jetstream
from qtd.workers.load import load_admitted
from tests.shipped import (
    ROOT,
    agent_config,
    log_match,
    processes,
    qtd_process,
    run_qtd,
    shipped_nats,
)

MA = ROOT / "strategies" / "ma_cross.py"
FUTURE = "from __future__ import annotations\n"


def hostile(tmp: Path, name: str, body: str) -> Path:
    """``bots/<name>.toml`` for ma_cross with ``body`` run first in its module body."""
    src = tmp / f"{name}.py"
    src.write_text(MA.read_text().replace(FUTURE, FUTURE + body + "\n", 1))
    (tmp / "bots").mkdir(exist_ok=True)
    cfg = tmp / "bots" / f"{name}.toml"
    cfg.write_text(f'name = "{name}"\nstrategy = "{src}"\nvenue = "paper"\n'
                   'account = "acct"\nsymbols = ["GOOG"]\nmax_order_notional = 50000.0\n'
                   "[smoke]\nmax_bars = 300\n")
    return cfg


def line_of(path: Path, needle: str) -> int:
    """The 1-based line of ``path`` holding ``needle``."""
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


async def test_a_module_body_that_connects_is_refused_by_a_real_agent(tmp_path: Path) -> None:
    connections: list[object] = []

    async def on_connect(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        connections.append(w.get_extra_info("peername"))
        w.close()

    listener = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    root = tmp_path / "fleet"
    async with listener, shipped_nats(tmp_path / "nats") as nats:
        leader = await nats.connect("leader")
        await ensure_jetstream(leader.jetstream(), "qtd")
        cfg = agent_config(root, "node-a", nats.url,
                           {"good": {}, "netty": {"_strategy": "netty"}})
        (root / "strategies" / "netty.py").write_text(
            (root / "strategies" / "flipper.py").read_text().replace(
                "from qtd.strategy import Strategy\n",
                "from qtd.strategy import Strategy\nimport socket\ntry:  # swallows a refusal\n"
                f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
                "except OSError:\n    pass\n", 1))
        log = tmp_path / "agent.log"
        with processes() as procs:
            procs.append(qtd_process(["agent", "--config", str(cfg)], log))
            await log_match(log, rb"agent node-a ready: 1 bots, 1 refused")
        text = log.read_text()
    assert connections == []
    line = next(x for x in text.splitlines() if "netty" in x and "refused" in x)
    where = f"netty.py:{line_of(root / 'strategies' / 'netty.py', 'create_connection')}"
    assert where in line and "may not use the network" in line
    assert "refused socket.connect" in line or "refused socket.getaddrinfo" in line


def test_validate_runs_a_module_body_in_a_scratch_directory(tmp_path: Path) -> None:
    name = f"admit-probe-{uuid.uuid4().hex[:8]}.txt"
    seen = tmp_path / "cwd-seen.txt"
    cfg = hostile(tmp_path, "writer", f"import os\nopen({name!r}, 'w').write('x')\n"
                                      f"open({str(seen)!r}, 'a').write(os.getcwd())\n")
    try:
        run = run_qtd(["validate", str(cfg)])  # started in the repository root
        assert run.returncode == 0, run.stdout + run.stderr
        assert not (ROOT / name).exists(), "a module body wrote into the caller's cwd"
    finally:
        (ROOT / name).unlink(missing_ok=True)
    scratch = Path(seen.read_text())
    assert scratch != ROOT and scratch.name.startswith("qtd-admit-")
    assert not scratch.exists(), "the scratch directory is removed after admission"


async def test_a_module_body_that_never_ends_leaves_the_caller_alone(tmp_path: Path) -> None:
    cfg = hostile(tmp_path, "looper", "while True:\n    try:\n        while True:\n"
                                      "            pass\n    except BaseException:\n"
                                      "        pass\n")
    before = set(threading.enumerate())
    r = await admit_bot(cfg)
    (p,) = r.problems
    assert p.file.endswith("looper.py") and "import did not finish within" in p.rule
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert left == [], f"strategy code still runs in the caller: {left}"


async def test_a_module_body_that_allocates_without_bound_stops_at_the_limit(
        tmp_path: Path) -> None:
    # bytes(n) is calloc'ed: address space, not touched memory, so this costs no RAM
    cfg = hostile(tmp_path, "hog", "chunks = []\nwhile True:\n"
                                   "    chunks.append(bytes(1 << 28))\n")
    r = await admit_bot(cfg)
    (p,) = r.problems
    assert p.file.endswith("hog.py") and p.line == line_of(Path(p.file), "chunks.append")
    assert "MemoryError" in p.rule and "memory limit: 2048 MiB" in p.rule


async def test_a_module_body_holding_the_gil_is_killed_at_the_cpu_limit(tmp_path: Path) -> None:
    # catastrophic backtracking in C: no bytecode boundary, no import budget can stop it
    from qtd.admit import Limits  # (here: the other tests also run against older code)

    cfg = hostile(tmp_path, "regex", "import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')\n")
    r = await admit_bot(cfg, limits=Limits(cpu_s=2))
    (p,) = r.problems
    assert p.file == str(cfg) and p.field == "<admission>"
    assert re.search(r"CPU limit \(2 s\) and was killed", p.rule)


async def test_a_normal_strategy_is_admitted_with_the_isolation_named(tmp_path: Path) -> None:
    r = await admit_bot(hostile(tmp_path, "plain", ""))
    assert r.ok, r.problems
    assert r.isolation  # "network namespace" where unshare is allowed, else audit hook only
    cls, params = load_admitted(r.ref())  # what a strategy worker imports
    assert cls.__name__ == "MaCross" and params.fast > 0


async def test_strategy_code_stuck_in_c_is_stopped_at_the_stall_limit(tmp_path: Path) -> None:
    """A smoke hook (or module body) inside one C call holding the GIL cannot be interrupted
    by the hook budget: the child's dead-man switch stops admission after ``stall_s``, with
    the strategy's line, instead of at its CPU limit a minute later (which held an agent's
    start that long)."""
    cfg = hostile(tmp_path, "cstuck", "")
    src = tmp_path / "cstuck.py"
    src.write_text(src.read_text().replace(
        "    def on_bar(self, bar: Bar) -> None:\n",
        "    def on_bar(self, bar: Bar) -> None:\n        sum(range(3 * 10**9))\n", 1))
    r = await admit_bot(cfg, limits=Limits(stall_s=1.0))
    assert not r.ok
    (p,) = r.problems
    assert p.field == "<admission>" and "over 1.0 s in one native call" in p.rule, p
    line = line_of(src, "sum(range(3 * 10**9))")
    assert f'File "{src}", line {line} in on_bar' in p.rule, p.rule


async def test_a_module_body_stuck_in_c_is_stopped_at_the_stall_limit(tmp_path: Path) -> None:
    cfg = hostile(tmp_path, "cbody", "sum(range(3 * 10**9))")
    r = await admit_bot(cfg, limits=Limits(stall_s=1.0))
    (p,) = r.problems
    line = line_of(tmp_path / "cbody.py", "sum(range(3 * 10**9))")
    assert f'cbody.py", line {line} in <module>' in p.rule, p.rule
