"""Plan a deploy: admission (the same as ``qtd validate``) plus the deploy rules, then the
version each admitted bot would get. Nothing here writes to NATS.

Deploy rules, on top of admission (each a :class:`~qtd.admit.Problem` naming the field):

* the bot's ``stage`` is deployable (paper, shadow, live);
* ``--stage X`` given: every bot's config says ``stage = X`` (the reviewed file decides the
  stage; the flag is the operator's assertion, so ``--stage paper`` in CI can never ship a
  live bot);
* ``--canary`` only for live bots;
* promotion one stage at a time: paper -> shadow -> live against the desired version
  (demotion is always allowed); ``live`` also needs a passed gate result for this source
  and params, which admission already checks (:func:`qtd.gates.live_refusal`);
* a bot appears once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qtd.admit import Admission, Problem, admit_bot, admit_paths
from qtd.admit.config import load_bot_config
from qtd.deploy.fleet import Fleet
from qtd.deploy.model import DEPLOYABLE_STAGES, STAGE_ORDER, DeployVersion
from qtd.files import MAX_SOURCE_BYTES, read_capped, read_capped_text
from qtd.gates import gate_path


@dataclass
class Planned:
    """One admitted bot and what publishing it would do.

    Attributes:
        adm: its admission.
        version: the record that would be published (``version`` = next number).
        source: strategy file bytes.
        current: the desired version now (None: never deployed).
        revision: the desired key's KV revision (compare-and-set guard).
        unchanged: same content hash, stage and canary flag as ``current``: not republished.
    """

    adm: Admission
    version: DeployVersion
    source: bytes
    current: DeployVersion | None
    revision: int
    unchanged: bool


def deploy_problems(adm: Admission, stage: str | None, canary: bool) -> list[Problem]:
    """The deploy rules that need no NATS (module docstring) for one admitted bot."""
    loaded, _ = load_bot_config(adm.path)
    if loaded is None:
        return []
    cfg, file = loaded.config, str(adm.path)
    line = loaded.lines.get("stage", 0)
    out = []
    if cfg.stage not in DEPLOYABLE_STAGES:
        out.append(Problem(file=file, field="stage", value=cfg.stage, line=line,
                           rule=f"not deployable: one of {', '.join(DEPLOYABLE_STAGES)}"))
    if stage is not None and cfg.stage != stage:
        out.append(Problem(file=file, field="stage", value=cfg.stage, line=line,
                           rule=f"deploy --stage {stage}: the config must say "
                                f"stage = {stage!r} (the reviewed file sets the stage)"))
    if canary and cfg.stage != "live":
        out.append(Problem(file=file, field="stage", value=cfg.stage, line=line,
                           rule="--canary is for live bots only"))
    return out


def promotion_problem(adm: Admission, new_stage: str, current: DeployVersion | None
                      ) -> Problem | None:
    """Refuse skipping a stage upward against the desired version (None: allowed)."""
    if current is None or new_stage not in STAGE_ORDER or current.stage not in STAGE_ORDER:
        return None
    if STAGE_ORDER[new_stage] <= STAGE_ORDER[current.stage] + 1:
        return None
    nxt = next(s for s, o in STAGE_ORDER.items() if o == STAGE_ORDER[current.stage] + 1)
    return Problem(file=str(adm.path), field="stage", value=new_stage,
                   rule=f"promote one stage at a time: {current.stage} -> {nxt} first "
                        f"({current.short} is {current.stage})")


async def admit_for_deploy(paths: Sequence[Path], *, stage: str | None = None,
                           canary: bool = False, smoke: bool = True) -> list[Admission]:
    """Admit every bot config and routes file under ``paths`` exactly as ``qtd validate``
    does, then add the deploy rules that need no NATS. Returns one :class:`Admission` per
    file; any problem anywhere means nothing is published."""
    results = await admit_paths(paths, smoke=smoke)
    seen: dict[str, Path] = {}
    for r in results:
        if r.kind != "bot" or not r.bot:
            continue
        r.problems = [*r.problems, *deploy_problems(r, stage, canary)]
        if r.bot in seen:
            r.problems = [*r.problems, Problem(
                file=str(r.path), field="name", value=r.bot,
                rule=f"bot deployed twice in one command (also {seen[r.bot]})")]
        seen[r.bot] = r.path
    return results


def new_version(adm: Admission, source: bytes, *, number: int, operator: str, message: str,
                canary: bool, config_text: str | None = None, gate_text: str | None = None,
                rollback_of: int = 0, ts_ns: int | None = None) -> DeployVersion:
    """The record for an admitted bot (``config_text``/``gate_text`` default to the files
    beside ``adm.path``)."""
    loaded, _ = load_bot_config(adm.path)
    assert loaded is not None and adm.ok
    if config_text is None:
        config_text = read_capped_text(adm.path)
    if gate_text is None:
        gp = gate_path(adm.path)
        gate_text = read_capped_text(gp) if gp.is_file() else ""
    return DeployVersion(
        bot=adm.bot, version=number, content_hash=adm.content_hash,
        source_hash=adm.source_hash, params_hash=adm.params_hash, strategy=adm.strategy,
        strategy_file=loaded.strategy_path.name, params=adm.params, config=config_text,
        gate=gate_text, stage=loaded.config.stage, canary=canary, operator=operator,
        message=message, ts_ns=ts_ns if ts_ns is not None else time.time_ns(),
        rollback_of=rollback_of, origin=str(adm.path))


async def plan(fleet: Fleet, admitted: list[Admission], *, operator: str, message: str,
               canary: bool) -> tuple[list[Planned], list[Problem]]:
    """For every admitted bot: its current desired version and the next one; plus the
    promotion problems (which, like admission problems, stop the whole deploy)."""
    out: list[Planned] = []
    problems: list[Problem] = []
    for adm in admitted:
        if adm.kind != "bot" or not adm.ok:
            continue
        loaded, _ = load_bot_config(adm.path)
        assert loaded is not None
        source = read_capped(loaded.strategy_path, MAX_SOURCE_BYTES)
        current, revision = await fleet.desired(adm.bot)
        p = promotion_problem(adm, loaded.config.stage, current)
        if p is not None:
            problems.append(p)
        number = (current.version if current is not None else 0) + 1
        v = new_version(adm, source, number=number, operator=operator, message=message,
                        canary=canary)
        unchanged = (current is not None and current.content_hash == v.content_hash
                     and current.stage == v.stage and current.canary == v.canary)
        out.append(Planned(adm=adm, version=current if unchanged and current else v,
                           source=source, current=current, revision=revision,
                           unchanged=unchanged))
    return out, problems


async def readmit(v: DeployVersion, source: bytes, workdir: Path, risk_file: Path | None, *,
                  smoke: bool = True) -> Admission:
    """Admit a stored version again from files written under ``workdir`` (rollback and
    agents use this: a version is never trusted because it was admitted once)."""
    from qtd.deploy.files import materialize

    cfg = materialize(v, source, workdir, risk_file)
    return await admit_bot(cfg, smoke=smoke)
