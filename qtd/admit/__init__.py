"""Admission: check bot configs, strategies, params and routes before anything trades.

For each bot config (:mod:`qtd.admit.config`), every rule runs and every error is reported
(file, field path, value, rule; line when known):

1. ``config``: the bot file is TOML and matches :class:`~qtd.admit.config.BotConfig`;
2. ``instrument``: every symbol is listed for the venue (:mod:`qtd.admit.instruments`);
3. ``import``: the strategy file imports in isolation (syntax errors with file:line) and
   defines exactly one Strategy subclass (:mod:`qtd.admit.loader`);
4. ``schema``: params match the strategy's ``Params`` field by field, unknown keys rejected
   with a did-you-mean (:mod:`qtd.admit.schema`);
5. ``cross-field``: the strategy's ``validate(params)`` returns no message;
6. ``notional``: ``max_order_qty(params)`` × the highest price of the smoke data fits the
   bot's order caps (:mod:`qtd.admit.limits`);
7. ``smoke``: a backtest on bundled real data raises nothing, overruns no hook budget and
   sends no order over the caps (:mod:`qtd.admit.smoke`);
8. ``stage``: a bot with ``stage = "live"`` needs a passed promotion-gate result for this
   strategy source and params (:func:`qtd.gates.live_refusal`).

The rules run in a child process (:mod:`qtd.admit.sandbox`): a fresh interpreter in a
scratch directory, without network, under CPU, memory and wall-time limits, because they
run strategy code (module bodies and hooks). A caller that trades the bot gets the admitted
strategy by reference (:meth:`Admission.ref`): its strategy worker (:mod:`qtd.workers`)
imports the file after checking it still has the bytes the child admitted.

A bot with no problems gets ``content_hash = sha256(strategy source bytes + canonical params
JSON)`` (params with defaults filled in, keys sorted) and, when a store is given, a
:class:`~qtd.events.StrategyAdmitted` event. Route files (``routes.toml``) are checked by
:func:`qtd.routes.check_routes`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import msgspec

from qtd.admit.problems import Problem, combined_error, toml_lines
from qtd.admit.rules import Verdict
from qtd.admit.sandbox import Limits, Reply, admit_in_child
from qtd.clock import Clock, LiveClock
from qtd.events import Event, StrategyAdmitted
from qtd.workers.load import content_hash, params_json
from qtd.workers.protocol import StrategyRef

__all__ = [
    "Admission",
    "Limits",
    "Problem",
    "admit_bot",
    "admit_paths",
    "collect_files",
    "combined_error",
    "content_hash",
    "params_json",
    "toml_lines",
]


class _Appender(Protocol):
    async def append(self, event: Event) -> Any: ...


class Admission(Verdict, kw_only=True):
    """Result of admitting one file (bot config or routes file): the child's
    :class:`~qtd.admit.rules.Verdict` (bot, strategy, hashes, params, problems, smoke) and
    what only this process knows.

    Attributes:
        path: the file.
        kind: ``"bot"`` or ``"routes"``.
        isolation: how the admission child was kept off the network (bots only).
    """

    path: Path
    kind: str = "bot"
    isolation: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def ref(self) -> StrategyRef:
        """The admitted strategy by reference, for a strategy worker to import
        (:mod:`qtd.workers`); only for an admitted bot."""
        return StrategyRef(file=self.strategy_file, source_hash=self.source_hash,
                           strategy=self.strategy, params=dict(self.params),
                           content_hash=self.content_hash)


def _admission(path: Path, verdict: Verdict, isolation: str) -> Admission:
    return Admission(path=path, isolation=isolation, **msgspec.structs.asdict(verdict))


async def _admitted_event(adm: Admission, strategy_file: str, store: _Appender, node: str,
                          clock: Clock) -> None:
    now = clock.now_ns()
    await store.append(StrategyAdmitted(
        node=node, bot=adm.bot, ts_event=now, ts_init=now, strategy=adm.strategy,
        content_hash=adm.content_hash, source_hash=adm.source_hash,
        params_hash=adm.params_hash, params=adm.params, path=strategy_file))


async def admit_bot(path: Path, *, store: _Appender | None = None, node: str = "local",
                    clock: Clock | None = None, smoke: bool = True,
                    limits: Limits | None = None) -> Admission:
    """Run every admission rule on one bot config (module docstring) in a child process;
    never raises for bad input.

    Args:
        path: the bot config.
        store: when given and the bot is admitted, a ``StrategyAdmitted`` event is appended.
        node: node name for that event.
        clock: its clock (default :class:`~qtd.clock.LiveClock`).
        smoke: run the smoke backtest.
        limits: the admission child's limits (default :class:`~qtd.admit.sandbox.Limits`).
    """
    reply = await admit_in_child(path, smoke=smoke, limits=limits)
    adm = _admission(path, reply.verdict, reply.isolation)
    strategy_file = reply.verdict.strategy_file
    if adm.ok and store is not None:
        await _admitted_event(adm, strategy_file, store, node, clock or LiveClock())
    return adm


def collect_files(paths: Sequence[Path]) -> tuple[list[Path], list[Path], list[Problem]]:
    """Split ``paths`` into (bot configs, route files, problems for missing paths).

    A directory contributes every ``*.toml`` inside a directory named ``bots`` and every
    ``routes.toml``, recursively; other TOML files (risk, agent, leader configs) are left to
    their own loaders. A file given by name is a routes file if named ``routes.toml``, else a
    bot config.
    """
    bots: list[Path] = []
    routes: list[Path] = []
    problems: list[Problem] = []
    for p in paths:
        if p.is_dir():
            for f in sorted(p.rglob("*.toml")):
                if f.name == "routes.toml":
                    routes.append(f)
                elif f.parent.name == "bots":
                    bots.append(f)
        elif p.is_file():
            (routes if p.name == "routes.toml" else bots).append(p)
        else:
            problems.append(Problem(file=str(p), field="<path>", value=str(p),
                                    rule="no such file or directory"))
    return bots, routes, problems


async def admit_paths(paths: Sequence[Path], *, store: _Appender | None = None,
                      node: str = "local", smoke: bool = True) -> list[Admission]:
    """Admit every bot config and routes file under ``paths`` (see :func:`collect_files`);
    one :class:`Admission` per file, plus one for missing paths. Bot configs are admitted
    in parallel, one child process per CPU at a time; results come in file order."""
    from qtd.routes import check_routes

    bots, routes, missing = collect_files(paths)
    slots = asyncio.Semaphore(os.cpu_count() or 1)

    async def one(path: Path) -> Reply:
        async with slots:
            return await admit_in_child(path, smoke=smoke)

    replies = await asyncio.gather(*(one(b) for b in bots))
    results = []
    for path, reply in zip(bots, replies, strict=True):
        adm = _admission(path, reply.verdict, reply.isolation)
        if adm.ok and store is not None:
            await _admitted_event(adm, reply.verdict.strategy_file, store, node, LiveClock())
        results.append(adm)
    bot_files = {r.bot: r.path for r in results if r.bot}
    for f in routes:
        results.append(Admission(path=f, kind="routes",
                                 problems=check_routes(f, bot_files=bot_files)))
    if missing:
        results.append(Admission(path=Path("."), kind="paths", problems=missing))
    if not bots and not routes and not missing:
        results.append(Admission(path=Path(str(paths[0]) if paths else "."), kind="paths",
                                 problems=[Problem(file=str(p), field="<path>", value=str(p),
                                                   rule="no bot configs or routes.toml found")
                                           for p in paths]))
    return results
