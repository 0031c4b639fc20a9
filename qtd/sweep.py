"""Backtest jobs (one strategy or bot config, params, data, costs → report) and parameter
sweeps that run a grid of jobs on all cores.

A :class:`Job` is plain data (paths and strings), so it can be sent to a worker process;
each worker loads the strategy itself (admission's loader), runs :func:`qtd.backtest.
run_backtest` — the live order path — into its own event store, and returns the report.

A job with ``isolate`` runs the strategy's hooks in a strategy worker process
(:mod:`qtd.workers`), through the transport the live agent uses, instead of inline: the
same run, slower, for checking that a strategy behaves identically in its worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from qtd.admit import params_json
from qtd.admit.config import load_bot_config
from qtd.admit.limits import limits_for
from qtd.admit.loader import load_strategy
from qtd.admit.problems import combined_error
from qtd.admit.smoke import smoke_risk
from qtd.backtest import BacktestBot, BacktestResult, run_backtest
from qtd.catalog.named import load_named
from qtd.errors import ConfigError
from qtd.events import TradingState, TradingStateChanged
from qtd.feeds import MarketData
from qtd.metrics import Report, Trade, report, trades_from_fills
from qtd.risk.config import RiskConfig
from qtd.risk.load import load_risk_config, parse_risk_config
from qtd.runner import BotSpec
from qtd.store import EventStore
from qtd.strategy import Strategy
from qtd.workers.load import ref_for, source_hash
from qtd.workers.pool import WorkerPool


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """One backtest to run (see :func:`run_job`).

    Attributes:
        target: strategy file (``.py``) or bot config (``.toml``).
        params: param overrides, ``name -> value`` (strings are converted by the schema).
        data: bundled data set name (``qtd data list``) or a bar file (CSV/Parquet).
        symbol: symbol to trade; default: the bot's first symbol, else the data's.
        cash: starting cash of the paper account, quote currency.
        commission_bps / commission_per_unit / slippage_bps / fill_at / latency_ns: paper
            broker settings (:class:`~qtd.brokers.paper.PaperBroker`).
        risk: risk file; default: the bot config's own, else permissive limits.
        db: event store file to write (must not exist); ``""`` = a temporary file.
        isolate: run the strategy's hooks in a worker process (the live agent's transport,
            :mod:`qtd.workers`) instead of inline; same event log, slower.
    """

    target: str
    data: str
    params: dict[str, Any] = {}
    symbol: str = ""
    cash: float = 100_000.0
    commission_bps: float = 0.0
    commission_per_unit: float = 0.0
    slippage_bps: float = 0.0
    fill_at: str = "next_open"
    latency_ns: int = 0
    risk: str = ""
    db: str = ""
    isolate: bool = False


class Halt(msgspec.Struct, frozen=True, kw_only=True):
    """The first time a scope binding the bot went HALTED during a run (a strategy error,
    a circuit breaker): when (UTC ns, simulated clock), which scope and why."""

    ts_ns: int
    scope: str
    key: str
    reason: str


class JobResult(msgspec.Struct, kw_only=True):
    """A job's outcome: the report, or ``error`` for a job that could not run."""

    job: Job
    params: dict[str, Any] = {}
    strategy: str = ""
    bot: str = ""
    source_hash: str = ""
    params_hash: str = ""
    report: Report | None = None
    denials: int = 0
    state: str = ""
    bot_error: str = ""
    error: str = ""
    trades: list[Trade] = []
    curve_ts: list[int] = []
    curve_equity: list[float] = []
    halt: Halt | None = None


class _Resolved(msgspec.Struct, kw_only=True):
    cls: Any
    params: Any
    source: bytes
    file: Path
    spec: BotSpec
    risk: RiskConfig


def _params(cls: type[Strategy], base: dict[str, Any], overrides: dict[str, Any],
            file: str) -> Strategy.Params:
    try:
        params = msgspec.convert({**base, **overrides}, cls.Params, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{file}: params: {exc}", source=file, field="params",
                          value={**base, **overrides}, rule=str(exc)) from None
    msgs = list(cls.validate(params) or [])
    if msgs:
        raise ConfigError(f"{file}: params: {'; '.join(msgs)}", source=file, field="params",
                          value=msgspec.to_builtins(params), rule="; ".join(msgs))
    return params


def _permissive(account: str, bot: str, symbol: str, cash: float) -> RiskConfig:
    return parse_risk_config({
        "global": {"duplicate_window_s": 0.0, "order_spike_factor": 0.0},
        "accounts": {account: {"equity": cash}}, "strategies": {bot: {}},
        "symbols": {symbol: {}},
    }, source="<backtest: permissive limits>")


async def _strategy(path: Path) -> tuple[type[Strategy], bytes]:
    cls, source, problems = await load_strategy(path)
    if cls is None or problems:
        raise combined_error(problems) if problems else ConfigError(
            f"{path}: no strategy", source=str(path))
    return cls, source


