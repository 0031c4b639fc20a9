"""`qtd backtest --isolate`: the same bot, with its hooks run in a strategy worker process
through the live agent's transport instead of inline, writes the identical event log —
compared event by event, every field, seq included, on a shipped bot and its bundled data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec

from qtd.orders import client_order_id
from qtd.proc import child_env
from qtd.store import EventStore
from qtd.sweep import Job, JobResult, run_job, run_sweep

ROOT = Path(__file__).resolve().parents[2]
BOT = ROOT / "etc/bots/momo-goog.toml"
DATA = "goog_1d"
CID = "<cid>"

# Fails when run inline, in the process that asks for the run (pytest's): proves an
# isolated run really ran the hooks somewhere else.
WHERE_AM_I = """
import os

from qtd.strategy import Strategy


class WhereAmI(Strategy):
    class Params(Strategy.Params):
        caller_pid: int = 0

    def on_bar(self, bar):
        if os.getpid() == self.params.caller_pid:
            raise RuntimeError("on_bar ran in the caller's process")
        self.target_position(1, reason="in a worker")
"""


def _normal(value: Any, prefix: str) -> Any:
    """``value`` with this store's client_order_id prefix replaced by ``<cid>``."""
    if isinstance(value, str) and value.startswith(prefix + "."):
        return CID + value[len(prefix):]
    if isinstance(value, list):
        return [_normal(v, prefix) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v, prefix) for k, v in value.items()}
    return value


async def event_log(db: Path) -> list[dict[str, Any]]:
    """Every event of the store at ``db``, in seq order, as builtins (kind included).

    The one field that legitimately differs between two runs is the 6-character tag inside
    every client_order_id (``<node8>.<bot8>.<hash6>.<counter>``): it hashes the store's
    incarnation, a random id made with each new file so that a recreated store never reuses
    an id. It is replaced by ``<cid>`` — only where it is exactly this store's prefix for
    the event's bot; node, bot and counter stay compared.
    """
    store = await EventStore.open(db, readonly=True)
    try:
        events = await store.query()
        node, incarnation = store.node, store.incarnation
    finally:
        await store.close()
    out = []
    for e in events:
        prefix = client_order_id(node, e.bot, incarnation, 1).rpartition(".")[0]
        row = _normal(msgspec.to_builtins(e), prefix)
        if "client_order_id" in row:
            assert row["client_order_id"].startswith(CID + "."), row  # normalised, not lost
        out.append(row)
    return out


def assert_same_log(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert len(a) == len(b), f"{len(a)} events inline, {len(b)} isolated"
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x == y, f"event #{i + 1} differs: inline {x} vs isolated {y}"


def assert_nontrivial(log: list[dict[str, Any]]) -> None:
    kinds = Counter(e["kind"] for e in log)
    assert kinds["OrderIntent"] >= 20 and kinds["Fill"] >= 20, kinds
    assert [e["seq"] for e in log] == list(range(1, len(log) + 1))


async def _run(tmp: Path, name: str, **kw: Any) -> tuple[JobResult, list[dict[str, Any]]]:
    db = tmp / f"{name}.db"
    res = await run_job(Job(target=str(BOT), data=DATA, db=str(db), **kw))
    return res, await event_log(db)


async def test_isolated_run_writes_the_inline_event_log(tmp_path: Path) -> None:
    inline_res, inline = await _run(tmp_path, "inline")
    isolated_res, isolated = await _run(tmp_path, "isolated", isolate=True)
    assert_nontrivial(inline)
    assert_same_log(inline, isolated)
    assert isolated_res.state == inline_res.state == "STOPPED"
    assert isolated_res.report == inline_res.report and isolated_res.trades == inline_res.trades
    # the comparison tells runs apart: another param gives another log
    _, other = await _run(tmp_path, "other", params={"fast": 11})
    assert other != inline


async def test_isolated_hooks_run_outside_the_calling_process(tmp_path: Path) -> None:
    strategy = tmp_path / "where_am_i.py"
    strategy.write_text(WHERE_AM_I)
    job = Job(target=str(strategy), data=DATA, params={"caller_pid": os.getpid()})
    inline = await run_job(job)
    assert inline.state == "HALTED" and "caller's process" in inline.bot_error
    isolated = await run_job(msgspec.structs.replace(job, isolate=True))
    assert isolated.state == "STOPPED" and not isolated.bot_error, isolated.bot_error
    assert [t.is_open for t in isolated.trades] == [True]  # bought once, held


async def test_cli_isolate_writes_the_inline_event_log(tmp_path: Path) -> None:
    _, inline = await _run(tmp_path, "inline", commission_bps=2.0, slippage_bps=1.0)
    db = tmp_path / "cli.db"
    proc = subprocess.run(
        [sys.executable, "-m", "qtd.cli", "backtest", str(BOT), "--data", DATA, "--isolate",
         "--commission-bps", "2", "--slippage-bps", "1", "--db", str(db), "--json"],
        cwd=tmp_path, env=child_env(), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["isolate"] is True and doc["state"] == "STOPPED" and doc["db"] == str(db)
    assert_nontrivial(inline)
    assert_same_log(inline, await event_log(db))


def test_isolated_sweep_ranks_the_inline_runs() -> None:
    base = Job(target=str(BOT), data=DATA)
    grid = ["fast=5:10:5"]
    inline = run_sweep(base, grid, workers=1)
    isolated = run_sweep(msgspec.structs.replace(base, isolate=True), grid, workers=1)
    assert [r.report for r in isolated] == [r.report for r in inline]
    assert all(r.report is not None and r.report.trades > 10 for r in inline)
    assert all(r.job.isolate and not r.error for r in isolated)
