"""Counts of NATS messages a process received and could not read (rejected, not applied).

One :data:`REJECTED` per process: the leader's subscriptions (events from JetStream,
heartbeats, PnL ticks, kill acks) call :meth:`RejectCounter.reject`, which logs the subject
and the decoder's message and counts the message by kind; the status page exports the
counts as ``qtd_bad_messages_total{kind}`` and tests read them. A rejected message never
changes state. An event whose subject, payload and ``Nats-Msg-Id`` name different nodes
(:func:`qtd.leader.ingest.check_origin`) is a forgery: :meth:`RejectCounter.forged` counts it
under kind ``event`` and per ``(subject node, claimed node)``, exported as
``qtd_forged_events_total{subject_node, claimed_node}``.
(The agent audits a malformed control request as a ``CommandAudit`` with
``ok = false`` in its store instead; a kill that cannot be read is applied as a GLOBAL kill:
fail safe — unless :func:`server_reply` says NATS itself wrote it.)

nats-server does not check a request's *reply subject* against the requester's publish
permissions: any user may name ``qtd.ctl.kill`` as the reply subject of a JetStream API call
or of an event publish, and the server's answer lands there. Such answers have shapes no
qtd sender writes; :func:`server_reply` recognises them so a receiver ignores (and counts)
them instead of reading them as a garbled command.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any, Final

import msgspec

KINDS: Final = ("event", "heartbeat", "pnl", "kill_ack", "kill", "command")
"""The kinds of message the leader counts (each exported, 0 until one is rejected)."""


class RejectCounter:
    """Malformed-message counts by kind (:data:`KINDS`)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.forged_by: Counter[tuple[str, str]] = Counter()

    def reject(self, kind: str, subject: str, exc: Exception, log: logging.Logger) -> None:
        """Count one unreadable message and log it (subject and decoder error, no payload)."""
        self.counts[kind] += 1
        log.warning("bad_message kind=%s subject=%s error=%s total=%d", kind, subject, exc,
                    self.counts[kind])

    def forged(self, subject_node: str, claimed_node: str, subject: str, exc: Exception,
               log: logging.Logger) -> None:
        """Count one forged event (sent under ``subject_node``'s subject, claiming
        ``claimed_node``) and log it at ERROR."""
        self.counts["event"] += 1
        self.forged_by[(subject_node, claimed_node)] += 1
        log.error("forged_event subject=%s subject_node=%s claimed_node=%s error=%s total=%d",
                  subject, subject_node, claimed_node, exc,
                  self.forged_by[(subject_node, claimed_node)])

    @property
    def forged_total(self) -> int:
        return sum(self.forged_by.values())

    @property
    def total(self) -> int:
        return sum(self.counts.values())


REJECTED = RejectCounter()


def server_reply(data: bytes, headers: Mapping[str, str] | None) -> str | None:
    """What NATS itself sent when ``data`` is a server-generated message, else None.

    Recognised (nats-server's JetStream API, ADR-1/ADR-31 reply formats): a message with
    headers (JetStream deliveries, direct gets, status messages — qtd's own control
    messages never carry headers); a JSON object whose ``type`` starts with ``io.nats.``
    (API responses); one with an ``error`` object (API errors); one with ``stream`` and
    ``seq`` (the publish acknowledgement).
    """
    if headers:
        return "a message with NATS headers"
    try:
        doc: Any = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    if str(doc.get("type", "")).startswith("io.nats."):
        return f"a JetStream API response ({doc['type']})"
    if isinstance(doc.get("error"), dict):
        return "a JetStream API error"
    if "stream" in doc and "seq" in doc:
        return "a JetStream publish acknowledgement"
    return None


def reject_server_reply(kind: str, subject: str, data: bytes,
                        headers: Mapping[str, str] | None, log: logging.Logger) -> bool:
    """Count and log a message that NATS itself wrote on a control subject
    (:func:`server_reply`) as a rejected ``kind``; True when it was one (then ignore it)."""
    echo = server_reply(data, headers)
    if echo is None:
        return False
    REJECTED.reject(kind, subject, ValueError(f"not a {kind}: {echo}"), log)
    return True
