"""Fleet deploys on the agent: watch the desired versions of this node's bots, re-admit,
swap at a bar boundary, report what runs (:mod:`qtd.deploy`).

Every ``params_poll_s`` seconds, while NATS is up, the agent reads ``desired.<bot>`` of the
``qtd_deploy`` bucket for each bot it runs (a read, like the kill key: it survives a
nats-server restart and an agent that was down catches up at its first poll). A version whose
content hash differs from the running one is:

1. fetched with its strategy source from ``qtd_sources`` and written under
   ``<state_dir>/deploy/<bot>/`` (:func:`qtd.deploy.files.materialize`), its config pointed
   at this agent's own risk file;
2. **re-admitted** by this agent (:func:`qtd.admit.admit_bot`, smoke run as configured):
   the sender is never trusted; the content hash it computes must equal the version's, and
   the bot's identity (account, venue, symbols, currency) and risk limits must not change
   (those need a restart with the new local config);
3. refused: the old version keeps running; :class:`~qtd.events.DeployRefused` is stored (and
   so published to the leader, which pages P2) with every reason, and a warning logged. A
   refused version is not retried until another version is deployed;
4. accepted: same strategy source → the params are swapped at the next bar boundary
   (:meth:`~qtd.runner.BotRunner.swap_params`, the hot-reload path); a new source → the bot
   is stopped between two bars and restarted with the new strategy, keeping the positions
   its strategy saw (:func:`adopt`). ``current.json`` records the version, so a restart runs
   it even without NATS (:func:`qtd.deploy.files.deployed_config`). Once the new version
   runs, :class:`~qtd.events.BotVersion` is stored (the leader's running version).
5. a ``canary`` version of a running bot is not swapped in: it ramps in beside the running
   version as a second runner (:mod:`qtd.agent.canary_ramps`) and goes through step 4 (``how =
   "canary"``) only once it held 100 %; a rolled-back candidate is not retried. Any newer
   version (or the running one deployed again) ends a running canary first.

At start every bot's running version is stored as a ``BotVersion`` (``how="start"``).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors

from qtd.admit import Admission, admit_bot
from qtd.admit.config import load_bot_config
from qtd.agent.canary_ramps import CanaryRamps
from qtd.agent.supervisor import BotSlot
from qtd.deploy.files import deploy_dir, load_current, materialize, save_current
from qtd.deploy.fleet import Fleet
from qtd.deploy.model import DeployVersion, decode, desired_key
from qtd.errors import ConfigError
from qtd.events import DECODE_ERRORS, BotVersion, DeployRefused, Fill
from qtd.runner import BotRunner, BotState
from qtd.strategy import StrategyContext

if TYPE_CHECKING:
    from qtd.agent.kernel import Kernel
    from qtd.agent.link import BusLink
    from qtd.agent.ports import CandidateHost

log = logging.getLogger("qtd.agent.deploy")

_NATS_ERRORS = (nats.errors.Error, nats.js.errors.Error, OSError, asyncio.TimeoutError)
_CARRY: weakref.WeakKeyDictionary[BotSlot, tuple[StrategyContext, list[Fill]]] = \
    weakref.WeakKeyDictionary()


def adopt(slot: BotSlot, runner: BotRunner) -> None:
    """Give a runner built for a strategy swap the positions, marks and in-flight quantities
    its predecessor's strategy saw, plus the fills that arrived while it stopped (called by
    the agent whenever it builds a runner)."""
    carried = _CARRY.pop(slot, None)
    if carried is None:
        return
    ctx, gap = carried
    for fill in gap:
        ctx.apply_fill(fill)
    runner.ctx.positions.update(ctx.positions)
    runner.ctx.marks.update(ctx.marks)
    runner.ctx.inflight.update(ctx.inflight)


class DeployWatch:
    """The agent's deploy task (module docstring).

    Args:
        kernel: the agent's kernel (store, engine, clock, config).
        bots: the bots it swaps versions of.
        link: the bus link (None: no NATS configured; nothing is ever deployed).
        canary: the canary ramps a ``canary`` version goes to.
    """

    def __init__(self, kernel: Kernel, bots: CandidateHost, link: BusLink | None,
                 canary: CanaryRamps) -> None:
        self.k, self.bots, self.link, self.canary = kernel, bots, link, canary
        self.fleet: Fleet | None = None
        self.running: dict[str, int] = {}
        """bot -> version number running (0: local config never deployed)."""
        self._tried: dict[str, tuple[int, str]] = {}
        self._pending: dict[str, DeployVersion] = {}
        self._how: dict[str, str] = {}
        self.polled = False
        """True after the first pass that read the desired versions (canary orphans)."""

    async def run(self) -> None:
        """Report every bot's version, then poll the desired versions forever."""
        for name, slot in list(self.bots.slots.items()):
            cur = load_current(self.k.cfg.state_dir, name)
            number = cur.version.version if cur and cur.version.content_hash == \
                slot.content_hash else 0
            stage = cur.version.stage if cur and number else slot.stage
            await self._report(slot, number, stage, "start")
        while True:
            await asyncio.sleep(self.k.cfg.params_poll_s)
            await self.poll_once()

    async def poll_once(self) -> None:
        """One pass over this node's bots (no-op while NATS is down)."""
        for name, slot in list(self.bots.slots.items()):
            await self._check_pending(name, slot)
        fleet = await self._fleet()
        if fleet is None:
            return
        for name, slot in list(self.bots.slots.items()):
            try:
                entry = await asyncio.wait_for(fleet.deploy.get(desired_key(name)), 5.0)
            except nats.js.errors.KeyNotFoundError:
                continue
            except _NATS_ERRORS as exc:
                log.debug("deploy: reading desired.%s failed: %r", name, exc)
                return
            await self._consider(slot, entry.value or b"", entry.revision or 0, fleet)
        self.polled = True

    async def _fleet(self) -> Fleet | None:
        link = self.link
        if link is None or link.nc is None or not link.connected:
            return None
        if self.fleet is None:
            try:
                self.fleet = await asyncio.wait_for(
                    Fleet.open(link.nc.jetstream(), self.k.cfg.jetstream_replicas), 5.0)
            except _NATS_ERRORS as exc:
                log.debug("deploy buckets not available: %r", exc)
                return None
        return self.fleet

    async def _consider(self, slot: BotSlot, data: bytes, revision: int, fleet: Fleet) -> None:
        name = slot.name
        try:
            v = decode(data)
        except DECODE_ERRORS as exc:
            if self._tried.get(name) != (-revision, ""):
                self._tried[name] = (-revision, "")
                await self._refuse(slot, 0, "", f"desired.{name} (revision {revision}) is "
                                   f"not a deploy version: {exc}")
            return
        same_stage = v.stage == (slot.stage or v.stage)
        if v.content_hash == slot.content_hash and same_stage and name not in self._pending:
            if self.canary.is_active(name):  # rolled back to the running version
                await self.canary.abort(name, f"{v.short} (the running version) "
                                              "deployed again: the candidate is dropped")
            if self.running.get(name) != v.version:
                await self._adopted_same(slot, v)
            return
        key = (v.version, v.content_hash)
        if self._tried.get(name) == key or name in self._pending:
            return
        self._tried[name] = key
        await self.apply(slot, v, fleet)

    async def _adopted_same(self, slot: BotSlot, v: DeployVersion) -> None:
        """The node already runs this content (a rollback to it, or a local config equal to
        the deployed one): record the version number, nothing to swap."""
        cur = load_current(self.k.cfg.state_dir, slot.name)
        if cur is not None and cur.version.content_hash == v.content_hash \
                and cur.version.stage == v.stage:
            save_current(self.k.cfg.state_dir, v, Path(cur.config_path))
        await self._report(slot, v.version, v.stage, "same")

    async def apply(self, slot: BotSlot, v: DeployVersion, fleet: Fleet) -> str:
        """Re-admit ``v`` and swap it in, or refuse it. Returns ``"swapping"``,
        ``"restarted"``, ``"staged"`` (bot not running: used at its next start) or
        ``"refused"``."""
        k, name = self.k, slot.name
        log.info("deploy: %s %s received (running %s)", name, v.short, slot.content_hash[:12],
                 extra={"bot": name})
        try:
            source = await asyncio.wait_for(fleet.source(v.source_hash), 5.0)
        except _NATS_ERRORS as exc:
            self._tried.pop(name, None)  # transient: try again at the next poll
            log.warning("deploy: %s: source not readable yet: %r", name, exc)
            return "refused"
        if source is None:
            return await self._refuse(slot, v.version, v.content_hash,
                                      f"strategy source {v.source_hash[:12]} is not in the "
                                      "qtd_sources bucket")
        try:
            cfg_path = materialize(v, source, deploy_dir(k.cfg.state_dir, name),
                                   Path(k.cfg.risk))
        except ConfigError as exc:
            return await self._refuse(slot, v.version, v.content_hash, exc.message)
        adm = await admit_bot(cfg_path, store=k.store, node=k.node, clock=k.clock,
                              smoke=k.cfg.admit_smoke)
        reasons = [str(p) for p in adm.problems] or self._identity_problems(slot, v, cfg_path,
                                                                           adm.content_hash)
        if reasons:
            return await self._refuse(slot, v.version, v.content_hash, "; ".join(reasons))
        if self.canary.is_active(name):
            await self.canary.abort(name, f"superseded by {v.short}")
        if v.canary and adm.content_hash != slot.content_hash and slot.runner is not None \
                and slot.state is BotState.RUNNING:  # ramps in beside the running version
            return await self.canary.start(slot, v, adm, cfg_path)
        save_current(k.cfg.state_dir, v, cfg_path)
        return await self.swap_in(slot, v, adm)

    async def promote(self, slot: BotSlot, v: DeployVersion, adm: Admission, cfg_path: Path
                      ) -> str:
        """A canary candidate held 100 %: it becomes the bot's version (:meth:`swap_in`,
        reported with ``how="canary"``)."""
        save_current(self.k.cfg.state_dir, v, cfg_path)
        if slot.runner is not None:
            slot.runner.ctx.share = Decimal(1)
        return await self.swap_in(slot, v, adm, how="canary")

    async def swap_in(self, slot: BotSlot, v: DeployVersion, adm: Admission,
                      how: str = "") -> str:
        """Make admitted ``v`` the slot's version: params swapped at the next bar boundary,
        or the bot restarted for a new strategy class (see :meth:`apply`)."""
        name = slot.name
        if adm.content_hash == slot.content_hash:  # a stage change only: nothing to swap
            slot.stage = v.stage
            await self._report(slot, v.version, v.stage, "stage")
            return "staged"
        ref = adm.ref()
        same_cls = ref.same_code(slot.ref)
        slot.ref = ref
        slot.stage = v.stage
        running = slot.runner is not None and slot.state is BotState.RUNNING
        if same_cls:
            if running and slot.runner is not None:
                slot.runner.swap_params(ref.params, ref.content_hash)
                self._pending[name] = v
                self._how[name] = how or "params"
                return "swapping"
            await self._report(slot, v.version, v.stage, how or "staged")
            return "staged"
        if running:
            await self._restart(slot)
            await self._report(slot, v.version, v.stage, how or "restart")
            return "restarted"
        await self._report(slot, v.version, v.stage, "staged")
        return "staged"

    def _identity_problems(self, slot: BotSlot, v: DeployVersion, cfg_path: Path,
                           content_hash: str) -> list[str]:
        out = []
        if content_hash != v.content_hash:
            out.append(f"content hash computed here {content_hash[:12]} != deployed "
                       f"{v.content_hash[:12]} (source or params differ from what was sent)")
        loaded, _ = load_bot_config(cfg_path)
        if loaded is None:
            return [*out, "config unreadable after admission"]
        c, s = loaded.config, slot.spec
        for field, new, old in (("account", c.account, s.account), ("venue", c.venue, s.venue),
                                ("symbols", tuple(c.symbols), s.symbols),
                                ("currency", c.currency, s.currency)):
            if new != old:
                out.append(f"{field} {old!r} -> {new!r}: changes the bot's identity; needs "
                           "the new local config and an agent restart")
        rcfg = self.k.risk.cfg
        bound = rcfg.strategies.get(slot.name, rcfg.strategy_defaults)
        wanted = rcfg.strategies.get(loaded.profile, rcfg.strategy_defaults)
        if bound != wanted:
            out.append(f"risk_profile {loaded.profile!r} has other limits than the running "
                       "bot's: needs an agent restart")
        return out

    async def _restart(self, slot: BotSlot) -> None:
        """Stop the bot between two bars and start it again with the slot's new strategy."""
        k, runner = self.k, slot.runner
        assert runner is not None
        gap: list[Fill] = []
        _CARRY[slot] = (runner.ctx, gap)
        task = self.bots.bot_task(slot.name)
        runner.request_stop()
        # fills for this bot from now until the new runner exists would reach a runner that
        # no longer reads them: keep them for the new one (adopt)
        runner.divert_fills(gap.append)
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=k.cfg.hook_budget_s * 4 + 5.0)
        if task is not None and not task.done():
            log.error("deploy: %s did not stop for the swap; it keeps running the old "
                      "strategy until its next restart", slot.name, extra={"bot": slot.name})
            _CARRY.pop(slot, None)
            return
        if self.bots.stopping.is_set():  # shutting down: the next start runs the new version
            _CARRY.pop(slot, None)
            return
        self.bots.spawn_bot(slot)

    async def _check_pending(self, name: str, slot: BotSlot) -> None:
        v = self._pending.get(name)
        if v is None:
            return
        runner = slot.runner
        if runner is None or runner.params_hash == v.content_hash \
                or slot.state is not BotState.RUNNING:
            del self._pending[name]
            await self._report(slot, v.version, v.stage, self._how.pop(name, "params"))

    async def _refuse(self, slot: BotSlot, version: int, content_hash: str, reason: str
                      ) -> str:
        k = self.k
        now = k.clock.now_ns()
        await k.store.append(DeployRefused(
            node=k.node, bot=slot.name, ts_event=now, ts_init=now, version=version,
            content_hash=content_hash, running_hash=slot.content_hash, reason=reason[:4000]))
        log.warning("deploy: %s v%d refused, %s keeps running: %s", slot.name, version,
                    slot.content_hash[:12], reason, extra={"bot": slot.name})
        return "refused"

    async def _report(self, slot: BotSlot, number: int, stage: str, how: str) -> None:
        k = self.k
        now = k.clock.now_ns()
        await k.store.append(BotVersion(
            node=k.node, bot=slot.name, ts_event=now, ts_init=now, version=number,
            content_hash=slot.content_hash, stage=stage, how=how))
        self.running[slot.name] = number  # reported once it is on record
        log.info("deploy: %s runs v%d %s (%s)", slot.name, number, slot.content_hash[:12], how,
                 extra={"bot": slot.name})


