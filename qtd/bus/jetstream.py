"""JetStream setup: the ``QTD_EVENTS`` stream and the ``qtd_control`` KV bucket.

:func:`ensure_jetstream` is idempotent and safe to run from every process at start: it
creates what is missing, updates settings that can change without losing meaning
(duplicate window, max age, max bytes, discard policy, replicas, direct get, KV history),
and refuses, naming the difference, when an existing stream differs in what defines it
(subjects, storage type, retention).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.errors import Error as JetStreamError
from nats.js.kv import KeyValue

from qtd.bus.subjects import DEFAULT_PREFIX, Subjects
from qtd.errors import ConfigError, OperationalError

log = logging.getLogger("qtd.bus.jetstream")

EVENTS_STREAM = "QTD_EVENTS"
CONTROL_BUCKET = "qtd_control"
KILL_KEY = "kill"
"""Key of the global kill switch in :data:`CONTROL_BUCKET`."""

DEFAULT_DUPLICATE_WINDOW = 120.0
DEFAULT_MAX_AGE = 7 * 24 * 3600.0
DEFAULT_KV_HISTORY = 16
_KV_MAX_HISTORY = 64


@dataclass(frozen=True, slots=True)
class JetStreamSetup:
    """What :func:`ensure_jetstream` found or made.

    Attributes:
        stream: the events stream's info after any create/update.
        control: handle on the control KV bucket.
        changes: what was done, e.g. ``("created stream QTD_EVENTS",)``; empty when all
            was already in place.
    """

    stream: StreamInfo
    control: KeyValue
    changes: tuple[str, ...]


def _stream_config(
    name: str, subjects: Subjects, replicas: int, max_age: float, max_bytes: int,
    duplicate_window: float,
) -> StreamConfig:
    return StreamConfig(
        name=name,
        description="qtd events: agent -> leader (the agent's SQLite store is the record)",
        subjects=[subjects.evt_all],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
        max_age=max_age,
        max_bytes=max_bytes,
        duplicate_window=duplicate_window,
        # direct get by subject: the agent's outbox audit reads its node's last event with
        # $JS.API.DIRECT.GET.<stream>.<prefix>.evt.<node>.>, which the ACL can limit per node
        allow_direct=True,
    )


# Fields that define what the stream is: a difference is an operator decision.
_FIXED = ("subjects", "storage", "retention")
# Fields qtd owns and may update in place.
_TUNABLE = ("duplicate_window", "max_age", "max_bytes", "discard", "num_replicas",
            "allow_direct")


def _norm(field: str, value: Any) -> Any:
    if field in ("max_age", "duplicate_window"):
        return float(value or 0)
    if field == "max_bytes":
        return -1 if value is None else value
    if field == "subjects":
        return sorted(value or [])
    if field == "allow_direct":
        return bool(value)
    return value


def _diff(have: StreamConfig, want: StreamConfig, fields: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for f in fields:
        h, w = _norm(f, getattr(have, f)), _norm(f, getattr(want, f))
        if h != w:
            out[f] = (h, w)
    return out


def _describe(diff: dict[str, Any]) -> str:
    return ", ".join(f"{f}: {h!r} -> {w!r}" for f, (h, w) in diff.items())


async def _ensure_stream(js: JetStreamContext, want: StreamConfig) -> tuple[StreamInfo, str]:
    assert want.name is not None
    try:
        info = await js.stream_info(want.name)
    except NotFoundError:
        try:
            return await js.add_stream(want), f"created stream {want.name}"
        except BadRequestError:
            info = await js.stream_info(want.name)  # lost a creation race: verify instead
    fixed = _diff(info.config, want, _FIXED)
    if fixed:
        raise OperationalError(
            f"JetStream stream {want.name} exists with a different definition "
            f"({_describe(fixed)}; have -> want). qtd will not change it: check the subject "
            f"prefix, or back up and delete the stream (nats stream rm {want.name})",
            stream=want.name, differences=fixed,
        )
    tunable = _diff(info.config, want, _TUNABLE)
    if not tunable:
        return info, ""
    updated = info.config.evolve(**{f: getattr(want, f) for f in tunable})
    try:
        info = await js.update_stream(updated)
    except JetStreamError as e:
        raise OperationalError(
            f"JetStream refused to update stream {want.name} ({_describe(tunable)}): {e}",
            stream=want.name, differences=tunable,
        ) from e
    return info, f"updated stream {want.name} ({_describe(tunable)})"


async def _ensure_kv(
    js: JetStreamContext, bucket: str, history: int, replicas: int, *, rollups: bool = True
) -> tuple[KeyValue, str]:
    stream_name = f"KV_{bucket}"
    created = False
    try:
        info = await js.stream_info(stream_name)
    except NotFoundError:
        await js.create_key_value(KeyValueConfig(
            bucket=bucket, history=history, replicas=replicas, storage=StorageType.FILE,
            description="qtd control state: kill switch, admitted params",
        ))
        info, created = await js.stream_info(stream_name), True
    if info.config.storage != StorageType.FILE:
        raise OperationalError(
            f"KV bucket {bucket} exists with storage {info.config.storage}, qtd wants file "
            f"storage: back up and delete it (nats kv rm {bucket})",
            bucket=bucket, storage=str(info.config.storage),
        )
    have = {"max_msgs_per_subject": info.config.max_msgs_per_subject,
            "num_replicas": info.config.num_replicas}
    want: dict[str, Any] = {"max_msgs_per_subject": history, "num_replicas": replicas}
    if not rollups:  # nats-py creates every KV bucket with rollups allowed
        have["allow_rollup_hdrs"], want["allow_rollup_hdrs"] = (
            bool(info.config.allow_rollup_hdrs), False)
    diff = {k: (have[k], want[k]) for k in want if have[k] != want[k]}
    note = f"created KV bucket {bucket}" if created else ""
    if diff:
        try:
            await js.update_stream(info.config.evolve(**want))
        except JetStreamError as e:
            raise OperationalError(
                f"JetStream refused to update KV bucket {bucket} ({_describe(diff)}): {e}",
                bucket=bucket, differences=diff,
            ) from e
        if not created:
            note = f"updated KV bucket {bucket} ({_describe(diff)})"
    return await js.key_value(bucket), note


def _check_args(
    replicas: int, max_age: float, max_bytes: int, duplicate_window: float, kv_history: int
) -> None:
    rules = [
        ("replicas", replicas, 1 <= replicas <= 5, "must be 1..5"),
        ("duplicate_window", duplicate_window, duplicate_window > 0, "must be > 0 seconds"),
        ("max_age", max_age, max_age == 0 or max_age >= duplicate_window,
         "must be 0 (no limit) or >= duplicate_window seconds"),
        ("max_bytes", max_bytes, max_bytes == -1 or max_bytes > 0,
         "must be -1 (no limit) or > 0 bytes"),
        ("kv_history", kv_history, 1 <= kv_history <= _KV_MAX_HISTORY,
         f"must be 1..{_KV_MAX_HISTORY}"),
    ]
    for field, value, ok, rule in rules:
        if not ok:
            raise ConfigError(
                f"ensure_jetstream: {field} = {value!r}: {rule}",
                source="<arg>", field=field, value=value, rule=rule,
            )


async def ensure_jetstream(
    js: JetStreamContext,
    prefix: str = DEFAULT_PREFIX,
    replicas: int = 1,
    *,
    max_age: float = DEFAULT_MAX_AGE,
    max_bytes: int = -1,
    duplicate_window: float = DEFAULT_DUPLICATE_WINDOW,
    kv_history: int = DEFAULT_KV_HISTORY,
    stream: str = EVENTS_STREAM,
    bucket: str = CONTROL_BUCKET,
) -> JetStreamSetup:
    """Create or verify the events stream and the control KV bucket. Idempotent.

    The stream takes ``<prefix>.evt.>`` with file storage, limits retention and discard-old.

    Args:
        js: a JetStream context (``nc.jetstream()``).
        prefix: the subject prefix.
        replicas: stream and bucket replicas (3 in a cluster, 1 for a single server).
        max_age: seconds an event stays in the stream; 0 keeps it until ``max_bytes``.
        max_bytes: stream size cap in bytes (oldest dropped first); -1 for no cap.
        duplicate_window: seconds within which a repeated ``Nats-Msg-Id`` is dropped.
        kv_history: values kept per key in the control bucket (1..64).
        stream: the stream name.
        bucket: the KV bucket name.

    Returns:
        The stream info, the KV handle and the list of changes made.

    Raises:
        ConfigError: an argument is out of range.
        OperationalError: the stream exists with different subjects, storage or retention,
            or the KV bucket with a different storage, or JetStream refused an update. The
            message names the difference.
    """
    subjects = Subjects(prefix)
    _check_args(replicas, max_age, max_bytes, duplicate_window, kv_history)
    want = _stream_config(stream, subjects, replicas, max_age, max_bytes, duplicate_window)
    info, s_note = await _ensure_stream(js, want)
    # No rollups on the control bucket: a publish with ``Nats-Rollup: all`` purges every other
    # key and nats-server checks nothing beyond the publish itself, so the agent login that may
    # write its test key ``preflight.<node>`` (qtd.bus.logins) would erase the kill set. qtd
    # never purges a control key (a KV purge is a rollup).
    kv, kv_note = await _ensure_kv(js, bucket, kv_history, replicas, rollups=False)
    changes = tuple(n for n in (s_note, kv_note) if n)
    for note in changes:
        log.info("jetstream.ensure change=%r", note)
    return JetStreamSetup(stream=info, control=kv, changes=changes)


DEPLOY_BUCKET = "qtd_deploy"
"""Fleet deploys (:mod:`qtd.deploy`): key ``desired.<bot>`` is the version every node should
run, ``version.<bot>.<n>`` every version ever deployed (the history)."""
SOURCES_BUCKET = "qtd_sources"
"""Strategy sources by content: key = sha256 hex of the file's bytes (never overwritten)."""


async def ensure_deploy_kv(js: JetStreamContext, replicas: int = 1
                           ) -> tuple[KeyValue, KeyValue]:
    """Create or verify the deploy buckets (:data:`DEPLOY_BUCKET`, :data:`SOURCES_BUCKET`),
    file storage, like the control bucket. Idempotent.

    Returns:
        (deploy bucket, sources bucket).

    Raises:
        OperationalError: a bucket exists with another storage, or JetStream refused an
            update.
    """
    deploy, a = await _ensure_kv(js, DEPLOY_BUCKET, DEFAULT_KV_HISTORY, replicas)
    sources, b = await _ensure_kv(js, SOURCES_BUCKET, 1, replicas)
    for note in (a, b):
        if note:
            log.info("jetstream.ensure change=%r", note)
    return deploy, sources
