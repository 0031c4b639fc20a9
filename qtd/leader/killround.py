"""One kill's acknowledgements as the leader tracks them (:mod:`qtd.leader.kill_switch`):
the ack as read off the wire, the round of a kill, and what a resume did."""

from __future__ import annotations

import asyncio

import msgspec

from qtd.control import KillCommand
from qtd.events import AckStage, TradingState
from qtd.fleetsnapshot import ActiveKill


class AckWire(msgspec.Struct, kw_only=True):
    """What the leader reads from an acknowledgement (extra fields are ignored)."""

    node: str
    kill_id: str = ""
    state: str = ""
    reason: str = ""
    canceled: list[str] = []
    flatten_orders: int = 0
    duplicate: bool = False
    stage: str = AckStage.DURABLE.value  # an older agent's single ack: sent once durable


class KillRound:
    """One kill and its acknowledgements.

    Attributes:
        kill: the kill message broadcast.
        kill_id: its id.
        t0: ``time.perf_counter()`` at the decision, seconds.
        expected: nodes known from heartbeats at the decision.
        latency_s: acknowledging node -> seconds from the decision to its first ack
            (the kill in force there).
        acks: acknowledging node -> its first acknowledgement.
        durable_s: node -> seconds from the decision to its durable ack.
        durable: node -> its durable acknowledgement.
        all_acked: set once every expected node acknowledged.
        durable_seen: set at each durable ack (cleared by the watcher that waits on it).
    """

    def __init__(self, kill: KillCommand, t0: float, expected: set[str]) -> None:
        self.kill = kill
        self.kill_id = kill.id
        self.t0 = t0
        self.expected = expected
        self.latency_s: dict[str, float] = {}
        self.acks: dict[str, AckWire] = {}
        self.durable_s: dict[str, float] = {}
        self.durable: dict[str, AckWire] = {}
        self.all_acked = asyncio.Event()
        self.durable_seen = asyncio.Event()
        if not expected:
            self.all_acked.set()

    def missing(self) -> list[str]:
        """Expected nodes that have not acknowledged."""
        return sorted(self.expected - set(self.acks))

    def not_durable(self) -> list[str]:
        """Nodes that acknowledged the kill in force but not yet durable."""
        return sorted(set(self.acks) - set(self.durable))


class ResumeResult(msgspec.Struct, kw_only=True):
    """What a resume did.

    Attributes:
        released: ids of the kills removed from the set.
        scopes: ``SCOPE:key`` the agents were asked to resume.
        still_active: the kills still in force afterwards (trading stays halted there).
        agents: node -> its reply per scope (``"ok: ..."``, ``"refused: ..."``,
            ``"no reply"``).
    """

    released: list[str] = []
    scopes: list[str] = []
    still_active: list[ActiveKill] = []
    agents: dict[str, str] = {}


def ack_state(text: str) -> TradingState:
    """An ack's ``state`` as a TradingState (an unknown one reads as HALTED: it acked)."""
    try:
        return TradingState(text)
    except ValueError:
        return TradingState.HALTED