class Rollouts:
    """Fleet deploys and canaries of one agent, under one owner: the deploy watch hands a
    ``canary`` version to the ramps; a candidate that held 100 % is promoted through the
    watch's swap (:meth:`DeployWatch.promote`).

    Args:
        kernel: the agent's kernel.
        bots: the bots (a candidate is a second runner of one).
        link: the bus link (None: no NATS configured).

    Attributes:
        canary: the canary ramps (:mod:`qtd.agent.canary_ramps`).
        deploys: the deploy watch.
    """

    def __init__(self, kernel: Kernel, bots: CandidateHost, link: BusLink | None) -> None:
        self.canary = CanaryRamps(kernel, bots, kernel.cfg.canary, self._promote,
                                  self._polled)
        self.deploys = DeployWatch(kernel, bots, link, self.canary)

    def shape(self, slot: BotSlot, runner: BotRunner) -> None:
        """Called with every new runner: a strategy swapped in by a deploy keeps the bot's
        positions (:func:`adopt`); its share of the allocation while a canary ramps."""
        adopt(slot, runner)
        self.canary.shape(runner)

    async def _promote(self, slot: BotSlot, v: DeployVersion, adm: Admission,
                       cfg_path: Path) -> str:
        return await self.deploys.promote(slot, v, adm, cfg_path)

    def _polled(self) -> bool:
        return self.deploys.polled