async def resolve(job: Job, data_symbol: str) -> _Resolved:
    """Load the job's strategy, params, bot identity and risk limits.

    Raises:
        ConfigError: bad config, strategy, params or risk file.
    """
    path = Path(job.target)
    risk = load_risk_config(job.risk) if job.risk else None
    if path.suffix == ".toml":
        bot, problems = load_bot_config(path)
        if bot is None:
            raise combined_error(problems)
        cls, source = await _strategy(bot.strategy_path)
        cfg = bot.config
        symbols = (job.symbol or cfg.symbols[0], *cfg.symbols[1:])
        spec = BotSpec(name=cfg.name, account=cfg.account, venue=cfg.venue, symbols=symbols,
                       currency=cfg.currency)
        params = _params(cls, cfg.params, job.params, str(path))
        if risk is None:
            risk = smoke_risk(bot, getattr(limits_for(bot), "cfg", None))
        return _Resolved(cls=cls, params=params, source=source, file=bot.strategy_path,
                         spec=spec, risk=risk)
    cls, source = await _strategy(path)
    symbol = job.symbol or data_symbol
    spec = BotSpec(name=path.stem.replace("_", "-")[:32], account="backtest", venue="paper",
                   symbols=(symbol,))
    risk = risk or _permissive(spec.account, spec.name, symbol, job.cash)
    return _Resolved(cls=cls, params=_params(cls, {}, job.params, str(path)), source=source,
                     file=path, spec=spec, risk=risk)


def load_data(data: str, symbol: str = "") -> list[MarketData]:
    """Bars or trades by name (:func:`qtd.catalog.named.resolve_data`): a bundled set, a
    catalog set ``venue:SYMBOL:interval``, a bar file, or a symbol one set has; restamped
    with ``symbol`` if given.

    Raises:
        ConfigError: nothing by that name (the error lists the sets), a symbol several sets
            have (the error lists them), or a file that fails validation.
    """
    items = load_named(data, field="--data")
    if symbol and items and items[0].symbol != symbol:
        items = [msgspec.structs.replace(i, symbol=symbol) for i in items]
    return items


async def run_job(job: Job, items: list[MarketData] | None = None,
                  progress: Callable[[int], None] | None = None) -> JobResult:
    """Run one backtest on the live order path and compute its report.

    Args:
        job: what to run.
        items: the data, if already loaded (else loaded from ``job.data``).
        progress: called with the number of items replayed (every 1,000).

    Raises:
        ConfigError: bad input (see :func:`resolve`, :func:`load_data`).
        StoreError: ``job.db`` cannot be created.
    """
    items = items if items is not None else load_data(job.data)
    r = await resolve(job, items[0].symbol if items else "")
    sym = r.spec.symbols[0]
    if items and items[0].symbol != sym:
        items = [msgspec.structs.replace(i, symbol=sym) for i in items]
    with tempfile.TemporaryDirectory(prefix="qtd-bt-") as tmp:
        db = Path(job.db) if job.db else Path(tmp) / "backtest.db"
        if db.exists():
            raise ConfigError(f"--db {db}: already exists; choose a new file",
                              source=str(db), field="db", value=str(db), rule="new file")
        store = await EventStore.open(db, node="backtest")
        try:
            async with _workers(job.isolate) as workers:
                res = await run_backtest(
                    [_bot(r, workers)], items, store=store, risk=r.risk,
                    accounts={r.spec.account: _broker_settings(job)}, progress=progress,
                    workers=workers)
            halt = await first_halt(store)
        finally:
            await store.close()
    return _result(job, r, res, halt)


@contextlib.asynccontextmanager
async def _workers(isolate: bool) -> AsyncIterator[WorkerPool | None]:
    """A worker pool for an isolated run (closed on exit, its workers gone), else None."""
    if not isolate:
        yield None
        return
    pool = WorkerPool()
    try:
        yield pool
    finally:
        await pool.close()


def _bot(r: _Resolved, workers: WorkerPool | None) -> BacktestBot:
    """The bot to run: its class inline, or, with ``workers``, a reference to the file the
    class was validated from in this process (the worker imports and checks it again)."""
    if workers is None:
        return BacktestBot(strategy=r.cls, params=r.params, spec=r.spec)
    return BacktestBot(strategy=ref_for(r.file, r.source, r.cls, r.params), params=None,
                       spec=r.spec)


async def first_halt(store: EventStore) -> Halt | None:
    """The run's first ``TradingStateChanged`` to HALTED (see :class:`Halt`), or None."""
    for e in await store.query(kind="TradingStateChanged"):
        if isinstance(e, TradingStateChanged) and e.new is TradingState.HALTED:
            return Halt(ts_ns=e.ts_event, scope=e.scope.value, key=e.scope_key,
                        reason=e.reason)
    return None


