"""The leader lease: one active leader per fleet, a warm standby takes over on expiry.

Every leader instance with ``[lease] enabled`` competes for one key (``lease.key``) in its own
JetStream KV bucket (``lease.bucket``, bucket TTL = ``lease.ttl_s``). The value names the
holder (:class:`LeaseRecord`).

* **Acquire**: the key is absent (never set, released, or expired by the bucket TTL) →
  ``kv.create`` (fails if another instance created it first); or the key has kept the same
  revision for ``ttl_s`` on this instance's own monotonic clock (its holder stopped renewing)
  → ``kv.update(key, value, last=revision)`` (fails if it moved meanwhile). Either way at most
  one contender wins, and never before ``ttl_s`` after the holder's last renewal was written.
* **Renew** every ``renew_s``: ``kv.update(key, value, last=<our revision>)``. A wrong
  revision means another instance took the lease: this one is passive at once. A renewal that
  cannot reach NATS is retried; the lease is held only until ``t_sent + ttl_s - renew_s`` of
  the last successful renewal (``t_sent``: when that request was *sent*), so the holder stops
  acting ``renew_s`` before any standby may take over, whatever the network does.
* **Release** (graceful stop): the key is deleted (revision-checked), so a standby takes over
  at its next poll instead of after ``ttl_s``.

:meth:`LeaderLease.is_active` is computed at each call from the monotonic clock (not from
the last loop tick), so a leader whose event loop stalled stops acting as soon as it resumes.
The remaining exposure is an action already in flight when the lease ran out (documented;
agents apply each kill id once, and a kill is the safe direction).

Reference: leases as in Gray & Cheriton, "Leases: an efficient fault-tolerant mechanism for
distributed file cache consistency" (SOSP 1989); NATS KV ``create``/``update`` are
compare-and-set on the key's last revision (JetStream ``Nats-Expected-Last-Subject-Sequence``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from qtd.clock import Clock
from qtd.errors import OperationalError
from qtd.events import DECODE_ERRORS
from qtd.leader.config import LeaseConfig

log = logging.getLogger("qtd.leader.lease")
_NET_ERRORS = (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError, OSError)
OnChange = Callable[[bool], Awaitable[None]]


class Standing(Protocol):
    """Whether this leader acts now: a :class:`LeaderLease`, or :class:`AlwaysActive`."""

    def is_active(self) -> bool: ...


class AlwaysActive:
    """The standing of a leader without ``[lease]``: it always acts."""

    def is_active(self) -> bool:
        """Always True."""
        return True


class LeaseRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The value of the lease key.

    Attributes:
        holder: the instance holding the lease (``lease.instance``).
        since_ns: when it acquired the lease, UTC ns.
        renewed_ns: when it last renewed, UTC ns.
        ttl_s: the holder's lease period, seconds.
    """

    holder: str
    since_ns: int
    renewed_ns: int
    ttl_s: float


_decoder = msgspec.json.Decoder(LeaseRecord)


async def lease_bucket(js: JetStreamContext, cfg: LeaseConfig, replicas: int = 1) -> KeyValue:
    """Create or bind the lease bucket (file storage, history 1, TTL ``cfg.ttl_s``).

    Raises:
        OperationalError: the bucket exists with another TTL (every instance must use the
            same ``ttl_s``; delete the bucket to change it).
    """
    try:
        info = await js.stream_info(f"KV_{cfg.bucket}")
    except nats.js.errors.NotFoundError:
        return await js.create_key_value(KeyValueConfig(
            bucket=cfg.bucket, history=1, ttl=cfg.ttl_s, replicas=replicas,
            storage=StorageType.FILE, description="qtd leader lease (one active leader)"))
    have = float(info.config.max_age or 0)
    if abs(have - cfg.ttl_s) > 1e-6:
        raise OperationalError(
            f"lease bucket {cfg.bucket} has ttl {have:g} s but lease.ttl_s = {cfg.ttl_s:g} s: "
            f"every leader instance must use the same ttl_s (or delete the bucket: "
            f"nats kv rm {cfg.bucket})", bucket=cfg.bucket, have=have, want=cfg.ttl_s)
    return await js.key_value(cfg.bucket)


