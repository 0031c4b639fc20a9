"""The control protocol over NATS: the kill switch and request/reply commands to one agent,
used by the agent, the leader and the CLI.

The shapes are in :mod:`qtd.control`. Wire format (msgspec JSON), subjects under the
configured prefix (default ``qtd``):

=================================  ==========================  ==============================
subject                            payload                     who
=================================  ==========================  ==============================
``<prefix>.ctl.kill`` (core) and   :class:`KillCommand`        operator (``qtd kill``),
KV ``qtd_control`` key ``kill``                                leader → every agent
``<prefix>.ack.kill.<node>``       :class:`~qtd.events.KillAck`  agent → whoever listens
``<prefix>.ctl.<node>.<verb>``     :class:`NodeRequest` →      operator / leader → agent
(request/reply)                    :class:`NodeReply`
=================================  ==========================  ==============================

The acknowledgement subject lives under ``ack.`` rather than ``ctl.``, so it can never be
mistaken for a command (``ctl.<node>.<verb>``, where ``kill`` could be a node name) and a
NATS account can let agents publish acks without letting them publish commands.

The KV key holds the **set of active kills** (:class:`KillSet`): every activation stays in it
until it is released on its own (:func:`release_kills`, by id), so a narrower kill never
replaces a wider one. Writers change it with compare-and-set on the key's revision
(:func:`update_kill_set`), so two writers (the leader tripping a cap, an operator's
``qtd kill``) never overwrite each other. An agent that starts applies every kill in the set
before its bots start; the core message makes a kill immediate. Agents apply each kill ``id``
once; a repeated core message gets an acknowledgement with ``duplicate: true``.

Each kill is acknowledged twice on the same subject (:class:`~qtd.events.AckStage`):
``stage: "in_force"`` the moment the scope is HALTED in the agent's memory, then
``stage: "durable"`` once its events are fsynced. A reader counts an agent as halted on the
first and as durable on the second. Peers that predate the field interoperate: an older
agent's single ack (sent after the fsync) decodes as ``durable``; an older reader ignores the
field and takes the first ack, which says "in force". Releasing a
kill from the set never resumes a running agent by itself (that needs ``resume`` with an
operator and a reason); an agent refuses to resume a scope that a kill still in the set holds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from qtd.bus import CONTROL_BUCKET, KILL_KEY, Subjects
from qtd.bus.subjects import check_token
from qtd.control import KillCommand, KillSet, NodeReply, NodeRequest, decode_kill_set
from qtd.errors import OperationalError
from qtd.events import DECODE_ERRORS, AckStage, KillAck


def kill_ack_subject(subjects: Subjects, node: str) -> str:
    """``<prefix>.ack.kill.<node>`` (see the module docstring)."""
    return f"{subjects.prefix}.ack.kill.{check_token('node', node)}"


def kill_ack_all(subjects: Subjects) -> str:
    """``<prefix>.ack.kill.*``: every agent's kill acknowledgement."""
    return f"{subjects.prefix}.ack.kill.*"


def ack_is_from(subjects: Subjects, subject: str, node: str) -> bool:
    """Whether an acknowledgement naming ``node`` came on that node's own subject: an agent
    may publish only on its own ``<prefix>.ack.kill.<node>`` (the server checks the
    subject, not the body), so an ack for another node is not believed."""
    return subject == f"{subjects.prefix}.ack.kill.{node}"


async def send_kill(nc: Client, msg: KillCommand, *, prefix: str = "qtd",
                    wait_acks_s: float = 0.0, expect: int = 0,
                    stage: AckStage = AckStage.DURABLE) -> list[KillAck]:
    """Add a kill to the set in ``qtd_control`` and broadcast it on ``<prefix>.ctl.kill``.

    Args:
        nc: a connected client (the bucket must exist: :func:`qtd.bus.ensure_jetstream`).
        msg: the kill (:func:`new_kill`).
        prefix: subject prefix.
        wait_acks_s: seconds to collect acknowledgements (0: do not wait).
        expect: stop waiting once this many distinct nodes acknowledged (0: wait it out).
        stage: the acknowledgements to collect: ``DURABLE`` (the stored one, with its
            cancels) or ``IN_FORCE``.

    Returns:
        Acknowledgements of that stage received for ``msg.id``, the first per node.

    Raises:
        nats.errors.Error, nats.js.errors.Error: NATS refused the KV write or the publish.
        OperationalError: the set kept changing under us (see :func:`update_kill_set`).
    """
    subjects = Subjects(prefix)
    acks: dict[str, KillAck] = {}
    done = asyncio.Event()

    async def on_ack(m: Any) -> None:
        try:
            ack = msgspec.json.decode(m.data, type=KillAck)
        except DECODE_ERRORS:
            return
        if (ack.kill_id == msg.id and ack.stage is stage
                and ack_is_from(subjects, m.subject, ack.node)):
            acks.setdefault(ack.node, ack)
            if expect and len(acks) >= expect:
                done.set()

    sub = await nc.subscribe(kill_ack_all(subjects), cb=on_ack) if wait_acks_s > 0 else None
    await publish_kill(nc, msg, subjects)
    if sub is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), wait_acks_s)
        await sub.unsubscribe()
    return list(acks.values())


