"""Canary rollout of a deployed version on the agent (``qtd deploy --canary``).

**Mechanism: a second runner of the same bot, quantities split by share.** A deployed
version with ``canary = true`` that this node re-admitted does not replace the running
version. The candidate runs as a second runner of the bot under the bot id
``<bot>~canary`` (``~`` is not allowed in a bot name, so it never collides with a
configured bot): same account, venue, symbols and feed; its own client_order_ids, positions
and PnL (everything stays separable in the store and at the leader); its orders go through
the same :class:`~qtd.execution.OrderRouter` and risk engine, checked against the bot's risk
profile (:meth:`qtd.risk.RiskEngine.bind_profiles`). The candidate trades ``share`` of the
bot's allocation and the incumbent ``1 - share`` (:attr:`qtd.strategy.StrategyContext.share`):
``target_position`` targets ``share × target``, ``buy``/``sell`` order ``share × qty``, each
rounded toward zero to the instrument's lot, so the two runners together never hold or order
more than the one bot would.

**Shares move without trading.** Selling the incumbent down and buying the candidate up at
each step (and round-tripping the candidate at the end) would be opposite trades by one
beneficial owner on one account and symbol within seconds: wash trades
(:mod:`qtd.quality.surveil` flags them; so would a regulator). Instead, when the share
changes, a :class:`~qtd.events.PositionTransfer` per symbol moves position between
``<bot>`` and ``<bot>~canary`` at the giver's average cost (no PnL created; stored first,
then applied to the projections, the risk engine's per-bot exposure and both runners'
:class:`~qtd.strategy.StrategyContext`, in one step with the new shares), and only while
neither runner has an open order (else the next check retries):

* each ramp step, incumbent → candidate: the incumbent keeps its new share of its last
  ``target_position`` target (:attr:`~qtd.strategy.StrategyContext.targets`) when it is
  settled there, else its position scaled by ``(1 - new) / (1 - old)``; rounded toward zero
  to the lot (so the rest goes to the growing candidate, and what rounding leaves is traded
  by the incumbent toward its own side, never against the candidate's growth);
* promotion: the bot id stays ``<bot>`` (its configured name, store history, risk limits);
  the candidate's whole position goes to ``<bot>`` in the same synchronous step in which
  ``<bot>``'s runner is given the candidate's params (:meth:`DeployWatch.promote`), so
  neither version trades the other's position;
* rollback: the candidate's whole position goes back to ``<bot>``, whose share is 1 again.

Strategies then trade only on their own signals. Every order still goes through the router
and the risk engine. A transfer is not an order: risk checks do not run on it (it changes
neither the account's nor the symbol's exposure; ``<bot>`` may briefly hold more than its
own params would, and trades back to them on its next bar).

**The ramp** is :class:`qtd.quality.canary_policy.CanaryRollout` (10 % → 25 % → 50 % → 100 % by
default, ``[canary]`` of the agent config, :class:`~qtd.quality.canary_policy.CanaryConfig`). Every
``check_s`` seconds, when the bot's symbols had new market data, the candidate's slice is
observed: its PnL (realized + unrealized at the risk engine's marks, from the agent's
projections) change over ``share × capital`` compounds an equity index whose rolling Sharpe
and drawdown the rollout judges. Each decision is stored as :class:`~qtd.events.CanaryStep`
(and so reaches the leader), and the rollout's state is kept in
``<state_dir>/deploy/<bot>/canary.json`` (a restarted agent resumes it when the desired
version is still the candidate, and never retries a rolled-back one).

**Ending** (promotion, rollback, or a newer deploy): the candidate stops at its next safe
point, its open orders are cancelled, and once it has stopped and none is open its position
is transferred to the bot (above; a transfer is allowed under a halt: it trades nothing).
Only a candidate position whose bot is no longer configured here is flattened with
reduce-only MARKET orders through the router (never while the bot, its account or the fleet
is HALTED; a halt of the candidate's own scope alone lets it through as a kill-switch
flatten does: :meth:`qtd.risk.RiskEngine.allow_flatten`). Then:

* promote (100 % held for a step): the candidate becomes the bot's version through the
  normal deploy swap (:meth:`qtd.agent.deploy_watch.DeployWatch.swap_in`; ``BotVersion``
  with ``how="canary"``), trading the whole allocation again;
* rollback (rolling Sharpe below the floor, drawdown beyond the limit, the candidate halted,
  or the bot halted, reducing or stopped): the incumbent gets the whole allocation back;
  the leader pages P2 with the candidate's PnL context (:mod:`qtd.leader.versions`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from qtd.admit import Admission
from qtd.agent.supervisor import BotSlot
from qtd.deploy.files import deploy_dir
from qtd.deploy.model import DeployVersion
from qtd.errors import StoreError
from qtd.events import (
    DECODE_ERRORS,
    CanaryStep,
    OrderType,
    PositionTransfer,
    Scope,
    Side,
    TradingState,
)
from qtd.orders import ApplyResult, OrderRequest
from qtd.projections import Position
from qtd.quality.canary_policy import CanaryConfig, CanaryDecision, CanaryRollout, CanaryState
from qtd.runner import BotRunner, BotState

if TYPE_CHECKING:
    from qtd.agent.kernel import Kernel
    from qtd.agent.ports import CandidateHost

Promote = Callable[[BotSlot, DeployVersion, Admission, Path], Awaitable[str]]

log = logging.getLogger("qtd.agent.canary_ramps")

SUFFIX = "~canary"
STATE_FILE = "canary.json"
_FALLBACK_CAPITAL = 100_000.0


def canary_bot(bot: str) -> str:
    """The candidate runner's bot id: ``<bot>~canary``."""
    return f"{bot}{SUFFIX}"


