"""The global kill switch, leader side: decide, broadcast, collect acknowledgements, page.

The kill state is a **set** of active kills, each released on its own. Wire format:
:mod:`qtd.control`. :meth:`KillSwitchController.trigger_kill` publishes a
:class:`~qtd.control.KillCommand` on core ``<prefix>.ctl.kill`` first (the fast path
every agent subscribes to), then adds it to the :class:`~qtd.control.KillSet` under KV
key ``kill`` in ``qtd_control`` with compare-and-set (an agent that starts later applies
every kill in the set before its bots start), then audits it in fleet.db as a
:class:`~qtd.events.KillSwitch` event. Every agent answers on ``<prefix>.ack.kill.<node>``
with a :class:`~qtd.events.KillAck` carrying the message's ``id``, twice: ``stage="in_force"``
when the kill is in force there (HALTED in memory) and ``stage="durable"`` when it is fsynced
(an agent older than ``stage`` sends one ack, which decodes as ``durable``; it implies in
force). An agent counts as halted on its first ack. Agents known from heartbeats that have not
acknowledged within ``ack_timeout_s`` are listed on the view and paged P1 (``kill:unacked``);
an agent whose durable ack has not followed its in-force ack within ``durable_timeout_s`` is
paged P1 too (``kill:undurable``, naming the kill and the nodes). A kill published by someone
else (``qtd kill``) is tracked the same way.

:meth:`KillSwitchController.resume` needs an operator and a reason and names what it
releases (kill ids, a scope, or every kill; with no name it releases the only active kill
and refuses when there are several). It removes those kills from the set, asks every known
agent to ``resume`` each released scope that no remaining kill holds (request/reply
``<prefix>.ctl.<node>.resume``; agents only resume on that command, never because a kill
left the set, and refuse while the set still holds the scope), audits an inactive
KillSwitch per kill and re-arms the caps whose kills were released. A kill a fleet cap tripped
(its ``cap``) is not released while that cap is still over its limit in force on the fleet
view (:meth:`~qtd.leader.caps.FleetCaps.held`): the whole resume is refused, nothing
released, naming the cap, its value, its limit and what to do. Nothing is published on
``ctl.kill`` for a resume: agents read anything there as a kill (fail safe).

A standby leader (:mod:`qtd.leader.lease`) tracks kills it sees but neither kills nor
resumes (:attr:`KillSwitchController.is_active`: :class:`~qtd.errors.OperationalError`); on
takeover :meth:`KillSwitchController.sync` re-reads the kill state from KV.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from qtd.aio import TaskSet
from qtd.bus import KILL_KEY, Subjects
from qtd.bus.rejects import REJECTED, reject_server_reply
from qtd.clock import Clock
from qtd.control import (
    KillCommand,
    KillSet,
    NodeReply,
    NodeRequest,
    decode_kill,
    decode_kill_set,
    new_kill,
)
from qtd.control.transport import ack_is_from, kill_ack_all, kill_ack_subject, update_kill_set
from qtd.errors import ConfigError, OperationalError
from qtd.events import (
    DECODE_ERRORS,
    AckStage,
    KillAck,
    KillSwitch,
    Scope,
    Severity,
)
from qtd.fleetsnapshot import ActiveKill, KillView
from qtd.leader.alerts import AlertBook
from qtd.leader.caps import FleetCaps
from qtd.leader.fleetdb import LEADER_NODE, FleetDB
from qtd.leader.killround import AckWire, KillRound, ResumeResult, ack_state
from qtd.leader.view import FleetView

log = logging.getLogger("qtd.leader.kill_switch")
UNACKED_KEY = "kill:unacked"
UNDURABLE_KEY = "kill:undurable"


def ack_subject(subjects: Subjects, node: str | None = None) -> str:
    """``<prefix>.ack.kill.<node>`` (``None``: every node, ``*``)."""
    return kill_ack_all(subjects) if node is None else kill_ack_subject(subjects, node)

_ack_decoder = msgspec.json.Decoder(AckWire)
_reply_decoder = msgspec.json.Decoder(NodeReply)


class KillSwitchController:
    """Leader side of the kill switch (see the module docstring).

    Args:
        nc: NATS client.
        kv: the ``qtd_control`` bucket.
        subjects: subject builder.
        db: fleet.db (audit).
        view: the fleet view (its ``kill`` field is kept current).
        alerts: for the P1 page on missing acknowledgements.
        caps: re-armed on resume.
        clock: event timestamps.
        tasks: background tasks.
        ack_timeout_s: seconds agents have to acknowledge (in force), from the decision.
        durable_timeout_s: seconds an agent's durable ack may follow its in-force ack.
        is_active: whether this leader acts now (a standby neither kills nor resumes).
    """

    def __init__(self, *, nc: Client, kv: KeyValue, subjects: Subjects, db: FleetDB,
                 view: FleetView, alerts: AlertBook, caps: FleetCaps, clock: Clock,
                 tasks: TaskSet, ack_timeout_s: float = 1.0, durable_timeout_s: float = 5.0,
                 is_active: Callable[[], bool] = lambda: True) -> None:
        self.nc, self.kv, self.subjects, self.db = nc, kv, subjects, db
        self.view, self.alerts, self.caps, self.clock = view, alerts, caps, clock
        self.tasks = tasks
        self.ack_timeout_s = ack_timeout_s
        self.durable_timeout_s = durable_timeout_s
        self.active: dict[str, KillRound] = {}
        self._past: set[str] = set()
        self._writing: set[str] = set()  # kills shown before their KV write completed
        self.known_nodes: Callable[[], set[str]] = lambda: set(view.heartbeats)
        self.is_active = is_active
        self._show_due = False
        self._view_cache: dict[str, tuple[KillRound, ActiveKill]] = {}

    async def start(self) -> None:
        """Subscribe to acknowledgements and to kills published by others; restore the
        kill set stored in KV."""
        await self.nc.subscribe(ack_subject(self.subjects), cb=self._on_ack)
        await self.nc.subscribe(self.subjects.ctl_kill, cb=self._on_ctl)
        await self.sync()

    async def sync(self, *, watch: bool = False) -> None:
        """Adopt the kill set stored in KV: at start and when a standby takes over (the
        previous leader may have resumed, which is not broadcast), and every
        ``KILL_SYNC_S`` with ``watch`` (a kill added by someone else is tracked like a
        broadcast one; one removed by ``qtd kill --release`` leaves the view)."""
        try:
            entry = await self.kv.get(KILL_KEY)
        except KeyNotFoundError:
            kills = KillSet()
        except Exception:  # KV away: keep what we know
            return
        else:
            kills = decode_kill_set(entry.value or b"", revision=entry.revision or 0)
        ids = kills.ids() | self._writing
        for gone in [i for i in self.active if i not in ids]:
            self._past.add(gone)
            del self.active[gone]
        for kill in kills.kills:
            if kill.id in self.active:
                continue
            if watch and self.is_active():  # set by someone else since: track its acks
                log.warning("kill.external id=%s scope=%s source=%s (kill set)", kill.id,
                            kill.scope, kill.source)
                self._begin(kill, time.perf_counter())
                self.tasks.spawn(self._audit_kill(kill, active=True), "qtd-kill-audit")
            else:  # adopted at start or takeover: acknowledged long ago
                self.active[kill.id] = KillRound(kill, time.perf_counter(), set())
        self._show()

    def _check_active(self, what: str) -> None:
        if not self.is_active():
            raise OperationalError(f"this leader is a standby (it does not hold the leader "
                                   f"lease): {what} refused; ask the active leader",
                                   action=what)

    async def trigger_kill(self, scope: Scope, key: str, reason: str, operator: str = "",
                           flatten: bool = False, source: str = "leader",
                           cap: str = "") -> KillRound:
        """Kill now: broadcast (core), add to the kill set (KV), audit, and watch the
        acknowledgements.

        Args:
            scope: GLOBAL (L1), ACCOUNT (L2), STRATEGY (L3) or SYMBOL (L4).
            key: the account, bot or symbol ("" for GLOBAL).
            reason: why (shown in events and pages).
            operator: who ("" for a tripped cap).
            flatten: agents also close the scope's positions.
            source: "leader", "cli", "web".
            cap: the tripped cap's ``Breach.trip_key`` (re-armed when this kill is
                released).

        Returns:
            The round; ``await round.all_acked.wait()`` to wait for every agent.

        Raises:
            OperationalError: this leader is a standby, or the kill set kept changing.
        """
        self._check_active("kill")
        t0 = time.perf_counter()
        msg = new_kill(scope=scope, key=key, reason=reason, flatten=flatten,
                       operator=operator, source=source, ts_ns=self.clock.now_ns(), cap=cap)
        self._writing.add(msg.id)
        try:
            rnd = self._begin(msg, t0)
            await self.nc.publish(self.subjects.ctl_kill, msgspec.json.encode(msg))
            self._show_soon()  # after the broadcast's write (both run at the next yield)
            await update_kill_set(self.kv, lambda ks: ks.add(msg))
        finally:
            self._writing.discard(msg.id)
        log.warning("kill.triggered id=%s scope=%s key=%s reason=%r operator=%s expected=%d "
                    "active=%d", rnd.kill_id, scope, key, reason, operator, len(rnd.expected),
                    len(self.active))
        self.tasks.spawn(self._audit_kill(msg, active=True), "qtd-kill-audit")
        return rnd

    async def _audit_kill(self, msg: KillCommand, *, active: bool) -> None:
        now = self.clock.now_ns()
        await self.db.append_local([KillSwitch(
            node=LEADER_NODE, ts_event=msg.ts_ns or now, ts_init=now, scope=msg.scope,
            scope_key=msg.key, active=active, reason=msg.reason, flatten=msg.flatten,
            operator=msg.operator, source=msg.source, kill_id=msg.id)])

    def _begin(self, msg: KillCommand, t0: float) -> KillRound:
        """Track a kill's acks from now on (the caller shows it, :meth:`_show_soon`)."""
        rnd = self.active[msg.id] = KillRound(msg, t0, self.known_nodes())
        self.tasks.spawn(self._watch(rnd), f"qtd-kill-watch-{rnd.kill_id}")
        return rnd

    def _select(self, kill_ids: list[str], scope: Scope | None, key: str,
                everything: bool) -> list[KillRound]:
        listed = "; ".join(f"{r.kill_id} {r.kill.scope.value}:{r.kill.key} ({r.kill.reason})"
                           for r in self.active.values()) or "none"
        if kill_ids:
            unknown = [i for i in kill_ids if i not in self.active]
            if unknown:
                raise ConfigError(f"no active kill {', '.join(unknown)}; active: {listed}",
                                  source="<request>", field="kill_id", value=unknown,
                                  rule="an active kill id")
            return [self.active[i] for i in kill_ids]
        if everything:
            return list(self.active.values())
        if scope is not None:
            chosen = [r for r in self.active.values()
                      if r.kill.scope is scope and r.kill.key == key]
            if not chosen:
                raise ConfigError(f"no active kill on {scope.value}:{key}; active: {listed}",
                                  source="<request>", field="scope",
                                  value=f"{scope.value}:{key}", rule="an active kill's scope")
            return chosen
        if len(self.active) > 1:
            raise ConfigError(f"{len(self.active)} kills are active; name the one to "
                              f"release (kill id, scope, or all): {listed}",
                              source="<request>", field="kill_id", value="",
                              rule="required when more than one kill is active")
        return list(self.active.values())

    async def resume(self, operator: str, reason: str, timeout_s: float = 2.0, *,
                     kill_ids: list[str] | None = None, scope: Scope | None = None,
                     key: str = "", everything: bool = False) -> ResumeResult:
        """Release kills: remove them from the set, ask every known agent to resume each
        released scope no remaining kill holds, audit, re-arm their caps.

        Args:
            operator / reason: who and why (required, audited).
            kill_ids: release these kills.
            scope / key: release every active kill on exactly this scope and key.
            everything: release every active kill.
            timeout_s: seconds each agent has to answer.

        With none of ``kill_ids``, ``scope``, ``everything``: the only active kill; with
        none active, agents are asked to resume GLOBAL (a halt they applied on their own).

        Raises:
            ConfigError: operator or reason empty; an unknown kill id or scope; several
                kills active and none named.
            OperationalError: this leader is a standby, the kill set kept changing, or a
                chosen kill's fleet cap is still breached (nothing released).
        """
        self._check_active("resume")
        for field, value in (("operator", operator), ("reason", reason)):
            if not value.strip():
                raise ConfigError(f"resume needs a non-empty {field}", source="<arg>",
                                  field=field, value=value, rule="must not be empty")
        chosen = self._select(kill_ids or [], scope, key, everything)
        self._refuse_while_breached(chosen)
        ids = {r.kill_id for r in chosen}
        if ids:
            await update_kill_set(self.kv, lambda ks: ks.without(ids))
        for r in chosen:
            self._past.add(r.kill_id)
            self.active.pop(r.kill_id, None)
        remaining = KillSet(kills=tuple(r.kill for r in self.active.values()))
        scopes = list(dict.fromkeys((r.kill.scope, r.kill.key) for r in chosen
                                    if not remaining.holding(r.kill.scope, r.kill.key)))
        if not chosen:
            scopes = [(Scope.GLOBAL, "")]
        nodes = sorted(self.known_nodes())
        agents: dict[str, list[str]] = {n: [] for n in nodes}
        for sc, k in scopes:
            req = msgspec.json.encode(NodeRequest(operator=operator, reason=reason,
                                                  scope=sc, key=k))
            replies = await asyncio.gather(*(self._ask(n, req, timeout_s) for n in nodes))
            for n, reply in zip(nodes, replies, strict=True):
                agents[n].append(reply if len(scopes) == 1 else f"{sc.value}:{k} {reply}")
        now = self.clock.now_ns()
        for r in chosen:
            await self._audit_kill(msgspec.structs.replace(
                r.kill, reason=reason, operator=operator, source="leader", ts_ns=now),
                active=False)
        self._after_release(chosen, operator, reason, now)
        result = ResumeResult(
            released=sorted(ids), scopes=[f"{sc.value}:{k}" for sc, k in scopes],
            still_active=self._views(), agents={n: "; ".join(v) for n, v in agents.items()})
        log.warning("kill.resumed operator=%s reason=%r released=%s still_active=%d "
                    "replies=%s", operator, reason, result.released, len(self.active),
                    result.agents)
        return result

    def _refuse_while_breached(self, chosen: list[KillRound]) -> None:
        by_cap = {r.kill.cap: r.kill_id for r in chosen if r.kill.cap}
        held = self.caps.held(set(by_cap), self.view)
        if held:
            log.warning("kill.resume_refused caps=%s", [b.trip_key for b in held])
            raise OperationalError(
                "nothing released: " + "; ".join(
                    f"kill {by_cap[b.trip_key]}: {b.advice()}" for b in held),
                action="resume", caps=[b.trip_key for b in held])

    def _after_release(self, chosen: list[KillRound], operator: str, reason: str,
                       now: int) -> None:
        """Re-arm the released kills' caps, close their alerts, show the set."""
        note = f"resumed by {operator}: {reason}"
        for r in chosen:
            if r.kill.cap:
                self.caps.rearm(r.kill.cap)
                self.alerts.close(f"cap:{r.kill.cap.split(':', 1)[0]}:{r.kill.key}", note)
        if not self.active:
            self.caps.reset()
            for k in [k for k in self.alerts.open if k.startswith(("cap:", "kill:"))]:
                self.alerts.close(k, note)
        elif all(not r.missing() for r in self.active.values()):
            self.alerts.close(UNACKED_KEY, note)
        if self.active:
            self._show()
        else:
            self.view.show_kill(KillView(active=False, reason=reason, operator=operator,
                                         ts_ns=now))

    async def _ask(self, node: str, req: bytes, timeout_s: float) -> str:
        try:
            msg = await self.nc.request(self.subjects.ctl(node, "resume"), req,
                                        timeout=timeout_s)
            reply = _reply_decoder.decode(msg.data)
        except Exception as exc:  # timeout, no responders, garbage: reported per node
            return f"no reply ({type(exc).__name__})"
        return f"{'ok' if reply.ok else 'refused'}: {reply.message}"

    def _on_ack_data(self, data: bytes, subject: str) -> None:
        ack = _ack_decoder.decode(data)
        if not ack_is_from(self.subjects, subject, ack.node):
            raise ValueError(f"ack names node {ack.node!r} on {subject}")
        rnd = self.active.get(ack.kill_id)
        if rnd is None or ack.node in rnd.durable:
            return
        after = time.perf_counter() - rnd.t0
        if ack.stage != AckStage.IN_FORCE:  # durable (or an older agent's ack): in force too
            self._on_durable(rnd, ack, after)
        if ack.node in rnd.acks:
            return
        rnd.latency_s[ack.node] = after
        rnd.acks[ack.node] = ack
        if rnd.expected <= set(rnd.acks):
            rnd.all_acked.set()
            if (self.alerts.open.get(UNACKED_KEY) is not None
                    and all(not r.missing() for r in self.active.values())):
                self.alerts.close(UNACKED_KEY, "every agent acknowledged every kill")
        self._show_soon()

    def _on_durable(self, rnd: KillRound, ack: AckWire, after: float) -> None:
        rnd.durable_s[ack.node] = after
        rnd.durable[ack.node] = ack
        rnd.durable_seen.set()
        if (self.alerts.open.get(UNDURABLE_KEY) is not None
                and all(not r.not_durable() for r in self.active.values())):
            self.alerts.close(UNDURABLE_KEY, "every agent's kill is durable")

    def _show_soon(self) -> None:
        """Update the view at the next loop turn: once per burst of acks, not once per ack,
        and after a kill's broadcast has been written rather than before."""
        if not self._show_due:
            self._show_due = True
            asyncio.get_running_loop().call_soon(self._show_later)

    def _show_later(self) -> None:
        self._show_due = False
        self._show()

    async def _on_ack(self, msg: Msg) -> None:
        try:
            self._on_ack_data(msg.data, msg.subject)
        except (*DECODE_ERRORS, ValueError) as exc:
            REJECTED.reject("kill_ack", msg.subject, exc, log)

    async def _on_ctl(self, msg: Msg) -> None:
        if reject_server_reply("kill", msg.subject, msg.data, msg.headers, log):
            return
        kill = decode_kill(msg.data)
        if kill.id in self._past or kill.id in self.active:
            return
        log.warning("kill.external id=%s scope=%s source=%s", kill.id, kill.scope, kill.source)
        self._begin(kill, time.perf_counter())
        self._show_soon()
        self.tasks.spawn(self._audit_kill(kill, active=True), "qtd-kill-audit")

    async def _watch(self, rnd: KillRound) -> None:
        try:
            async with asyncio.timeout(self.ack_timeout_s):
                await rnd.all_acked.wait()
        except TimeoutError:
            missing = rnd.missing()
            log.error("kill.unacknowledged id=%s missing=%s", rnd.kill_id, missing)
            self.alerts.raise_alert(
                UNACKED_KEY, Severity.P1, f"kill not acknowledged by {len(missing)} agent(s)",
                trigger="kill_ack_timeout", limit=self.ack_timeout_s, unit="s",
                message=f"kill {rnd.kill_id} ({rnd.kill.reason}): no acknowledgement from "
                f"{', '.join(missing)}")
        await self._watch_durable(rnd)
        await self._audit_acks(rnd)

    async def _watch_durable(self, rnd: KillRound) -> None:
        """Wait until every agent that acknowledged the kill in force acknowledged it
        durable, each within ``durable_timeout_s`` of its in-force ack; page P1 otherwise."""
        while pending := rnd.not_durable():
            left = (rnd.t0 + max(rnd.latency_s[n] for n in pending) + self.durable_timeout_s
                    - time.perf_counter())
            if left <= 0:
                break
            rnd.durable_seen.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await rnd.durable_seen.wait()
        else:
            return
        if rnd.kill_id not in self.active:  # released meanwhile: nothing to page
            return
        log.error("kill.not_durable id=%s nodes=%s", rnd.kill_id, pending)
        self.alerts.raise_alert(
            UNDURABLE_KEY, Severity.P1, f"kill not durable on {len(pending)} agent(s)",
            trigger="kill_durable_timeout", limit=self.durable_timeout_s, unit="s",
            message=f"kill {rnd.kill_id} ({rnd.kill.reason}) is in force but not durable "
            f"(no durable acknowledgement within {self.durable_timeout_s:g} s of the "
            f"in-force one) on {', '.join(pending)}: its store may be failing; check the "
            "agent's log and disk")

    async def _audit_acks(self, rnd: KillRound) -> None:
        now = self.clock.now_ns()
        acks = [KillAck(node=a.node, ts_event=now, ts_init=now, kill_id=rnd.kill_id,
                        scope=rnd.kill.scope, scope_key=rnd.kill.key, reason=a.reason,
                        state=ack_state(a.state), canceled=a.canceled,
                        flatten_orders=a.flatten_orders, duplicate=a.duplicate,
                        stage=AckStage.DURABLE if n in rnd.durable else AckStage.IN_FORCE)
                for n, a in ((n, rnd.durable.get(n, a)) for n, a in rnd.acks.items())]
        if acks:
            await self.db.append_local(acks)

    def _views(self) -> list[ActiveKill]:
        """Every active kill's view; a round's is rebuilt only after a new ack (a burst of
        acks on one kill must not cost a rebuild of every other active kill's)."""
        cache, self._view_cache = self._view_cache, {}
        for kill_id, r in self.active.items():
            was, view = cache.get(kill_id, (None, None))
            if was is not r or view is None or len(view.acked) != len(r.acks):
                view = ActiveKill(
                    kill_id=r.kill_id, scope=r.kill.scope.value, key=r.kill.key,
                    reason=r.kill.reason, operator=r.kill.operator, source=r.kill.source,
                    ts_ns=r.kill.ts_ns, acked=sorted(r.acks), pending=r.missing(),
                    ack_latency_ms={n: s * 1000 for n, s in r.latency_s.items()})
            self._view_cache[kill_id] = (r, view)
        return [v for _, v in self._view_cache.values()]

    def _show(self) -> None:
        views = self._views()
        if not views:
            if self.view.kill.active:
                self.view.show_kill(KillView(active=False))
            return
        self.view.show_kill(KillView(**msgspec.structs.asdict(views[-1]), active=True,
                                     kills=views))