async def publish_kill(nc: Client, msg: KillCommand, subjects: Subjects) -> KillSet:
    """Add ``msg`` to the kill set (compare-and-set), then broadcast it on
    ``<prefix>.ctl.kill`` and flush: the kill is out when this returns. The set goes first so
    that a write NATS refuses leaves nothing broadcast that the set does not hold.

    Returns:
        The set written (every active kill, ``msg`` last unless it was already in).

    Raises:
        nats.errors.Error, nats.js.errors.Error: NATS refused the KV write or the publish.
        OperationalError: the set kept changing under us (see :func:`update_kill_set`).
    """
    kv = await nc.jetstream().key_value(CONTROL_BUCKET)
    _, written = await update_kill_set(kv, lambda ks: ks.add(msg))
    await nc.publish(subjects.ctl_kill, msgspec.json.encode(msg))
    await nc.flush()
    return written


async def update_kill_set(kv: KeyValue, change: Callable[[KillSet], KillSet], *,
                          attempts: int = 50) -> tuple[KillSet, KillSet]:
    """Change the kill set with compare-and-set on the key's revision, retrying when another
    writer got in first.

    Args:
        kv: the ``qtd_control`` bucket.
        change: old set -> new set (pure; called again on every retry).
        attempts: tries before giving up.

    Returns:
        (the set before, the set written). Nothing is written when they are equal.

    Raises:
        OperationalError: ``attempts`` writers in a row got in first.
        nats.errors.Error, nats.js.errors.Error: NATS refused the read or the write.
    """
    for _ in range(attempts):
        try:
            entry = await kv.get(KILL_KEY)
        except KeyNotFoundError:  # never set, or deleted by an older qtd
            old, revision = KillSet(), None
        else:
            old, revision = decode_kill_set(entry.value or b"", revision=entry.revision or 0), \
                entry.revision
        new = change(old)
        if new == old:
            return old, new
        data = msgspec.json.encode(new)
        try:
            if revision is None:
                await kv.create(KILL_KEY, data)
            else:
                await kv.update(KILL_KEY, data, last=revision)
        except KeyWrongLastSequenceError:
            continue
        return old, new
    raise OperationalError(f"the kill set changed under {attempts} writes in a row; "
                           "try again", action="kill")


async def release_kills(nc: Client, ids: Iterable[str] | None = None) -> list[KillCommand]:
    """Remove kills from the set: those with ``ids``, or every one (``None``). Agents that
    start later no longer apply them; running agents stay as they are until an operator
    resumes them. Returns the kills removed."""
    kv = await nc.jetstream().key_value(CONTROL_BUCKET)
    wanted = None if ids is None else set(ids)
    old, new = await update_kill_set(
        kv, lambda ks: KillSet() if wanted is None else ks.without(wanted))
    return [k for k in old.kills if k.id not in new.ids()]


async def read_kills(nc: Client) -> KillSet:
    """The active kills in the KV bucket (empty set when none).

    A value that does not decode counts as a GLOBAL kill (fail safe).
    """
    kv = await nc.jetstream().key_value(CONTROL_BUCKET)
    try:
        entry = await kv.get(KILL_KEY)
    except KeyNotFoundError:
        return KillSet()
    return decode_kill_set(entry.value or b"", revision=entry.revision or 0)


async def request(nc: Client, node: str, verb: str, req: NodeRequest, *,
                  prefix: str = "qtd", timeout_s: float = 5.0) -> NodeReply:
    """Send one command to ``node`` and wait for its reply.

    Raises:
        nats.errors.TimeoutError: no reply within ``timeout_s`` seconds (agent down?).
    """
    subject = Subjects(prefix).ctl(node, verb)
    reply = await nc.request(subject, msgspec.json.encode(req), timeout=timeout_s)
    return msgspec.json.decode(reply.data, type=NodeReply)