class CanaryRecord(msgspec.Struct, kw_only=True):
    """``canary.json``: the rollout of one candidate version (resumable)."""

    version: int
    content_hash: str
    state: CanaryState
    applied: float | None = None
    """The candidate's share whose position transfers were made (None: an older record,
    the share of ``state.step``)."""
    inherited: float = 0.0
    """:attr:`Canary.inherited`."""


class Canary:
    """One bot's candidate: its slot, the deployed version and the ramp."""

    def __init__(self, slot: BotSlot, cslot: BotSlot, v: DeployVersion, adm: Admission,
                 cfg_path: Path, ramp: CanaryRollout, capital: float) -> None:
        self.slot, self.cslot, self.v, self.adm, self.cfg_path = slot, cslot, v, adm, cfg_path
        self.ramp, self.capital = ramp, capital
        self.task: asyncio.Task[Any] | None = None
        self.ending = ""  # "", "promote" or "rollback": set once the candidate must stop
        self.index = 1.0  # the slice's equity index (compounded returns)
        self.pnl_prev: float | None = None
        self.seen_ts = -1
        self.inherited = 0.0
        """PnL (quote currency) the candidate was given with transferred positions (their
        unrealized PnL at the incumbent's cost when moved): not the candidate's result."""
        self.applied = Decimal(0)
        """The candidate's share its runner trades now (the incumbent's is ``1 - applied``):
        it follows the ramp's share once the transfers of that step were made."""
        self.shifting = False  # a _shift is storing its transfers (one at a time)

    @property
    def share(self) -> Decimal:
        """The ramp's share for the candidate now (0 once it is ending by rollback)."""
        return Decimal(str(self.ramp.allocation))