class LeaderLease:
    """One instance's side of the lease (see the module docstring).

    Args:
        kv: the lease bucket (:func:`lease_bucket`).
        cfg: ``[lease]``; ``cfg.instance`` must be set.
        clock: for the timestamps in the record (decisions use ``time.monotonic``).

    Attributes:
        holder: the holder last seen in the key ("" when none).
        transitions: ``(monotonic s, active)`` of every change, oldest first.
    """

    def __init__(self, kv: KeyValue, cfg: LeaseConfig, clock: Clock) -> None:
        if not cfg.instance:
            raise ValueError("LeaderLease needs lease.instance")
        self.kv, self.cfg, self.clock = kv, cfg, clock
        self.instance = cfg.instance
        self.holder = ""
        self.transitions: list[tuple[float, bool]] = []
        self._held = False
        self._revision = 0
        self._since_ns = 0
        self._valid_until = 0.0
        self._seen: tuple[int, float] | None = None  # (revision, monotonic first seen)
        self._notified = False

    def is_active(self) -> bool:
        """This instance holds an unexpired lease right now."""
        return self._held and time.monotonic() < self._valid_until

    @property
    def revision(self) -> int:
        """Revision of our lease value (0 when not holding)."""
        return self._revision if self._held else 0

    async def run(self, stop: asyncio.Event, on_change: OnChange | None = None) -> None:
        """Acquire / renew until ``stop`` is set, then release. Cancelled instead (a crash
        of the leader's tasks), it does not release: a standby waits the lease out.

        Args:
            stop: set to stop (and release).
            on_change: awaited with True when this instance became active, False when it
                stopped being active (lost, expired or released); its errors are logged.
        """
        while not stop.is_set():
            await self.step(on_change)
            wait = self.cfg.renew_s
            if self._held:
                wait = max(0.0, min(wait, self._valid_until - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await stop.wait()
        await self.release(on_change)

    async def step(self, on_change: OnChange | None = None) -> None:
        """One round: renew if holding, else try to acquire; then report any change to
        ``on_change``."""
        try:
            if self._held:
                await self._renew()
            else:
                await self._try_acquire()
        except _NET_ERRORS as exc:
            log.warning("lease.error instance=%s holding=%s error=%r", self.instance,
                        self._held, exc)
        if self._held and time.monotonic() >= self._valid_until:
            self._drop("lease expired: renewals failed")
        await self._notify(on_change)

    def _value(self, now_ns: int) -> bytes:
        return msgspec.json.encode(LeaseRecord(holder=self.instance, since_ns=self._since_ns,
                                               renewed_ns=now_ns, ttl_s=self.cfg.ttl_s))

    def _won(self, revision: int, t_sent: float, how: str) -> None:
        self._held, self._revision, self.holder = True, revision, self.instance
        self._valid_until = t_sent + self.cfg.ttl_s - self.cfg.renew_s
        self._seen = None
        log.warning("lease.acquired instance=%s revision=%d how=%s", self.instance, revision,
                    how)

    def _drop(self, why: str) -> None:
        if self._held:
            log.log(logging.INFO if why == "released" else logging.ERROR,
                    "lease.lost instance=%s revision=%d why=%s", self.instance,
                    self._revision, why)
        self._held, self._revision, self._valid_until = False, 0, 0.0

    async def _try_acquire(self) -> None:
        entry = None
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            entry = await self.kv.get(self.cfg.key)
        now_ns, t_sent = self.clock.now_ns(), time.monotonic()
        self._since_ns = now_ns
        if entry is None:
            self.holder = ""
            try:
                rev = await self.kv.create(self.cfg.key, self._value(now_ns))
            except nats.js.errors.KeyWrongLastSequenceError:
                return  # another instance created it first
            self._won(rev, t_sent, "free")
            return
        rev = entry.revision or 0
        self.holder = _holder(entry.value)
        if self._seen is None or self._seen[0] != rev:
            self._seen = (rev, t_sent)  # the holder renewed: start watching this revision
            return
        if t_sent - self._seen[1] < self.cfg.ttl_s:
            return
        try:
            new = await self.kv.update(self.cfg.key, self._value(now_ns), last=rev)
        except nats.js.errors.KeyWrongLastSequenceError:
            return
        log.warning("lease.taken_over instance=%s from=%s silent_s=%.2f", self.instance,
                    self.holder, t_sent - self._seen[1])
        self._won(new, t_sent, f"takeover from {self.holder}")

    async def _renew(self) -> None:
        t_sent = time.monotonic()
        try:
            rev = await asyncio.wait_for(
                self.kv.update(self.cfg.key, self._value(self.clock.now_ns()),
                               last=self._revision), self.cfg.renew_s)
        except nats.js.errors.KeyWrongLastSequenceError:
            self._drop("another instance holds the lease")
            return
        self._revision = rev
        self._valid_until = t_sent + self.cfg.ttl_s - self.cfg.renew_s

    async def _notify(self, on_change: OnChange | None) -> None:
        active = self.is_active()
        if active == self._notified:
            return
        self._notified = active
        self.transitions.append((time.monotonic(), active))
        if on_change is not None:
            try:
                await on_change(active)
            except Exception:  # the lease loop must go on whatever the callback does
                log.exception("lease.on_change_failed instance=%s active=%s", self.instance,
                              active)

    async def release(self, on_change: OnChange | None = None) -> None:
        """Give the lease up (graceful stop): delete the key if it is still ours; report the
        change to ``on_change``."""
        if not self._held:
            return
        rev = self._revision
        self._drop("released")
        with contextlib.suppress(*_NET_ERRORS):
            await asyncio.wait_for(self.kv.delete(self.cfg.key, last=rev), 2.0)
            log.warning("lease.released instance=%s", self.instance)
        await self._notify(on_change)


def _holder(value: bytes | None) -> str:
    try:
        return _decoder.decode(value or b"").holder
    except DECODE_ERRORS:
        return "?"
