"""Publishes nats-py holds unsent when the connection drops: dropped, not sent later.

The only module besides :mod:`qtd.bus.client` that touches nats-py connection internals
(``_pending``, ``_pending_data_size``, ``_disconnected_cb``; nats-py 2.x).
"""

from __future__ import annotations

import logging

from nats.aio.client import Client

log = logging.getLogger("qtd.agent.link")


def drop_unsent_on_disconnect(nc: Client) -> None:
    """On a lost connection, drop what nats-py holds unsent instead of sending it after the
    reconnect.

    nats-py keeps publishes not yet written to the old socket and writes them to the new
    one, while what it had written to the old socket died with it: event k+1 would reach
    JetStream before the outbox re-sends event k, out of order. Dropping them makes the
    stream receive a prefix of the events over the old connection and the outbox's re-send
    from the watermark over the new one, in order (Msg-Id dedups the overlap). Heartbeats,
    PnL ticks and kill acks held at that moment are dropped too (best effort by design; kill
    acks are also stored events). Uses nats-py's connection internals (``_pending``,
    ``_pending_data_size``, ``_disconnected_cb``; nats-py 2.x); without them nothing changes.
    """
    inner = getattr(nc, "_disconnected_cb", None)
    if not (hasattr(nc, "_pending") and hasattr(nc, "_pending_data_size")):
        log.warning("nats-py internals changed: unsent publishes are kept across a reconnect "
                    "(JetStream order after an outage is then not guaranteed)")
        return

    async def on_disconnected() -> None:
        dropped = len(nc._pending)
        nc._pending = []
        nc._pending_data_size = 0
        if dropped:
            log.info("NATS connection lost: %d unsent commands dropped; the outbox re-sends "
                     "from its watermark", dropped)
        if inner is not None:
            await inner()

    nc._disconnected_cb = on_disconnected
