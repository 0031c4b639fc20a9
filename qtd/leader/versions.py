"""Fleet consistency of deployed versions at the leader: per bot, the desired version (KV
``desired.<bot>``, :mod:`qtd.deploy`) against the version each node reports running
(:class:`~qtd.events.BotVersion` events from the agents, through JetStream and fleet.db).

Alerts (the leader's :class:`~qtd.leader.alerts.AlertBook`, so they are stored in fleet.db
and paged):

* ``version:<node>:<bot>`` P2 — the node still runs another version ``deadline_s`` seconds
  after the leader first saw the desired one; closed once the node reports it;
* ``deploy:<node>:<bot>`` P2 — the node refused the desired version
  (:class:`~qtd.events.DeployRefused`, the reason in the page); closed once it runs it.
  A canary the node rolled back (:class:`~qtd.events.CanaryStep` ``rollback``) counts as
  refused: the page names the reason and carries the candidate's PnL context (its bot id
  ``<bot>~canary``, so the page's positions and PnL today are the candidate's).

While a canary of the desired version ramps on a node (and until the promoted version's
``BotVersion`` arrives), its row says ``canary``, not ``pending``/``behind``: a ramp takes
days by design.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import nats.errors
import nats.js.errors

from qtd.clock import Clock
from qtd.deploy.fleet import Fleet
from qtd.deploy.model import DeployVersion, VersionRow
from qtd.events import AnyEvent, BotVersion, CanaryStep, DeployRefused, Severity
from qtd.leader.alerts import AlertBook

log = logging.getLogger("qtd.leader.versions")

DEFAULT_DEADLINE_S: Final = 120.0
"""Seconds a node may take to run a newly desired version before a P2."""
REFRESH_S: Final = 1.0
"""Seconds between two reads of the desired versions."""
_NS: Final = 1_000_000_000
NATS_ERRORS: Final = (nats.errors.Error, nats.js.errors.Error, OSError, asyncio.TimeoutError)
"""What a read of the deploy buckets may raise when NATS is away."""


class VersionBoard:
    """Desired vs running versions (module docstring).

    Args:
        clock: the leader's clock (deadline and first-seen times, UTC ns).
        alerts: where the P2s are raised.
        fleet: the deploy buckets (None: unavailable; only what nodes report is known),
            see :func:`qtd.leader.kernel.open_deploy_fleet`.
        deadline_s: seconds before a node on an old version raises a P2.
    """

    def __init__(self, clock: Clock, *, alerts: AlertBook, fleet: Fleet | None,
                 deadline_s: float = DEFAULT_DEADLINE_S) -> None:
        self.clock, self.deadline_s = clock, deadline_s
        self.alerts = alerts
        self.fleet = fleet
        self.desired: dict[str, DeployVersion] = {}
        self.seen_ns: dict[str, int] = {}
        self.running: dict[tuple[str, str], BotVersion] = {}
        self.refused: dict[tuple[str, str], DeployRefused] = {}
        self.canaries: dict[tuple[str, str], CanaryStep] = {}
        self.refresh_s = REFRESH_S
        self._refreshed = float("-inf")
        self._refreshing: asyncio.Task[None] | None = None

    def on_event(self, ev: AnyEvent, live: bool = True) -> None:
        """Take a node's report; ``live=False`` while replaying fleet.db (no pages)."""
        if type(ev) is BotVersion:
            self.running[(ev.node, ev.bot)] = ev
        elif type(ev) is DeployRefused:
            self.refused[(ev.node, ev.bot)] = ev
            if live:
                self.alerts.raise_alert(
                    f"deploy:{ev.node}:{ev.bot}", Severity.P2,
                    f"{ev.node} refused {ev.bot} v{ev.version} {ev.content_hash[:12]}: "
                    f"{ev.running_hash[:12]} keeps running", trigger="deploy_refused",
                    node=ev.node, bot=ev.bot, message=ev.reason[:1000])
        elif type(ev) is CanaryStep:
            self._on_canary(ev, live)

    def _on_canary(self, ev: CanaryStep, live: bool) -> None:
        self.canaries[(ev.node, ev.bot)] = ev
        if ev.action != "rollback":
            return
        pnl = (f"candidate PnL realized {ev.realized:.2f} unrealized {ev.unrealized:.2f}; "
               f"Sharpe {'n/a' if ev.sharpe is None else f'{ev.sharpe:.2f}'}, drawdown "
               f"{'n/a' if ev.drawdown is None else f'{ev.drawdown:.1%}'}")
        reason = f"canary rolled back: {ev.reason}; {pnl}"
        self.refused[(ev.node, ev.bot)] = DeployRefused(
            node=ev.node, bot=ev.bot, ts_event=ev.ts_event, ts_init=ev.ts_init,
            version=ev.version, content_hash=ev.content_hash, running_hash=ev.running_hash,
            reason=reason)
        if live:
            self.alerts.raise_alert(
                f"deploy:{ev.node}:{ev.bot}", Severity.P2,
                f"{ev.node} rolled back the canary of {ev.bot} v{ev.version} "
                f"{ev.content_hash[:12]}: {ev.running_hash[:12]} keeps running",
                trigger="canary_rollback", node=ev.node, bot=ev.canary_bot,
                value=ev.sharpe, unit="Sharpe", message=reason[:1000])

    async def refresh(self) -> None:
        """Read the desired version of every bot a node reported or that was deployed."""
        if self.fleet is None:
            return
        bots = {b for _, b in self.running} | set(self.desired)
        for bot in sorted(bots):
            try:
                v, _ = await asyncio.wait_for(self.fleet.desired(bot), 5.0)
            except NATS_ERRORS as exc:
                log.debug("leader.versions desired.%s unreadable: %r", bot, exc)
                return
            if v is None:
                self.desired.pop(bot, None)
                continue
            old = self.desired.get(bot)
            if old is None or (old.version, old.content_hash) != (v.version, v.content_hash):
                self.seen_ns[bot] = self.clock.now_ns()
            self.desired[bot] = v

    def note_desired(self, v: DeployVersion) -> None:
        """A desired version learnt another way (tests, the deploy CLI's own leader)."""
        if self.desired.get(v.bot) != v:
            self.seen_ns[v.bot] = self.clock.now_ns()
        self.desired[v.bot] = v

    def rows(self) -> list[VersionRow]:
        """The table: one row per (bot, node) running it, plus desired bots on no node."""
        now = self.clock.now_ns()
        out = []
        on_node = set()
        for (node, bot), run in sorted(self.running.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            on_node.add(bot)
            out.append(self._row(node, bot, run, now))
        for bot, v in sorted(self.desired.items()):
            if bot not in on_node:
                out.append(VersionRow(bot=bot, node="", desired_version=v.version,
                                      desired_hash=v.content_hash, status="no-node",
                                      stage=v.stage, canary=v.canary,
                                      since_ns=self.seen_ns.get(bot, 0)))
        return out

    def _row(self, node: str, bot: str, run: BotVersion, now: int) -> VersionRow:
        v = self.desired.get(bot)
        base = VersionRow(bot=bot, node=node, running_version=run.version,
                          running_hash=run.content_hash, stage=run.stage, status="local")
        if v is None:
            return base
        ref = self.refused.get((node, bot))
        if run.content_hash == v.content_hash:
            status, reason = "ok", ""
        elif ref is not None and ref.content_hash == v.content_hash:
            status, reason = "refused", ref.reason
        elif self._ramping(node, bot, v.content_hash):
            status, reason = "canary", ""
        elif now - self.seen_ns.get(bot, now) > self.deadline_s * _NS:
            status, reason = "behind", ""
        else:
            status, reason = "pending", ""
        return VersionRow(bot=bot, node=node, desired_version=v.version,
                          desired_hash=v.content_hash, running_version=run.version,
                          running_hash=run.content_hash, status=status, stage=v.stage,
                          canary=v.canary, refused_reason=reason,
                          since_ns=self.seen_ns.get(bot, 0))

    def _ramping(self, node: str, bot: str, content_hash: str) -> bool:
        c = self.canaries.get((node, bot))
        return c is not None and c.content_hash == content_hash and \
            c.action in ("start", "advance", "promote")  # promote: the swap is under way

    def _refresh_soon(self) -> None:
        """Start a refresh in the background (at most one, at most every ``refresh_s``): a
        slow or absent NATS never delays the leader's cap checks."""
        now = asyncio.get_running_loop().time()
        if (self._refreshing is not None and not self._refreshing.done()) or \
                now - self._refreshed < self.refresh_s:
            return
        self._refreshed = now

        async def run() -> None:
            try:
                await self.refresh()
            except Exception:
                log.exception("leader.versions refresh failed")

        self._refreshing = asyncio.create_task(run(), name="qtd-leader-versions-refresh")

    async def check(self) -> list[VersionRow]:
        """Raise/close the P2s from what is known now (and refresh the desired versions in
        the background); returns the table. Never raises."""
        self._refresh_soon()
        rows = self.rows()
        for r in rows:
            if not r.node:
                continue
            key = f"version:{r.node}:{r.bot}"
            if r.status == "behind":
                late = (self.clock.now_ns() - r.since_ns) / _NS
                self.alerts.raise_alert(
                    key, Severity.P2, f"{r.node} still runs {r.bot} v{r.running_version} "
                    f"{r.running_hash[:12]}; desired v{r.desired_version} "
                    f"{r.desired_hash[:12]} ({late:.0f} s)", trigger="version_behind",
                    node=r.node, bot=r.bot, limit=self.deadline_s, value=round(late, 1),
                    unit="s")
            elif r.status in ("ok", "local"):
                # "local": no desired version (yet): nothing is behind, but a refusal stays
                # open until the node runs the desired version
                keys = (key, f"deploy:{r.node}:{r.bot}") if r.status == "ok" else (key,)
                for k in keys:
                    if k in self.alerts.open:
                        self.alerts.close(k, f"runs v{r.running_version}")
        return rows
