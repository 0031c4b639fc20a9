"""Counts of NATS messages a process received and could not read (rejected, not applied).

One :data:`REJECTED` per process: the leader's subscriptions (events from JetStream,
heartbeats, PnL ticks, kill acks) call :meth:`RejectCounter.reject`, which logs the subject
and the decoder's message and counts the message by kind; the status page exports the
counts as ``qtd_bad_messages_total{kind}`` and tests read them. A rejected message never
changes state. (The agent audits a malformed control request as a ``CommandAudit`` with
``ok = false`` in its store instead; a kill that cannot be read is applied as a GLOBAL kill:
fail safe.)
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Final

KINDS: Final = ("event", "heartbeat", "pnl", "kill_ack")
"""The kinds of message the leader counts (each exported, 0 until one is rejected)."""


class RejectCounter:
    """Malformed-message counts by kind (:data:`KINDS`)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def reject(self, kind: str, subject: str, exc: Exception, log: logging.Logger) -> None:
        """Count one unreadable message and log it (subject and decoder error, no payload)."""
        self.counts[kind] += 1
        log.warning("bad_message kind=%s subject=%s error=%s total=%d", kind, subject, exc,
                    self.counts[kind])

    @property
    def total(self) -> int:
        return sum(self.counts.values())


REJECTED = RejectCounter()
