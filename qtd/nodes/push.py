"""Send the fleet's account JWT to the running nats-servers (``$SYS.REQ.CLAIMS.UPDATE``).

The NATS based resolver stores the account JWT it receives and applies it at once: a login
whose public key is now in the account's ``revocations`` is refused from then on, and every
connection it has open is closed by the server (NATS docs, "NATS based resolver"; measured:
the connection closes within ~10 ms of the reply). Each server answers with a JSON document
whose ``data.code`` is 200 on success.
"""

from __future__ import annotations

import time

import msgspec
import nats.errors

from qtd.bus import BusConfig, connect
from qtd.bus.logins import CLAIMS_UPDATE, SYSTEM_LOGIN, inbox_of
from qtd.errors import OperationalError
from qtd.nodes.keyring import Keyring


class PushResult(msgspec.Struct, frozen=True):
    """What the server said about a pushed account JWT.

    Attributes:
        server: the URL it was pushed through.
        code: ``data.code`` of the reply (200: stored and applied).
        message: ``data.message`` (or ``error.description``).
        elapsed_ms: request to reply, milliseconds.
        replied_ns: when the reply arrived, UTC nanoseconds.
    """

    server: str
    code: int
    message: str
    elapsed_ms: float
    replied_ns: int


async def push_account(ring: Keyring, servers: tuple[str, ...], *, timeout_s: float = 5.0
                       ) -> PushResult:
    """Push ``ring``'s account JWT through the first reachable of ``servers`` (a cluster
    spreads it to its other servers through the system account).

    Raises:
        TemporaryError: no server reachable.
        OperationalError: the ``qtd-sys`` login was refused, or the server rejected the JWT.
    """
    cfg = BusConfig(servers=servers, name="qtd-node-push", creds_file=str(ring.system_creds()),
                    inbox_prefix=inbox_of(SYSTEM_LOGIN), initial_connect_timeout=timeout_s)
    nc = await connect(cfg, source=str(ring.path))
    try:
        t0 = time.perf_counter()
        try:
            reply = await nc.request(CLAIMS_UPDATE, ring.account_jwt().encode(),
                                     timeout=timeout_s)
        except (nats.errors.Error, TimeoutError) as e:
            raise OperationalError(f"no answer to the account update on {CLAIMS_UPDATE} "
                                   f"within {timeout_s:g} s ({type(e).__name__}): is the server "
                                   "running with the resolver of etc/nats-server.conf?",
                                   subject=CLAIMS_UPDATE) from None
        elapsed = (time.perf_counter() - t0) * 1000
        replied_ns = time.time_ns()
        url = nc.connected_url.geturl() if nc.connected_url else servers[0]
    finally:
        await nc.close()
    doc = msgspec.json.decode(reply.data)
    data = doc.get("data") or {}
    err = doc.get("error") or {}
    code = int(data.get("code") or err.get("code") or 0)
    message = str(data.get("message") or err.get("description") or reply.data[:200])
    if code != 200:
        raise OperationalError(f"the server refused the account update: {code} {message}",
                               server=url, code=code)
    return PushResult(url, code, message, elapsed, replied_ns)
