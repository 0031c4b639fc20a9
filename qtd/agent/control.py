"""Control messages: the kill switch over NATS and request/reply commands to one agent.

Wire format (msgspec JSON), subjects under the configured prefix (default ``qtd``):

=================================  ==========================  ==============================
subject                            payload                     who
=================================  ==========================  ==============================
``<prefix>.ctl.kill`` (core) and   :class:`KillMessage`        operator (``qtd kill``),
KV ``qtd_control`` key ``kill``                                leader → every agent
``<prefix>.ack.kill.<node>``       :class:`~qtd.events.KillAck`  agent → whoever listens
``<prefix>.ctl.<node>.<verb>``     :class:`CommandRequest` →   operator / leader → agent
(request/reply)                    :class:`CommandReply`
=================================  ==========================  ==============================

The acknowledgement subject lives under ``ack.`` rather than ``ctl.``, so it can never be
mistaken for a command (``ctl.<node>.<verb>``, where ``kill`` could be a node name) and a
NATS account can let agents publish acks without letting them publish commands.

The KV key holds the *current* kill (an agent that starts reads it and starts HALTED); the
core message makes it immediate. Agents apply each kill ``id`` once; a repeated core message
gets an acknowledgement with ``duplicate: true``. Deleting the key releases the kill for
agents that start later; it never resumes trading by itself (that needs ``resume`` with an
operator and a reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from qtd.bus import CONTROL_BUCKET, KILL_KEY, Subjects
from qtd.bus.subjects import check_token
from qtd.events import DECODE_ERRORS, KillAck, Scope
from qtd.risk.kill import KillCommand


class KillMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A kill switch activation on the wire (core ``<prefix>.ctl.kill`` and KV ``kill``).

    Attributes:
        id: unique id of this activation (agents apply each id once).
        scope / key: GLOBAL (key ""), ACCOUNT, STRATEGY or SYMBOL and its key.
        reason / operator: why and who (shown in events and pages).
        flatten: also close the scope's positions with reduce-only market orders.
        source: ``"cli"``, ``"leader"``.
        ts_ns: when it was issued, UTC ns.
    """

    id: str
    scope: Scope = Scope.GLOBAL
    key: str = ""
    reason: str
    flatten: bool = False
    operator: str = ""
    source: str = "cli"
    ts_ns: int = 0

    def command(self) -> KillCommand:
        """The risk-layer command (:meth:`qtd.execution.OrderRouter.kill`)."""
        return KillCommand(scope=self.scope, key=self.key, reason=self.reason,
                           flatten=self.flatten, operator=self.operator, source=self.source)


class CommandRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Body of a ``<prefix>.ctl.<node>.<verb>`` request (every field optional for status).

    Attributes:
        operator / reason: required by ``resume`` (and recorded for every verb).
        scope / key: the scope of ``halt``, ``resume`` and ``flatten`` (default GLOBAL).
    """

    operator: str = ""
    reason: str = ""
    scope: Scope = Scope.GLOBAL
    key: str = ""


class CommandReply(msgspec.Struct, frozen=True, kw_only=True):
    """Reply to a command: ``ok``, a one-line ``message`` and verb-specific ``data``."""

    ok: bool
    node: str
    verb: str
    message: str = ""
    data: dict[str, Any] = {}


def kill_ack_subject(subjects: Subjects, node: str) -> str:
    """``<prefix>.ack.kill.<node>`` (see the module docstring)."""
    return f"{subjects.prefix}.ack.kill.{check_token('node', node)}"


def kill_ack_all(subjects: Subjects) -> str:
    """``<prefix>.ack.kill.*``: every agent's kill acknowledgement."""
    return f"{subjects.prefix}.ack.kill.*"


def new_kill(*, reason: str, scope: Scope = Scope.GLOBAL, key: str = "", flatten: bool = False,
             operator: str = "", source: str = "cli") -> KillMessage:
    """A :class:`KillMessage` with a fresh id and the current time."""
    return KillMessage(id=uuid.uuid4().hex[:16], scope=scope, key=key, reason=reason,
                       flatten=flatten, operator=operator, source=source, ts_ns=time.time_ns())


async def send_kill(nc: Client, msg: KillMessage, *, prefix: str = "qtd",
                    wait_acks_s: float = 0.0, expect: int = 0) -> list[KillAck]:
    """Set the kill key in ``qtd_control`` and broadcast on ``<prefix>.ctl.kill``.

    Args:
        nc: a connected client (the bucket must exist: :func:`qtd.bus.ensure_jetstream`).
        msg: the kill (:func:`new_kill`).
        prefix: subject prefix.
        wait_acks_s: seconds to collect acknowledgements (0: do not wait).
        expect: stop waiting once this many distinct nodes acknowledged (0: wait it out).

    Returns:
        Acknowledgements received for ``msg.id``, one per node.

    Raises:
        nats.errors.Error, nats.js.errors.Error: NATS refused the KV put or the publish.
    """
    subjects = Subjects(prefix)
    acks: dict[str, KillAck] = {}
    done = asyncio.Event()

    async def on_ack(m: Any) -> None:
        try:
            ack = msgspec.json.decode(m.data, type=KillAck)
        except DECODE_ERRORS:
            return
        if ack.kill_id == msg.id:
            acks.setdefault(ack.node, ack)
            if expect and len(acks) >= expect:
                done.set()

    sub = await nc.subscribe(kill_ack_all(subjects), cb=on_ack) if wait_acks_s > 0 else None
    body = msgspec.json.encode(msg)
    kv = await nc.jetstream().key_value(CONTROL_BUCKET)
    await kv.put(KILL_KEY, body)
    await nc.publish(subjects.ctl_kill, body)
    await nc.flush()
    if sub is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), wait_acks_s)
        await sub.unsubscribe()
    return list(acks.values())


async def release_kill(nc: Client) -> bool:
    """Delete the kill key (agents that start later start ACTIVE; running agents stay as
    they are until an operator resumes them). Returns False if no kill was set."""
    kv = await nc.jetstream().key_value(CONTROL_BUCKET)
    try:
        await kv.get(KILL_KEY)
    except KeyNotFoundError:
        return False
    await kv.delete(KILL_KEY)
    return True


async def read_kill(nc: Client) -> KillMessage | None:
    """The kill currently set in the KV bucket, or None.

    A value that does not decode counts as a GLOBAL kill (fail safe).
    """
    kv = await nc.jetstream().key_value(CONTROL_BUCKET)
    try:
        entry = await kv.get(KILL_KEY)
    except KeyNotFoundError:
        return None
    return decode_kill(entry.value or b"", revision=entry.revision or 0)


def decode_kill(data: bytes, *, revision: int = 0) -> KillMessage:
    """Decode a kill message; garbage becomes a GLOBAL kill naming the problem."""
    try:
        return msgspec.json.decode(data, type=KillMessage)
    except DECODE_ERRORS as exc:
        return KillMessage(id=f"undecodable-{revision}-{len(data)}",
                           reason=f"undecodable kill message ({exc})", source="kv")


async def request(nc: Client, node: str, verb: str, req: CommandRequest, *,
                  prefix: str = "qtd", timeout_s: float = 5.0) -> CommandReply:
    """Send one command to ``node`` and wait for its reply.

    Raises:
        nats.errors.TimeoutError: no reply within ``timeout_s`` seconds (agent down?).
    """
    subject = Subjects(prefix).ctl(node, verb)
    reply = await nc.request(subject, msgspec.json.encode(req), timeout=timeout_s)
    return msgspec.json.decode(reply.data, type=CommandReply)
