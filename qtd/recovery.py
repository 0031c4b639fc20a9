"""A store that went backwards: find it (the outbox audit) and recover its lost tail from
JetStream (``qtd recover``).

The agent's SQLite store is the record; JetStream holds what the outbox published from it,
named ``Nats-Msg-Id = <node>:<incarnation>:<seq>``. An event is published only after it is
stored, so the stream can never hold a seq of this store's incarnation that the store lacks —
unless the store lost committed events: its WAL deleted after a crash, an older copy of
``events.db`` restored. Such a store would reuse the lost seqs for new events (a different
event under an id the leader already holds) and would trade on positions missing the lost
fills. :func:`check_store` finds it from the node's last event in the stream:

* that event's seq is beyond the store's last seq: **behind**;
* the store holds that seq but a different event there: **forked** (the store lost a tail,
  then stored new events under the lost seqs before the check ran, e.g. the start-up
  reconciliation).

Either raises :class:`StoreBehind`; the agent halts and publishes nothing more
(:mod:`qtd.agent.storebehind`) until an operator runs :func:`recover` with the agent
stopped: the stream's events from the fork point on are written back into the store in
order, each at its own seq (continuity checked against the store's last event before the
fork), and the events the store stored after the loss — never published — are re-appended
after them with new seqs (also written to a JSON-lines file beside the store), so nothing is
lost and the refusal (GLOBAL HALTED) stays in the history for the operator to resume.

The node's last event is read with JetStream's direct get by subject,
``$JS.API.DIRECT.GET.QTD_EVENTS.<prefix>.evt.<node>.>`` (stream ``allow_direct``): the
subject is in the API subject, so the NATS ACL can grant each agent exactly its own node's
last event (a ``STREAM.MSG.GET`` names the subject in its body, which an ACL cannot limit).
See https://docs.nats.io/reference/reference-protocols/nats_api_reference and nats-server
ADR-31 (JetStream Direct Get).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from qtd.bus import EVENTS_STREAM, Subjects
from qtd.errors import OperationalError
from qtd.events import DECODE_ERRORS, AnyEvent, from_json, to_json
from qtd.store import EventStore

log = logging.getLogger("qtd.recovery")
CHECK = "store_behind"
READ_BATCH = 500


class StoreBehind(OperationalError):
    """This node's events in JetStream go beyond its store (module docstring).

    Attributes:
        node, incarnation: the store's.
        store_last: the store's last seq; ``stream_last``: the seq of the node's last event
            in the stream (this incarnation).
        forked_at: the seq where the store holds a different event than the stream (0: the
            store is simply behind).
    """

    def __init__(self, store: EventStore, stream_last: int, forked_at: int = 0,
                 detail: str = "") -> None:
        how = (f"holds a different event at seq {forked_at} ({detail})" if forked_at
               else f"ends at seq {store.last_seq}")
        super().__init__(
            f"event store {store.path} is behind JetStream: the stream holds this node's "
            f"events up to seq {stream_last} (incarnation {store.incarnation}), the store "
            f"{how}; committed events were lost (WAL deleted, older copy restored?). Trading "
            "HALTED, nothing published; stop the agent and run: qtd recover "
            "--config <agent.toml>", node=store.node, incarnation=store.incarnation,
            store_last=store.last_seq, stream_last=stream_last, forked_at=forked_at)
        self.store_last, self.stream_last, self.forked_at = (store.last_seq, stream_last,
                                                              forked_at)


def origin_seq(mid: str, node: str, incarnation: str) -> int:
    """The seq in a ``<node>:<incarnation>:<seq>`` Msg-Id of this store (0 otherwise); an
    incarnation may carry ``~<random>`` (an id re-taken, :mod:`qtd.outbox_ids`)."""
    parts = mid.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != node or parts[1].partition("~")[0] != incarnation:
        return 0
    return int(parts[2]) if parts[2].isdigit() else 0


def node_subjects(subjects: Subjects, node: str) -> str:
    """``<prefix>.evt.<node>.>``: every event subject of one node."""
    return subjects.evt_filter(node).rsplit(".", 2)[0] + ".>"


async def last_in_stream(js: JetStreamContext, subjects: Subjects, node: str
                         ) -> tuple[str, bytes] | None:
    """``(Nats-Msg-Id, payload)`` of the node's last event in ``QTD_EVENTS`` (None: none).

    Raises:
        nats.errors.Error, nats.js.errors.Error: the server did not answer (or refused).
    """
    try:
        msg = await js.get_last_msg(EVENTS_STREAM, node_subjects(subjects, node), direct=True)
    except nats.js.errors.NotFoundError:
        return None
    return (msg.headers or {}).get("Nats-Msg-Id", ""), msg.data or b""


async def check_store(store: EventStore, mid: str, data: bytes) -> int:
    """Compare the node's last event in the stream with the store.

    Returns:
        Its seq (0: another incarnation's, or none).

    Raises:
        StoreBehind: the stream's seq is beyond the store's last, or the store holds a
            different event at it.
    """
    seq = origin_seq(mid, store.node, store.incarnation)
    if seq == 0:
        return 0
    if seq > store.last_seq:
        raise StoreBehind(store, seq)
    mine = await store.query(after_seq=seq - 1, limit=1)
    try:
        theirs = from_json(data)
    except DECODE_ERRORS:
        theirs = None
    if mine and mine[0].seq == seq and mine[0] != theirs:
        kind = type(theirs).__name__ if theirs is not None else "undecodable"
        raise StoreBehind(store, seq, seq, f"stream: {kind}, store: {type(mine[0]).__name__}")
    return seq


# --- recovery (qtd recover) ------------------------------------------------------------


class Recovery(msgspec.Struct, kw_only=True):
    """What :func:`recover` did (or, with ``dry_run``, would do).

    Attributes:
        store_last: the store's last seq before; ``stream_last``: the node's last seq in the
            stream (this incarnation).
        fork: first seq taken from the stream (``store_last + 1`` if the store was not
            forked); ``restored``: events written back from the stream.
        local: events the store held from ``fork`` on (never published), re-appended after
            the restored ones; ``local_file``: where they were also written ("" if none).
        last_seq: the store's last seq after.
    """

    store_last: int
    stream_last: int
    fork: int
    restored: int
    local: int
    local_file: str
    last_seq: int


async def read_stream(js: JetStreamContext, subjects: Subjects, store: EventStore,
                      since_ns: int) -> dict[int, AnyEvent]:
    """This store's events (node and incarnation) in the stream from ``since_ns`` (stream
    time, UTC ns) on, by seq, through an ephemeral pull consumer (deleted after).

    Raises:
        nats.errors.Error, nats.js.errors.Error: the stream could not be read (a user without
            the right to create a consumer on ``QTD_EVENTS`` gets a timeout).
    """
    start = datetime.fromtimestamp(since_ns / 1e9, UTC)
    cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start,
                         ack_policy=AckPolicy.NONE, inactive_threshold=60.0)
    sub = await js.pull_subscribe(node_subjects(subjects, store.node), stream=EVENTS_STREAM,
                                  config=cfg)
    out: dict[int, AnyEvent] = {}
    try:
        while True:
            try:
                msgs = await sub.fetch(READ_BATCH, timeout=2.0)
            except nats.errors.TimeoutError:
                break
            for m in msgs:
                seq = origin_seq((m.headers or {}).get("Nats-Msg-Id", ""), store.node,
                                 store.incarnation)
                if seq:
                    out[seq] = from_json(m.data)
            if msgs[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out


async def fork_point(store: EventStore, stream: dict[int, AnyEvent]) -> int:
    """The first seq where the store lacks the stream's event (``store.last_seq + 1`` if
    the store holds every one it has in common with ``stream``)."""
    common = sorted(s for s in stream if s <= store.last_seq)
    if not common:
        return store.last_seq + 1
    mine = {e.seq: e for e in await store.query(after_seq=common[0] - 1,
                                                 limit=common[-1] - common[0] + 1)}
    for seq in common:
        if mine.get(seq) != stream[seq]:
            return seq
    return store.last_seq + 1


def _check_continuity(store: EventStore, stream: dict[int, AnyEvent], fork: int,
                      last: int) -> None:
    missing = [s for s in range(max(1, fork - 1), last + 1) if s not in stream]
    if fork > 1 and fork - 1 in missing:
        raise OperationalError(
            f"cannot verify continuity: the stream read has no event at seq {fork - 1} (the "
            f"store's last before seq {fork}); read further back (--lookback-s) or the "
            "stream no longer holds it (max_age)", seq=fork - 1, path=str(store.path))
    if missing:
        raise OperationalError(
            f"the stream lacks seqs {missing[0]}..{missing[-1]} of this store between "
            f"{fork} and {last}: they cannot be recovered from JetStream; nothing changed",
            first=missing[0], last=missing[-1], path=str(store.path))


async def recover(store: EventStore, js: JetStreamContext, subjects: Subjects, *,
                  lookback_s: float = 600.0, dry_run: bool = False) -> Recovery:
    """Write the stream's events this store lost back into it (module docstring).

    Args:
        store: the agent's store, opened for writing (the agent stopped).
        js: JetStream context of a user that may read ``QTD_EVENTS``.
        subjects: subject builder (prefix).
        lookback_s: how far before the store's last event (seconds) the stream is read,
            for the continuity check and clock skew between the agent and the NATS server.
        dry_run: find and check, change nothing.

    Raises:
        OperationalError: the store is not behind; or continuity cannot be verified (the
            stream no longer holds the seq before the fork, or lacks seqs in the tail).
        nats.errors.Error, nats.js.errors.Error: the stream could not be read.
    """
    last = await last_in_stream(js, subjects, store.node)
    stream_last = origin_seq(last[0], store.node, store.incarnation) if last else 0
    try:
        if last is not None:
            await check_store(store, *last)
    except StoreBehind:
        pass
    else:
        raise OperationalError(
            f"{store.path}: not behind JetStream (store last seq {store.last_seq}, stream "
            f"last seq {stream_last} of incarnation {store.incarnation}): nothing to recover",
            store_last=store.last_seq, stream_last=stream_last)
    assert last is not None  # check_store raised StoreBehind
    since = await _since_ns(store, from_json(last[1]), lookback_s)
    stream = await read_stream(js, subjects, store, since)
    fork = await fork_point(store, stream)
    _check_continuity(store, stream, fork, stream_last)
    local = await store.query(after_seq=fork - 1) if fork <= store.last_seq else []
    restored = [stream[s] for s in range(fork, stream_last + 1)]
    report = Recovery(store_last=store.last_seq, stream_last=stream_last, fork=fork,
                      restored=len(restored), local=len(local), local_file="",
                      last_seq=fork - 1 + len(restored) + len(local))
    if dry_run:
        return report
    if local:
        path = store.path.with_name(f"{store.path.name}.local-{fork}-{store.last_seq}.jsonl")
        path.write_bytes(b"".join(to_json(e) + b"\n" for e in local))
        report.local_file = str(path)
    await _rewrite(store, fork, restored, local)
    await store.set_watermark(stream_last)
    return report


async def _since_ns(store: EventStore, theirs: AnyEvent, lookback_s: float) -> int:
    """Stream time to read from: ``lookback_s`` before the store's newest event not younger
    than the stream's last one (the store's last event before the loss; events it stored
    after the loss are younger)."""
    mine = await store.query(until_ns=theirs.ts_event + 1, newest_first=True, limit=1)
    anchor = mine[0].ts_init if mine else theirs.ts_init
    return max(0, anchor - int(lookback_s * 1e9))


async def _rewrite(store: EventStore, fork: int, restored: Sequence[AnyEvent],
                   local: Sequence[AnyEvent]) -> None:
    stored = await store.replace_after(fork - 1, [*restored, *local])
    got = [e.seq for e in stored[:len(restored)]]
    want = [e.seq for e in restored]
    if got != want:  # replace_after assigns fork, fork+1, ...: a hole would show here
        raise OperationalError(f"{store.path}: recovered seqs {got[:3]}... differ from the "
                               f"stream's {want[:3]}...", path=str(store.path))
