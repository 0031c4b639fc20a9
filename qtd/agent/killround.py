"""An operator's kill round (``qtd kill``): the kill goes out first, then its
acknowledgements are counted against the agents that are live.

Order: subscribe to ``<prefix>.ack.kill.*`` and ``<prefix>.hb.*``; add the kill to the set
with compare-and-set and broadcast it (:func:`~qtd.control.transport.publish_kill`); only then
find out who should answer. The **roster** comes from the leader (a ``status`` request on
``<prefix>.ctl.leader.status``: every agent it has heard a heartbeat from since it started,
with the heartbeat's age and whether it is alive), or, when no leader answers within
:data:`LEADER_TIMEOUT_S` (none runs, a standby, NATS refused the request), from the agents'
own heartbeats heard for :data:`HEARTBEAT_WINDOW_S` after the round began (an agent beats
every ``heartbeat_s`` = 1 s by default). The kill never waits for or depends on the leader.

The round ends as soon as every *alive* agent of the roster has acknowledged the kill
durable (or ``expect`` agents have), or at ``timeout_s``. An agent is acknowledged when the
kill is in force there (its first :class:`~qtd.events.KillAck`, ``stage="in_force"``, on its
own ``<prefix>.ack.kill.<node>``: an ack naming another node than its subject is ignored,
since the server only checks the subject), and durable at its ``stage="durable"`` ack (an
agent that predates ``stage`` sends only that one: both at once).
Roster agents that are not alive (heartbeat older than the leader's
``heartbeat_timeout_s``) are not waited for, but count as missing: nothing confirms that
they halted (an agent applies every kill in the set when it starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from qtd.bus import Subjects
from qtd.control import KillCommand
from qtd.control.transport import ack_is_from, kill_ack_all, publish_kill
from qtd.events import DECODE_ERRORS, AckStage, KillAck

LEADER = "leader"
"""The leader's name on the bus (``<prefix>.ctl.leader.<verb>``, ``<prefix>.hb.leader``)."""
LEADER_TIMEOUT_S = 1.0
"""Seconds the round waits for the leader's roster before it counts heartbeats instead."""
HEARTBEAT_WINDOW_S = 1.25
"""Seconds of agent heartbeats that make the roster when no leader answers: one default
agent heartbeat interval (``heartbeat_s`` = 1 s) and a margin."""


class AgentSeen(msgspec.Struct, frozen=True, kw_only=True):
    """An agent expected to acknowledge.

    Attributes:
        node: the agent's node name.
        heartbeat_age_s: seconds since its last heartbeat, when the roster was taken.
        alive: its heartbeat is recent (the leader's ``heartbeat_timeout_s``; always true
            for one heard during the round).
    """

    node: str
    heartbeat_age_s: float
    alive: bool = True


class AckSeen(msgspec.Struct, frozen=True, kw_only=True):
    """An agent's acknowledgements and when they arrived, ms after the kill's write began.

    Attributes:
        ack: the durable ack once it came (it carries the cancels), else the in-force one.
        after_ms: when the kill was in force there (its first ack).
        durable_ms: when its durable ack came (None: not yet, or not within the round).
    """

    ack: KillAck
    after_ms: float
    durable_ms: float | None = None