class CanaryRamps:
    """The agent's canaries, one per bot at most (module docstring).

    Args:
        kernel: the agent's kernel (store, router, risk engine, projections, brokers).
        bots: the bots (a candidate is a second runner of one).
        cfg: ``[canary]`` of the agent config.
        promote: makes a candidate that held 100 % the bot's version
            (:meth:`qtd.agent.deploy_watch.DeployWatch.promote`).
        polled: True once the deploy watch read the desired versions (orphans are
            looked for only then).
    """

    def __init__(self, kernel: Kernel, bots: CandidateHost, cfg: CanaryConfig,
                 promote: Promote, polled: Callable[[], bool]) -> None:
        self.k, self.bots, self.cfg = kernel, bots, cfg
        self._promote, self._polled = promote, polled
        self.plan = cfg.plan()
        self.active: dict[str, Canary] = {}
        """incumbent bot -> its running candidate."""
        self.ending: dict[str, Canary] = {}
        """incumbent bot -> a candidate being stopped and flattened."""
        self.orphans: set[str] = set()
        """candidate bot ids holding a position no rollout owns (flattened reduce-only)."""
        self.held_back: dict[str, CanaryRecord] = {}
        """incumbent bot -> the rollout an agent restart interrupted: the incumbent keeps
        its reduced share until that rollout resumes or its candidate is flat."""
        self._swept = False
        self._flattening = asyncio.Lock()  # one flatten pass at a time: never two orders
        self._handing = asyncio.Lock()  # one hand-back of an ending candidate at a time

    # --- hooks the agent calls ------------------------------------------------------------

    def runner(self, bot: str) -> BotRunner | None:
        """The candidate runner with bot id ``bot`` (fills are routed to it), or None."""
        if not bot.endswith(SUFFIX):
            return None
        c = self.active.get(bot[:-len(SUFFIX)]) or self.ending.get(bot[:-len(SUFFIX)])
        return c.cslot.runner if c is not None else None

    def shape(self, runner: BotRunner) -> None:
        """Give a runner its share of the allocation and its lot (called whenever the agent
        builds a runner, so a supervisor restart keeps the split)."""
        name = runner.name
        if name.endswith(SUFFIX):
            c = self.active.get(name[:-len(SUFFIX)])
            runner.ctx.share = c.applied if c is not None else Decimal(0)
        else:
            c = self.active.get(name) or self.ending.get(name)
            if c is not None:
                applied = c.applied
            else:
                rec = self.held_back.get(name) or self._interrupted(name)
                if rec is None:
                    return
                self.held_back[name], applied = rec, self._applied(rec)
            runner.ctx.share = Decimal(1) - applied
        runner.ctx.lot = self._lot(runner.spec.account, runner.spec.symbols)

    def is_active(self, bot: str) -> bool:
        return bot in self.active or bot in self.ending

    # --- start ----------------------------------------------------------------------------

    async def start(self, slot: BotSlot, v: DeployVersion, adm: Admission, cfg_path: Path
                    ) -> str:
        """Run admitted version ``v`` as ``slot``'s candidate at the first share (or resume
        its stored rollout). Returns ``"canary"``, or ``"refused"`` for a candidate this
        node already rolled back."""
        k, name, now = self.k, slot.name, self.k.clock.now_ns()
        rec = self._load(name)
        if rec is not None and rec.content_hash == adm.content_hash \
                and rec.state.status == "rolled_back":
            log.warning("canary: %s %s was rolled back here before: not retried", name,
                        v.short, extra={"bot": name})
            return "refused"
        cname = canary_bot(name)
        resumed = rec is not None and rec.content_hash == adm.content_hash \
            and rec.state.status == "running"
        if rec is not None and resumed:
            ramp = CanaryRollout(self.plan, rec.state)
            ramp.state.step_started_ns, ramp.state.step_obs = now, 0
            ramp.state.step = min(ramp.state.step, len(self.plan.steps) - 1)  # plan edited
        else:
            ramp = CanaryRollout.start(self.plan, bot=name, old_hash=slot.content_hash,
                                       new_hash=adm.content_hash, now_ns=now)
        cslot = BotSlot(msgspec.structs.replace(slot.spec, name=cname), adm.ref(),
                        stage=v.stage)
        c = Canary(slot, cslot, v, adm, cfg_path, ramp, self._capital(slot))
        if resumed and ramp.state.equity and c.capital > 0:
            c.index = ramp.state.equity[-1] / c.capital  # the slice's curve continues
        if rec is not None and resumed:
            c.applied = self._applied(rec)  # those transfers are in the store already
            c.inherited = rec.inherited
        self.orphans.discard(cname)
        self.held_back.pop(name, None)
        k.risk.bind_profiles({cname: name})  # the bot's strategy limits
        self.bots.share_feed(cname, name)
        self.active[name] = c
        await self._record(c, ramp.state.decisions[-1] if not resumed else CanaryDecision(
            ts_ns=now, action="start", step=ramp.state.step, fraction=ramp.allocation,
            observations=0, reason=f"resumed at {ramp.allocation:.0%} after a restart"))
        await self._shift(c)  # before the candidate's runner exists: it is seeded after
        c.task = self.bots.spawn(f"bot:{cname}", self._run_candidate(c))
        self._save(c)
        return "canary"

    async def _run_candidate(self, c: Canary) -> None:
        bots, cslot = self.bots, c.cslot
        runner = cslot.runner = bots.build_runner(cslot)
        cslot.state = BotState.RUNNING
        stop = asyncio.ensure_future(bots.stopping.wait())
        stop.add_done_callback(lambda _: runner.request_stop())
        try:
            state = await runner.run(bots.subscribe(cslot.name))
        finally:
            stop.cancel()
            bots.unsubscribe(cslot.name)
        cslot.state = state
        if not c.ending and not bots.stopping.is_set():
            err = runner.error
            why = f"{err.error_type} in {err.hook}: {err.message}" if err else state.value
            await self._end(c, "rollback", f"the candidate stopped: {why}")

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Observe, decide and finish canaries every ``check_s`` seconds, forever."""
        while True:
            await asyncio.sleep(self.cfg.check_s)
            try:
                await self.check_once()
            except StoreError:
                raise  # nothing can be recorded: the agent stops (qtd.agent.tasks.AgentTasks)
            except Exception:  # a bug or a venue error: logged; the next pass tries again
                log.exception("canary: check failed")

    async def check_once(self) -> None:
        """One pass: each running candidate observed and judged; ending ones flattened.
        Nothing while the agent shuts down: its bots stop first, and a bot stopped by the
        shutdown is no reason to roll its canary back (the next start resumes the ramp)."""
        if self.bots.stopping.is_set():
            return
        for name, c in list(self.active.items()):
            reason = self._unsafe(c)
            if reason:
                await self._end(c, "rollback", reason)
                continue
            if c.applied != c.share:
                await self._shift(c)
                if self.active.get(name) is not c:
                    continue  # ended while the transfer was stored
            self._observe(c)
            d = c.ramp.decide(self.k.clock.now_ns())
            if d is not None:
                await self._decided(c, d)
            elif name in self.active:
                self._save(c)
        for c in list(self.ending.values()):
            await self._finish(c)
        if not self._swept and self._polled():
            self._swept = True
            self._find_orphans()
        for cname in list(self.orphans):
            if await self._hand_back(cname):
                self.orphans.discard(cname)
                log.info("canary: leftover %s is flat", cname, extra={"bot": cname})
                self._release(cname[:-len(SUFFIX)])

    def _applied(self, rec: CanaryRecord) -> Decimal:
        step = min(rec.state.step, len(self.plan.steps) - 1)
        return Decimal(str(rec.applied if rec.applied is not None else self.plan.steps[step]))

    def _interrupted(self, bot: str) -> CanaryRecord | None:
        rec = self._load(bot)
        return rec if rec is not None and rec.state.status == "running" else None

    def _release(self, bot: str) -> None:
        """An interrupted rollout's candidate is flat: close its record (never resumed)
        and give the incumbent its whole allocation back."""
        rec = self.held_back.pop(bot, None)
        if rec is None or self.is_active(bot):
            return
        rec.state.status = "rolled_back"
        self._write(bot, rec)
        runner = self.bots.runner(bot)
        if runner is not None:
            runner.ctx.share = Decimal(1)

    async def _shift(self, c: Canary) -> bool:
        """Move the incumbent's position share to the candidate for the ramp's share now
        (module docstring) and apply the new shares to both runners; False (retried at the
        next check) while either runner has an open order."""
        new, old = c.share, c.applied
        if new == old or c.ending:
            return new == old
        if c.shifting or self._busy(c.slot.name) or self._busy(c.cslot.name):
            return False  # another pass is storing this share's transfers: not twice
        c.shifting = True
        try:
            return await self._shift_once(c, new, old)
        finally:
            c.shifting = False

    async def _shift_once(self, c: Canary, new: Decimal, old: Decimal) -> bool:
        spec, inc = c.slot.spec, c.slot.runner
        lot = self._lot(spec.account, spec.symbols)
        moves = []
        for sym in spec.symbols:
            pos = self.k.proj.position(spec.name, spec.account, sym)
            if pos is None or not pos.qty:
                continue
            keep = self._keep(pos, inc.ctx.targets.get(sym) if inc is not None else None,
                              old, new, lot)
            if keep != pos.qty:
                moves.append(self._transfer(pos, c.cslot.name, pos.qty - keep,
                                            f"canary {c.v.short} {float(new):.0%}: "
                                            f"{spec.name} -> {c.cslot.name}"))
        stored = await self._store(moves)
        # stored, so applied (a replay would): the positions and the shares move together
        # with no await in between, also if the candidate started ending meanwhile (its
        # ending hands everything back)
        cs = c.cslot.spec
        before = sum(self._pnl(cs.name, cs.account, cs.symbols))
        self._apply(stored)
        given = sum(self._pnl(cs.name, cs.account, cs.symbols)) - before
        c.inherited += given  # the slice is judged on its own returns, not on the
        if c.pnl_prev is not None:  # unrealized PnL of what it was given at the
            c.pnl_prev += given  # incumbent's cost
        c.applied = new
        for r in (c.slot.runner, c.cslot.runner):
            if r is not None:
                self.shape(r)
        return True

    @staticmethod
    def _keep(pos: Position, target: Decimal | None, old: Decimal, new: Decimal,
              lot: Decimal) -> Decimal:
        """The incumbent's position after a step from candidate share ``old`` to ``new``
        (signed units, rounded toward zero to ``lot``, same side as ``pos.qty`` and never
        more): its new share of its last target when it is settled at its old share of
        it, else its position scaled by ``(1 - new) / (1 - old)``."""
        lot = lot if lot > 0 else Decimal(1)

        def down(x: Decimal) -> Decimal:
            return (x / lot).to_integral_value(rounding=ROUND_DOWN) * lot

        q = pos.qty
        keep = None
        if target is not None and down(target * (1 - old)) == q:
            keep = down(target * (1 - new))
        if keep is None or (keep and (keep > 0) != (q > 0)) or abs(keep) > abs(q):
            keep = down(q * (1 - new) / (1 - old)) if old < 1 else Decimal(0)
        return keep

    def _busy(self, bot: str) -> bool:
        return next(iter(self.k.proj.orders.open_orders(bot=bot)), None) is not None

    def _transfer(self, pos: Position, to_bot: str, qty: Decimal, reason: str
                  ) -> PositionTransfer:
        """A transfer of signed ``qty`` of ``pos`` to ``to_bot`` at ``pos``'s average cost."""
        cost = pos.copy().give(qty)  # what the projections will move, exactly
        now = self.k.clock.now_ns()
        return PositionTransfer(
            node=self.k.node, bot=pos.bot, ts_event=now, ts_init=now,
            account=pos.account, symbol=pos.symbol, from_bot=pos.bot, to_bot=to_bot,
            qty=qty, cost=cost, price=cost / qty, currency=pos.currency,
            transfer_id=f"{pos.bot}>{to_bot}:{pos.account}:{pos.symbol}:{now}",
            reason=reason[:4000])

    async def _store(self, moves: list[PositionTransfer]) -> list[PositionTransfer]:
        if not moves:
            return []
        stored = await self.k.store.append_many(moves)
        return [e for e in stored if isinstance(e, PositionTransfer)]

    def _apply(self, stored: list[PositionTransfer]) -> None:
        """Apply stored transfers to the projections, the risk engine and the runners of
        both bot ids (synchronously: no bar is handled in between)."""
        k = self.k
        for tr in stored:
            if k.proj.apply(tr) is not ApplyResult.APPLIED:
                log.error("canary: transfer %s not applied: %s", tr.transfer_id,
                          k.proj.anomalies[-1][1] if k.proj.anomalies else "",
                          extra={"bot": tr.from_bot})
                continue
            k.risk.on_event(tr)
            for b in (tr.from_bot, tr.to_bot):
                r = self.bots.runner(b) or self.runner(b)
                if r is not None:
                    r.ctx.apply_transfer(tr)
            log.info("canary: moved %s %s from %s to %s at %s (no order)", tr.qty, tr.symbol,
                     tr.from_bot, tr.to_bot, tr.price, extra={"bot": tr.from_bot})

    async def _hand_back(self, cname: str) -> bool:
        """Transfer everything ``cname`` holds to its bot (no order); False while it has
        an open order. A bot no longer configured here: flattened reduce-only instead."""
        bot = cname[:-len(SUFFIX)]
        if bot not in self.bots.slots:
            return await self._flatten(cname)
        if self._busy(cname):
            return False
        moves = [self._transfer(pos, bot, pos.qty, f"canary ended: {cname} -> {bot}")
                 for (b, _a, _s), pos in list(self.k.proj.positions.items())
                 if b == cname and pos.qty]
        self._apply(await self._store(moves))
        return True

    def _unsafe(self, c: Canary) -> str:
        """Why the candidate must stop now ("" when it may run): its bot REDUCING or
        HALTED, any scope of its orders HALTED (kill switch), or the bot not running."""
        name, states, spec = c.slot.name, self.k.risk.states, c.slot.spec
        st = states.get(Scope.STRATEGY, name)
        if st is not TradingState.ACTIVE:
            return f"bot {name} is {st.value}: the candidate is stopped"
        now = self.k.clock.now_ns()
        for sym in spec.symbols:
            st, scope, key = states.effective(spec.account, canary_bot(name), sym, now)
            if st is TradingState.HALTED:
                return f"{scope.value}:{key} is HALTED: the candidate is stopped"
        if c.slot.state is not BotState.RUNNING:
            return f"bot {name} is {c.slot.state.value}: the candidate is stopped"
        return ""

    def _pnl(self, bot: str, spec_account: str, symbols: tuple[str, ...]
             ) -> tuple[float, float]:
        realized = unrealized = Decimal(0)
        for sym in symbols:
            pos = self.k.proj.position(bot, spec_account, sym)
            if pos is None:
                continue
            mark = self.k.risk.marks.get(sym)
            realized += pos.net_realized
            unrealized += pos.unrealized(mark.price if mark is not None else None)
        return float(realized), float(unrealized)

    def _observe(self, c: Canary) -> None:
        spec = c.cslot.spec
        if not any(self.k.proj.position(spec.name, spec.account, s) is not None
                   for s in spec.symbols):
            return  # not traded yet: no evidence
        marks = [self.k.risk.marks.get(s) for s in spec.symbols]
        ts = max((m.ts_ns for m in marks if m is not None), default=-1)
        if ts == c.seen_ts:
            return  # no new market data: no observation (a closed market is not evidence)
        c.seen_ts = ts
        pnl = sum(self._pnl(spec.name, spec.account, spec.symbols))
        if c.pnl_prev is not None:
            base = float(c.applied or c.share) * c.capital
            c.index *= 1.0 + (pnl - c.pnl_prev) / base if base > 0 else 1.0
            c.index = max(c.index, 1e-12)
        c.pnl_prev = pnl
        c.ramp.observe(self.k.clock.now_ns(), c.index * c.capital)

    async def _decided(self, c: Canary, d: CanaryDecision) -> None:
        await self._record(c, d)
        if d.action == "advance":
            await self._shift(c)
            self._save(c)
            log.info("canary: %s -> %.0f%%: %s", c.slot.name, d.fraction * 100, d.reason,
                     extra={"bot": c.slot.name})
        elif d.action in ("promote", "rollback"):
            await self._end(c, d.action, d.reason, recorded=True)

    # --- ending ---------------------------------------------------------------------------

    async def abort(self, bot: str, reason: str) -> None:
        """End ``bot``'s candidate as a rollback (a newer deploy, or the operator rolled
        back to the running version)."""
        c = self.active.get(bot)
        if c is not None:
            await self._end(c, "rollback", reason)

    async def _end(self, c: Canary, how: str, reason: str, recorded: bool = False) -> None:
        name = c.slot.name
        if self.active.get(name) is not c:
            return
        c.ending = how
        del self.active[name]
        self.ending[name] = c
        if how == "rollback" and c.ramp.state.status == "running":
            c.ramp.state.status = "rolled_back"
        if not recorded:
            sharpe, dd = c.ramp.figures()
            now = self.k.clock.now_ns()
            d = CanaryDecision(ts_ns=now, action="rollback", step=c.ramp.state.step,
                               fraction=0.0, observations=c.ramp.state.step_obs,
                               sharpe=sharpe, drawdown=dd, reason=reason)
            c.ramp.state.decisions.append(d)
            await self._record(c, d)
        self._save(c)
        (log.error if how == "rollback" else log.info)(
            "canary: %s %s %s: %s", name, c.v.short, how, reason, extra={"bot": name})
        runner = c.cslot.runner
        if runner is not None:
            runner.request_stop()
        await self.k.router.cancel_open(bot=c.cslot.name, reason=f"canary {how}")
        await self._finish(c)

    async def _finish(self, c: Canary) -> None:
        """Once the candidate stopped and is flat: hand the allocation back (rollback) or
        make it the bot's version (promote)."""
        if c.task is not None and not c.task.done():
            return
        async with self._handing:  # one pass moves the candidate's position, once
            await self._finish_once(c)

    async def _finish_once(self, c: Canary) -> None:
        name = c.slot.name
        if self.ending.get(name) is not c or self._busy(c.cslot.name):
            return
        moves = [self._transfer(pos, name, pos.qty, f"canary {c.ending}: "
                                f"{c.cslot.name} -> {name}")
                 for (b, _a, _s), pos in list(self.k.proj.positions.items())
                 if b == c.cslot.name and pos.qty]
        stored = await self._store(moves)
        if self.ending.get(name) is not c:
            self._apply(stored)
            return  # finished by a concurrent pass
        del self.ending[name]
        # from here to the swap (promote) or the share (rollback): no await, so the bot's
        # runner never handles a bar with the moved position under the old split
        self._apply(stored)
        if c.ending == "promote":
            await self._promote(c.slot, c.v, c.adm, c.cfg_path)
        elif c.slot.runner is not None:
            c.slot.runner.ctx.share = Decimal(1)
        log.info("canary: %s ended (%s); %s trades the whole allocation", c.cslot.name,
                 c.ending, name, extra={"bot": name})

    async def _flatten(self, cname: str) -> bool:
        """True when ``cname`` holds nothing and has no open order; otherwise sends what
        brings it there (reduce-only MARKET orders through the router)."""
        async with self._flattening:
            return await self._flatten_once(cname)

    async def _flatten_once(self, cname: str) -> bool:
        k = self.k
        if next(iter(k.proj.orders.open_orders(bot=cname)), None) is not None:
            return False
        bot, done = cname[:-len(SUFFIX)], True
        for (b, account, sym), pos in list(k.proj.positions.items()):
            if b != cname or not pos.qty:
                continue
            done = False
            st, scope, key = k.risk.states.effective(account, cname, sym,
                                                         k.clock.now_ns())
            own_halt = st is TradingState.HALTED and scope is Scope.STRATEGY and key == cname
            if k.risk.states.get(Scope.STRATEGY, bot) is TradingState.HALTED or \
                    (st is TradingState.HALTED and not own_halt):
                continue  # a halt of the bot, account or fleet holds: flattened once lifted
            slot = self.bots.slots.get(bot)
            venue = slot.spec.venue if slot is not None else k.cfg.accounts[account].broker
            req = OrderRequest(
                bot=cname, account=account, venue=venue, symbol=sym,
                side=Side.SELL if pos.qty > 0 else Side.BUY, qty=abs(pos.qty),
                order_type=OrderType.MARKET, reduce_only=True,
                decision_price=pos.last_price, reason="canary ended: flatten")
            if own_halt:  # only the candidate is halted (a breaker, or an operator halting
                k.risk.allow_flatten(req)  # it): its cleanup still goes, reduce-only
            await k.router.submit(req)
        return done

    def _find_orphans(self) -> None:
        """Positions of candidates no rollout owns (an agent restarted mid-canary whose
        desired version changed) and rollouts a restart interrupted: flattened
        reduce-only, then the incumbent gets its whole allocation back."""
        for (b, _acct, _sym), pos in self.k.proj.positions.items():
            if b.endswith(SUFFIX) and pos.qty and not self.is_active(b[:-len(SUFFIX)]):
                log.warning("canary: %s still holds %s %s from an earlier rollout: "
                            "flattening it", b, pos.qty, _sym, extra={"bot": b})
                self.orphans.add(b)
        for bot in list(self.held_back):
            if not self.is_active(bot):
                self.orphans.add(canary_bot(bot))

    # --- records --------------------------------------------------------------------------

    async def _record(self, c: Canary, d: CanaryDecision) -> None:
        k = self.k
        realized, unrealized = self._pnl(c.cslot.name, c.cslot.spec.account,
                                         c.cslot.spec.symbols)
        now = k.clock.now_ns()
        await k.store.append(CanaryStep(
            node=k.node, bot=c.slot.name, ts_event=d.ts_ns, ts_init=now, action=d.action,
            step=d.step, fraction=d.fraction, version=c.v.version,
            content_hash=c.adm.content_hash, running_hash=c.ramp.state.old_hash,
            canary_bot=c.cslot.name, sharpe=d.sharpe, drawdown=d.drawdown, realized=realized,
            unrealized=unrealized - c.inherited, reason=d.reason[:4000]))

    def _path(self, bot: str) -> Path:
        return deploy_dir(self.k.cfg.state_dir, bot) / STATE_FILE

    def _save(self, c: Canary) -> None:
        self._write(c.slot.name, CanaryRecord(version=c.v.version,
                                              content_hash=c.adm.content_hash,
                                              state=c.ramp.state, applied=float(c.applied),
                                              inherited=c.inherited))

    def _write(self, bot: str, rec: CanaryRecord) -> None:
        path = self._path(bot)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(rec))
        tmp.replace(path)

    def _load(self, bot: str) -> CanaryRecord | None:
        try:
            return msgspec.json.decode(self._path(bot).read_bytes(), type=CanaryRecord)
        except (OSError, *DECODE_ERRORS):
            return None

    # --- sizes ----------------------------------------------------------------------------

    def _capital(self, slot: BotSlot) -> float:
        if self.cfg.capital > 0:
            return self.cfg.capital
        rcfg = self.k.risk.cfg
        limits = rcfg.strategies.get(slot.name, rcfg.strategy_defaults)
        if limits is not None and limits.max_position_notional:
            return float(limits.max_position_notional)
        acct = rcfg.accounts.get(slot.spec.account)
        return float(acct.equity) if acct is not None and acct.equity else _FALLBACK_CAPITAL

    def _lot(self, account: str, symbols: tuple[str, ...]) -> Decimal:
        """The largest lot of the bot's symbols (rounding down to it is safe for all)."""
        rules = getattr(self.k.brokers.get(account), "rules", {}) or {}
        lots = []
        for sym in symbols:
            if sym in self.cfg.lots:
                lots.append(Decimal(str(self.cfg.lots[sym])))
            elif sym in rules:
                r = rules[sym]
                step = max(getattr(r, "step_size", 0), getattr(r, "market_step_size", 0))
                lots.append(Decimal(step) if step else Decimal(str(self.cfg.lot)))
            else:
                lots.append(Decimal(str(self.cfg.lot)))
        return max(lots)
