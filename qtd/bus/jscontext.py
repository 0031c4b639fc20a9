"""What a nats-py JetStream context was made with (nats-py keeps it private).

The leader's batch puller (:class:`qtd.leader.pull.BatchPuller`) speaks the JetStream pull
protocol on the context's own client and API prefix; nats-py stores both as private
attributes, so they are read here, in :mod:`qtd.bus`, and nowhere else.
"""

from __future__ import annotations

from nats.aio.client import Client
from nats.js import JetStreamContext


def context_client(js: JetStreamContext) -> Client:
    """The connected client ``js`` sends its requests on."""
    nc: Client = js._nc  # nats-py has no public accessor
    return nc


def context_api_prefix(js: JetStreamContext) -> str:
    """The JetStream API prefix of ``js`` (``"$JS.API"`` unless a domain or prefix is set)."""
    prefix: str = js._prefix  # nats-py has no public accessor
    return prefix
