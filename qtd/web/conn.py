"""Connection limits for the status page: a deadline to send a whole request and a cap on
open connections. The one module that touches uvicorn's HTTP protocol internals.

uvicorn has no timeout on receiving a request: ``timeout_keep_alive`` only covers the idle
time between requests and is reset by every byte received, and ``limit_concurrency`` only
answers 503 once a request's headers are parsed, so a client that sends its headers one
byte at a time (slowloris) holds a connection, and a file descriptor, forever. 1,100 such
connections took the page down at the default 1,024 descriptors (issue 21, finding 8).

:func:`guarded_h11` returns uvicorn's h11 protocol with two additions:

* **Request deadline**: a connection gets ``request_timeout_s`` to send a whole request
  (line, headers and body), counted from when it opens and again after each response. A
  connection past its deadline is closed at once (no response: the client is not reading).
  A WebSocket stops the clock when it is upgraded; a request being answered is never cut.
* **Unread bodies**: a request answered before its body was read (refused before reading,
  or over the size cap) is not read further: reading stops, the client gets ``LINGER_S``
  to read the answer, then the connection is closed (closing at once, with its data
  unread, would reset the connection and the client could lose the answer).
* **Connection cap**: at most ``max_connections`` open connections (WebSockets included),
  lowered to leave ``FD_RESERVE`` descriptors of the process's ``RLIMIT_NOFILE`` to NATS,
  SQLite and the logs (at EMFILE asyncio logs every failed ``accept()``). A new connection
  beyond the cap closes the oldest one still sending its request (the likeliest slow
  client), so an operator whose browser sends its request at once still gets the page
  during a flood; with none to close, the new one gets 503 and is closed.
* **Accept burst**: asyncio accepts up to ``backlog`` sockets each time the listening
  socket is ready, and the cap above runs only two loop turns later (and a closed socket is
  released one turn after that), so up to three bursts are open beyond the cap.
  :func:`accept_burst` sizes the listen backlog so that cap + three bursts + the process's
  own descriptors fit under ``RLIMIT_NOFILE`` (uvicorn's default, 2,048, would let one
  flood of 300 connections hit EMFILE at a 256-descriptor limit).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import Counter
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("qtd.web.conn")
LINGER_S = 1.0
DROP_REASONS = ("timeout", "evicted", "refused", "unread_body")
FD_RESERVE = 128
OWN_FDS = 64  # NATS, SQLite (db, -wal, -shm), logs, epoll, self-pipe, listeners
BACKLOG_MAX = 2048  # uvicorn's default listen backlog
BACKLOG_MIN = 8
_BUSY_TEXT = b"too many open connections\n"
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nconnection: close"
         b"\r\ncontent-length: %d\r\n\r\n%s" % (len(_BUSY_TEXT), _BUSY_TEXT))


class ConnectionGuard:
    """The limits and the state shared by every connection of one server.

    Args:
        max_connections: open connections allowed (HTTP and WebSocket); lowered to fit
            ``RLIMIT_NOFILE`` (:func:`fd_bounded`).
        request_timeout_s: seconds a client has to send a whole request.

    Attributes:
        backlog: the listen backlog and accept burst (:func:`accept_burst`); pass it to
            uvicorn's ``Config(backlog=...)``.
        bytes_received: bytes read on HTTP connections (WebSocket frames not included).
        dropped: connections closed by the guard, by reason (``timeout``: past the request
            deadline, ``evicted``: closed for a newer one at the cap, ``refused``: a new one
            at the cap with none to evict, ``unread_body``: answered before its body).
    """

    def __init__(self, max_connections: int = 1000, request_timeout_s: float = 10.0) -> None:
        self.max_connections = fd_bounded(max_connections)
        self.backlog = accept_burst(self.max_connections)
        self.request_timeout_s = request_timeout_s
        self.receiving: dict[GuardedH11, None] = {}  # oldest first
        self.dropped: Counter[str] = Counter()
        self.bytes_received = 0

    def drop(self, reason: str) -> None:
        """Count one closed connection (the log line is collapsed when repeated)."""
        self.dropped[reason] += 1
        log.warning("web.connection_dropped reason=%s (slow or too many clients)", reason)


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a request deadline and a connection cap (module doc)."""

    guard: ClassVar[ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        if len(self.connections) > self.guard.max_connections and not self._evict_oldest():
            self.guard.drop("refused")
            self.transport.write(_BUSY)
            self.transport.close()
            return
        self._arm(self.guard.request_timeout_s, "timeout")

    def data_received(self, data: bytes) -> None:
        self.guard.bytes_received += len(data)
        super().data_received(data)
        if self.transport.get_protocol() is not self or self.conn.their_state is h11.DONE:
            self.disarm()  # upgraded to a WebSocket, or the whole request is in

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing() or self.conn.their_state is h11.DONE:
            return
        if self.conn.their_state is h11.SEND_BODY:  # answered before its body was read
            self.flow.pause_reading()
            self._arm(LINGER_S, "unread_body")
        else:
            self._arm(self.guard.request_timeout_s, "timeout")  # the next request is due

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        super().connection_lost(exc)

    def _arm(self, delay_s: float, reason: str) -> None:
        self.disarm()
        self._deadline = self.loop.call_later(delay_s, self._expire, reason)
        self.guard.receiving[self] = None

    def disarm(self) -> None:
        """Stop this connection's deadline (its request is in, or it is being closed)."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self.guard.receiving.pop(self, None)

    def _expire(self, reason: str) -> None:
        self._deadline = None
        self.guard.receiving.pop(self, None)
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return
        if self.conn.their_state is not h11.DONE:
            self.guard.drop(reason)
            self.transport.abort()

    def _evict_oldest(self) -> bool:
        for other in self.guard.receiving:
            if other is not self:
                other.disarm()
                self.guard.drop("evicted")
                other.transport.abort()
                return True
        return False


def guarded_h11(guard: ConnectionGuard) -> type[GuardedH11]:
    """A :class:`GuardedH11` class bound to ``guard`` (uvicorn's ``Config(http=...)``
    takes a protocol class and builds one instance per connection)."""
    bound: dict[str, Any] = {"guard": guard}
    return type("GuardedH11", (GuardedH11,), bound)


def fd_bounded(max_connections: int) -> int:
    """``max_connections``, lowered (and logged) to leave ``FD_RESERVE`` descriptors free
    under the soft ``RLIMIT_NOFILE`` (systemd: ``LimitNOFILE=``); at least 16."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or max_connections <= soft - FD_RESERVE:
        return max_connections
    fitted = max(16, soft - FD_RESERVE)
    log.warning("web.max_connections=%d lowered from %d: RLIMIT_NOFILE=%d keeps %d for NATS,"
                " SQLite and logs (raise LimitNOFILE= in the unit)", fitted, max_connections,
                soft, FD_RESERVE)
    return fitted


def accept_burst(max_connections: int) -> int:
    """The listen backlog (connections, also asyncio's accept burst per ready event) that
    keeps ``max_connections`` + three bursts + ``OWN_FDS`` under the soft
    ``RLIMIT_NOFILE``; between ``BACKLOG_MIN`` and ``BACKLOG_MAX`` (2,048, uvicorn's
    default). Source: ``asyncio.selector_events.BaseSelectorEventLoop._accept_connection``
    loops ``backlog`` times per ready event and creates the protocol in a later task."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return BACKLOG_MAX
    return max(BACKLOG_MIN, min(BACKLOG_MAX, (soft - max_connections - OWN_FDS) // 3))