class KillReport(msgspec.Struct, kw_only=True):
    """What a kill round saw (see the module docstring).

    Attributes:
        kill: the kill sent.
        active: the kill set as written (this kill included), oldest first.
        acks: one per acknowledging agent, in arrival order.
        roster: the agents expected to acknowledge, heartbeat ages as of ``ended_ms``.
        roster_source: ``"leader"``, ``"heartbeats"``, or ``""``: the round ended before
            it knew (``timeout_s`` 0 or shorter than the roster's own wait).
        expect: the ``expect`` the round was given (0: every alive roster agent).
        ended_ms: ms from the kill's write to the end of the round.
    """

    kill: KillCommand
    active: tuple[KillCommand, ...]
    acks: list[AckSeen]
    roster: list[AgentSeen]
    roster_source: str
    expect: int = 0
    ended_ms: float = 0.0

    def acked(self) -> set[str]:
        """The nodes that acknowledged."""
        return {a.ack.node for a in self.acks}

    def missing(self) -> list[AgentSeen]:
        """Roster agents without an acknowledgement, by node name."""
        acked = self.acked()
        return sorted((a for a in self.roster if a.node not in acked), key=lambda a: a.node)

    def agents(self) -> int:
        """M of "N of M": the roster and any other agent that acknowledged."""
        return len({a.node for a in self.roster} | self.acked())

    def acked_in_ms(self) -> float:
        """ms from the kill's write to its last in-force acknowledgement (0 without one)."""
        return max((a.after_ms for a in self.acks), default=0.0)

    def not_durable(self) -> list[str]:
        """Nodes that acknowledged the kill in force but not durable, by name."""
        return sorted(a.ack.node for a in self.acks if a.durable_ms is None)

    def durable_in_ms(self) -> float:
        """ms from the kill's write to its last durable acknowledgement (0 without one)."""
        return max((a.durable_ms for a in self.acks if a.durable_ms is not None),
                   default=0.0)

    def complete(self) -> bool:
        """Every agent expected acknowledged: ``expect`` of them, or, without ``expect``,
        every roster agent (and at least one agent is known)."""
        if self.expect:
            return len(self.acks) >= self.expect
        return bool(self.roster_source) and self.agents() > 0 and not self.missing()


class _NodeRow(msgspec.Struct):
    node: str
    alive: bool = False
    heartbeat_age_s: float | None = None


class _Snapshot(msgspec.Struct):
    nodes: list[_NodeRow] = []


class _StatusReply(msgspec.Struct):
    ok: bool = False
    snapshot: _Snapshot | None = None


_status_decoder = msgspec.json.Decoder(_StatusReply)
_ack_decoder = msgspec.json.Decoder(KillAck)


class _Round:
    """Acknowledgements, heartbeats heard and the roster of one kill (callbacks only)."""

    def __init__(self, kill_id: str, expect: int, subjects: Subjects) -> None:
        self.kill_id, self.expect, self.subjects = kill_id, expect, subjects
        self.hb_prefix = subjects.hb_all[:-1]  # "<prefix>.hb."
        self.t0 = time.perf_counter()
        self.acks: dict[str, AckSeen] = {}
        self.heard: dict[str, float] = {}  # node -> perf_counter() when last heard
        self.roster: dict[str, AgentSeen] | None = None
        self.roster_at = 0.0
        self.source = ""
        self.done = asyncio.Event()

    def ms(self, t: float) -> float:
        return (t - self.t0) * 1000

    async def on_ack(self, msg: Msg) -> None:
        try:
            ack = _ack_decoder.decode(msg.data)
        except DECODE_ERRORS:
            return
        if not ack_is_from(self.subjects, msg.subject, ack.node):
            return  # an agent may publish acks on its own subject only: not for another node
        if ack.kill_id != self.kill_id:
            return
        now, seen = self.ms(time.perf_counter()), self.acks.get(ack.node)
        durable = None if ack.stage is AckStage.IN_FORCE else now
        if seen is None:
            self.acks[ack.node] = AckSeen(ack=ack, after_ms=now, durable_ms=durable)
        elif durable is not None and seen.durable_ms is None:
            self.acks[ack.node] = AckSeen(ack=ack, after_ms=seen.after_ms, durable_ms=durable)
        else:
            return
        self._check()

    async def on_heartbeat(self, msg: Msg) -> None:
        node = msg.subject.removeprefix(self.hb_prefix)
        if node != LEADER:
            self.heard[node] = time.perf_counter()

    def from_leader(self, agents: list[AgentSeen]) -> None:
        self._set({a.node: a for a in agents}, "leader")

    def from_heartbeats(self) -> None:
        now = time.perf_counter()
        self._set({n: AgentSeen(node=n, heartbeat_age_s=now - t)
                   for n, t in self.heard.items()}, "heartbeats")

    def _set(self, roster: dict[str, AgentSeen], source: str) -> None:
        self.roster, self.roster_at, self.source = roster, time.perf_counter(), source
        self._check()

    def _check(self) -> None:
        durable = {n for n, a in self.acks.items() if a.durable_ms is not None}
        if self.expect:
            if len(durable) >= self.expect:
                self.done.set()
        elif self.roster is not None and all(
                n in durable for n, a in self.roster.items() if a.alive):
            self.done.set()

    def report(self, kill: KillCommand, active: tuple[KillCommand, ...]) -> KillReport:
        now = time.perf_counter()
        aged = now - self.roster_at
        roster = [msgspec.structs.replace(a, heartbeat_age_s=a.heartbeat_age_s + aged)
                  for a in (self.roster or {}).values()]
        return KillReport(kill=kill, active=active, acks=list(self.acks.values()),
                          roster=sorted(roster, key=lambda a: a.node),
                          roster_source=self.source, expect=self.expect,
                          ended_ms=self.ms(now))


