"""The deploy buckets seen from a CLI or the leader: desired versions, history, sources,
and publishing a new version with compare-and-set (two concurrent deploys of one bot never
both win: the loser gets a :class:`~qtd.errors.TemporaryError` and nothing of it stays
desired)."""

from __future__ import annotations

import contextlib
import logging

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from qtd.bus.jetstream import ensure_deploy_kv
from qtd.deploy.model import DeployVersion, decode, desired_key, encode, version_key
from qtd.errors import ConfigError, TemporaryError

log = logging.getLogger("qtd.deploy")

_NOT_FOUND = (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError)
MAX_SOURCE_BYTES = 512 * 1024
"""Largest strategy file a deploy carries (bytes): well under NATS' 1 MB max_payload."""


class Fleet:
    """Read and write the deploy buckets.

    Args:
        deploy: the ``qtd_deploy`` bucket.
        sources: the ``qtd_sources`` bucket.
    """

    def __init__(self, deploy: KeyValue, sources: KeyValue) -> None:
        self.deploy, self.sources = deploy, sources

    @classmethod
    async def open(cls, js: JetStreamContext, replicas: int = 1) -> Fleet:
        """Create or verify the buckets (:func:`~qtd.bus.jetstream.ensure_deploy_kv`)."""
        return cls(*await ensure_deploy_kv(js, replicas))

    async def desired(self, bot: str) -> tuple[DeployVersion | None, int]:
        """(the desired version of ``bot`` or None, its KV revision or 0)."""
        try:
            entry = await self.deploy.get(desired_key(bot))
        except _NOT_FOUND:
            return None, 0
        if entry.value is None:
            return None, entry.revision or 0
        return decode(entry.value), entry.revision or 0

    async def version(self, bot: str, n: int) -> DeployVersion | None:
        """Version ``n`` of ``bot`` from the history, or None."""
        try:
            entry = await self.deploy.get(version_key(bot, n))
        except _NOT_FOUND:
            return None
        return None if entry.value is None else decode(entry.value)

    async def history(self, bot: str) -> list[DeployVersion]:
        """Every version of ``bot``, oldest first (versions 1..the desired one, and any
        later one a concurrent deploy left)."""
        cur, _ = await self.desired(bot)
        out: list[DeployVersion] = []
        n = 1
        top = cur.version if cur is not None else 0
        while True:
            v = await self.version(bot, n)
            if v is not None:
                out.append(v)
            elif n > top:
                return out
            n += 1

    async def source(self, source_hash: str) -> bytes | None:
        """A strategy source by its sha256 hex, or None."""
        try:
            entry = await self.sources.get(source_hash)
        except _NOT_FOUND:
            return None
        return entry.value

    async def put_source(self, source_hash: str, source: bytes) -> None:
        """Store a source once (an existing key is left as is: same hash, same bytes).

        Raises:
            ConfigError: larger than :data:`MAX_SOURCE_BYTES`.
        """
        if len(source) > MAX_SOURCE_BYTES:
            raise ConfigError(f"strategy source is {len(source)} bytes, over the deploy limit "
                              f"{MAX_SOURCE_BYTES}", source=source_hash, field="source",
                              value=len(source), rule=f"<= {MAX_SOURCE_BYTES} bytes")
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
            await self.sources.create(source_hash, source)

    async def publish(self, v: DeployVersion, source: bytes, expect_revision: int
                      ) -> DeployVersion:
        """Store the source, the history record and make ``v`` the desired version.

        Args:
            v: the version (its ``version`` number is the one to create).
            source: the strategy file bytes.
            expect_revision: the desired key's revision this deploy was planned against
                (0: there was none).

        Returns:
            ``v`` as published.

        Raises:
            TemporaryError: another deploy of the bot won the race (re-run the command).
        """
        await self.put_source(v.source_hash, source)
        try:
            await self.deploy.create(version_key(v.bot, v.version), encode(v))
        except nats.js.errors.KeyWrongLastSequenceError:
            raise TemporaryError(f"{v.bot}: version {v.version} already exists (a concurrent "
                                 "deploy): re-run the command", bot=v.bot) from None
        try:
            if expect_revision:
                await self.deploy.update(desired_key(v.bot), encode(v), last=expect_revision)
            else:
                await self.deploy.create(desired_key(v.bot), encode(v))
        except nats.js.errors.KeyWrongLastSequenceError:
            await self.deploy.purge(version_key(v.bot, v.version))
            raise TemporaryError(f"{v.bot}: the desired version changed while deploying (a "
                                 "concurrent deploy): re-run the command", bot=v.bot) from None
        log.info("deploy.published bot=%s version=%d hash=%s operator=%s", v.bot, v.version,
                 v.content_hash[:12], v.operator)
        return v
