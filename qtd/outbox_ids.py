"""The ``Nats-Msg-Id`` of each event the outbox publishes, and the ids someone took first.

JetStream drops a publish whose ``Nats-Msg-Id`` it already holds within the stream's
duplicate window (PubAck ``duplicate: true``), *whatever subject* either came on. The NATS
ACL keeps an agent on its own subjects, not on its own Msg-Ids: an agent may publish under
``<prefix>.evt.<its node>.>`` with another node's next ids, and that node's real events would
then be dropped by JetStream as duplicates (the leader refuses the forgeries,
:mod:`qtd.leader.ingest`, but never sees the real events). So the outbox tells a legitimate
duplicate from a stolen id:

* a legitimate duplicate is a re-send of an event this node already published: its seq is
  at most the node's last seq found in the stream by the audit (:meth:`MsgIds.seen`, at
  every connect) or was sent before in this process (until an audit read the stream, every
  duplicate is taken as legitimate: nothing is known to tell them apart);
* a ``duplicate: true`` for the *first* send of a seq above that (or for any send of a
  seq already found stolen) is a stolen id: the event is not in the stream. It is
  re-published, in order (the outbox resets to the watermark as for a refused publish),
  under ``<node>:<incarnation>~<random>:<seq>``, an id nobody can have claimed in advance;
  the leader and the audit read the same origin ``(node, incarnation, seq)`` from it.
"""

from __future__ import annotations

import logging
import secrets

from qtd.bus import msg_id

log = logging.getLogger("qtd.outbox")


class MsgIds:
    """Msg-Ids of one store's events (module docstring).

    Args:
        node, incarnation: the store's.

    Attributes:
        floor: highest seq this node may have published before (no first send at or below);
            None until an audit read the stream (no id is then taken for stolen).
        stolen: seq -> the replacement id of each seq whose id another publisher took.
    """

    def __init__(self, node: str, incarnation: str) -> None:
        self.node, self.incarnation = node, incarnation
        self.floor: int | None = None
        self.stolen: dict[int, str] = {}
        self._first: set[int] = set()  # first sends not acknowledged yet

    def seen(self, seq: int) -> None:
        """This node's events up to ``seq`` are (or were) in the stream."""
        if self.floor is None or seq > self.floor:
            self.floor = seq
        self._first = {s for s in self._first if s > seq}

    def for_send(self, seq: int) -> str:
        """The id to publish ``seq`` under (records a first send)."""
        if self.floor is not None and seq > self.floor:
            self._first.add(seq)
            self.floor = seq
        return self.stolen.get(seq) or msg_id(self.node, self.incarnation, seq)

    def stolen_on_ack(self, seq: int, duplicate: bool) -> bool:
        """Record the PubAck of ``seq``; True if its id was taken by another publisher (the
        event is not in the stream and must be re-published under :attr:`stolen`)."""
        first = seq in self._first
        self._first.discard(seq)
        # a duplicate for a seq already found stolen may be the late ack of a re-send under
        # the taken id: never trust it (a fresh id costs at most one more copy in the stream)
        if not (duplicate and (first or seq in self.stolen)):
            return False
        taken = msg_id(self.node, self.incarnation, seq)
        self.stolen[seq] = f"{self.node}:{self.incarnation}~{secrets.token_hex(8)}:{seq}"
        log.error("outbox: Msg-Id %s was already in JetStream, not published by this node "
                  "(another publisher claimed it: a forgery?); re-publishing seq %d as %s",
                  taken, seq, self.stolen[seq])
        return True