async def leader_roster(nc: Client, subjects: Subjects,
                        timeout_s: float = LEADER_TIMEOUT_S) -> list[AgentSeen] | None:
    """The agents the leader has heard heartbeats from, with their ages; ``None`` when no
    leader answered ``<prefix>.ctl.leader.status`` within ``timeout_s`` seconds, or answered
    something else (never raises for that)."""
    try:
        reply = await nc.request(subjects.ctl(LEADER, "status"), b"{}", timeout=timeout_s)
        status = _status_decoder.decode(reply.data)
    except (nats.errors.Error, TimeoutError, *DECODE_ERRORS):
        return None
    if not status.ok or status.snapshot is None:
        return None
    return [AgentSeen(node=n.node, heartbeat_age_s=n.heartbeat_age_s, alive=n.alive)
            for n in status.snapshot.nodes if n.heartbeat_age_s is not None]


async def _find_roster(nc: Client, rnd: _Round, subjects: Subjects) -> None:
    agents = await leader_roster(nc, subjects)
    if agents is not None:
        rnd.from_leader(agents)
        return
    left = HEARTBEAT_WINDOW_S - (time.perf_counter() - rnd.t0)
    if left > 0:
        await asyncio.sleep(left)
    rnd.from_heartbeats()


async def kill_round(nc: Client, msg: KillCommand, *, prefix: str = "qtd",
                     timeout_s: float = 2.0, expect: int = 0) -> KillReport:
    """Send a kill (set, then broadcast), then collect acknowledgements until every live
    agent has acknowledged or ``timeout_s`` (see the module docstring).

    Args:
        nc: a connected client that may write the kill key, publish ``<prefix>.ctl.kill``,
            subscribe ``<prefix>.ack.kill.*`` and ``<prefix>.hb.*`` and request
            ``<prefix>.ctl.leader.status`` (qtd/bus/logins.py, role ``operator``).
        msg: the kill (:func:`~qtd.control.new_kill`).
        prefix: subject prefix.
        timeout_s: seconds after the broadcast to wait at most; 0 sends and returns.
        expect: stop once this many agents acknowledged instead (0: every live agent).

    Returns:
        The :class:`KillReport`.

    Raises:
        nats.errors.Error, nats.js.errors.Error: NATS refused the KV write or the publish
            (nothing was broadcast when the write failed).
        OperationalError: the kill set kept changing (see
            :func:`~qtd.control.transport.update_kill_set`).
    """
    subjects = Subjects(prefix)
    rnd = _Round(msg.id, expect, subjects)
    subs = [await nc.subscribe(kill_ack_all(subjects), cb=rnd.on_ack),
            await nc.subscribe(subjects.hb_all, cb=rnd.on_heartbeat)] if timeout_s > 0 else []
    written = await publish_kill(nc, msg, subjects)
    if subs:
        finder = asyncio.create_task(_find_roster(nc, rnd, subjects), name="qtd-kill-roster")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await rnd.done.wait()
        finder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await finder
        if rnd.roster is None:  # the wait ended first: the heartbeats heard so far
            rnd.from_heartbeats()
        for sub in subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
    return rnd.report(msg, written.kills)