def _broker_settings(job: Job) -> dict[str, Any]:
    return {"cash": Decimal(str(job.cash)), "commission_bps": Decimal(str(job.commission_bps)),
            "commission_per_unit": Decimal(str(job.commission_per_unit)),
            "slippage_bps": Decimal(str(job.slippage_bps)), "fill_at": job.fill_at,
            "latency_ns": job.latency_ns}


def _result(job: Job, r: _Resolved, res: BacktestResult, halt: Halt | None = None
            ) -> JobResult:
    trades = trades_from_fills(res.fills)
    c = res.curve
    fees = float(sum((f.commission for f in res.fills), Decimal(0)))
    bot = res.bots[r.spec.name]
    return JobResult(
        job=job, params=msgspec.to_builtins(r.params), strategy=r.cls.__name__,
        bot=r.spec.name, source_hash=source_hash(r.source),
        params_hash=source_hash(params_json(r.params)),
        report=report(c.ts_ns, c.equity, c.exposed, trades, fees) if c.equity else None,
        denials=bot.denials, state=bot.state, bot_error=bot.error, trades=trades,
        curve_ts=c.ts_ns, curve_equity=c.equity, halt=halt)


# --- sweeps --------------------------------------------------------------------------------


def parse_range(spec: str) -> tuple[str, list[int | float]]:
    """``"fast=5:30:5"`` → ``("fast", [5, 10, ..., 30])`` (inclusive; floats if any part is
    not an integer).

    Raises:
        ConfigError: not ``NAME=START:STOP:STEP`` with STEP > 0 and START <= STOP.
    """
    name, _, rng = spec.partition("=")
    parts = rng.split(":")
    try:
        nums = [int(p) for p in parts] if all(p.lstrip("-").isdigit() for p in parts) \
            else [float(p) for p in parts]
        start, stop, step = nums
    except ValueError:
        raise ConfigError(f"--sweep {spec!r}: expected NAME=START:STOP:STEP", source="<arg>",
                          field="sweep", value=spec, rule="NAME=START:STOP:STEP") from None
    if not name or step <= 0 or start > stop:
        raise ConfigError(f"--sweep {spec!r}: needs a name, STEP > 0 and START <= STOP",
                          source="<arg>", field="sweep", value=spec, rule="valid range")
    n = math.floor((stop - start) / step + 1e-9) + 1
    return name, [start + i * step for i in range(n)]


def run_job_sync(job: Job, items: list[MarketData] | None = None,
                 progress: Callable[[int], None] | None = None) -> JobResult:
    """:func:`run_job` in a fresh event loop (``asyncio.run``), for the CLI and the sweep's
    worker processes. Same arguments and errors.

    The result is handed out of the loop by the coroutine, not returned by it: on exit
    Python 3.11's ``asyncio.Runner`` restores the SIGINT handler, and
    ``signal.signal`` formats ``repr()`` of the old handler, which holds the main task and so
    its result: the whole equity curve and trade list, about 0.1 s per run for 100,000 bars.
    """
    out: list[JobResult] = []

    async def main() -> None:
        out.append(await run_job(job, items, progress))

    asyncio.run(main())
    return out[0]


def grid(specs: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Every combination of the ``--sweep`` ranges, as param-override dicts."""
    axes = [parse_range(s) for s in specs]
    for values in itertools.product(*(v for _, v in axes)):
        yield {name: v for (name, _), v in zip(axes, values, strict=True)}


def _worker(job: Job) -> JobResult:
    try:
        out = run_job_sync(job)
    except ConfigError as exc:  # e.g. fast >= slow: this point of the grid is skipped
        return JobResult(job=job, params=dict(job.params), error=str(exc))
    out.trades, out.curve_ts, out.curve_equity = [], [], []  # keep the pickle small
    return out


def run_sweep(base: Job, specs: Sequence[str], *, workers: int | None = None,
              on_done: Callable[[int, int], None] | None = None) -> list[JobResult]:
    """Run the grid on ``workers`` processes (default: all cores), one temporary event
    store per run; return results in grid order (errors included, ``error`` set)."""
    jobs = [msgspec.structs.replace(base, params={**base.params, **p}, db="")
            for p in grid(specs)]
    results: list[JobResult] = []
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for result in pool.map(_worker, jobs):  # in grid order, as they finish
            results.append(result)
            if on_done is not None:
                on_done(len(results), len(jobs))
    return results


def rank(results: Sequence[JobResult], by: str = "sharpe") -> list[JobResult]:
    """Runs with a report, best ``by`` (a :class:`~qtd.metrics.Report` field) first;
    ``max_drawdown`` ranks lowest first."""
    ok = [r for r in results if r.report is not None]
    sign = 1.0 if by == "max_drawdown" else -1.0
    return sorted(ok, key=lambda r: sign * float(getattr(r.report, by)))
