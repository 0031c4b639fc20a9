"""Venue call outcomes and retries (exponential backoff with jitter via ``tenacity``).

A venue call ends in one of these outcomes, and each has its own rule:

* success;
* :class:`RateLimited` (HTTP 429): the venue refused the request *unprocessed* — retry after
  ``Retry-After`` seconds (Binance "LIMITS": "a 429 will be returned ... it's your obligation
  as an API to back off"; Alpaca answers 429 above ~200 requests/min);
* :class:`VenueBanned` (Binance HTTP 418, an IP ban after repeated 429s): stop calling,
  halt the account and page (an :class:`~qtd.errors.OperationalError`);
* :class:`VenueRejected` (a definite 4xx refusal such as Alpaca 403/422 or Binance -2010):
  the venue's word that the order does not exist — never retried;
* :class:`VenueUnavailable` (timeout, dropped connection, 5xx, malformed answer): the
  outcome is **unknown**. Binance documents 5xx (and -1006/-1007) as "execution status
  UNKNOWN ... could have been a success". Idempotent calls (queries, cancels) are retried; a
  submit is never re-sent blindly: :func:`resolve_unknown` asks the venue for the order by
  its client_order_id until it answers.

:class:`OutcomeUnknown` is what an adapter raises when even that could not settle a submit:
the order stays in flight (the router records a ``BrokerError``; reconciliation or a stream
update settles it later) and is never marked dead without the venue's word.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from qtd.errors import OperationalError, QtdError, TemporaryError
from qtd.events import (
    Event,
    OrderAccepted,
    OrderCanceled,
    OrderExpired,
    OrderRejected,
    OrderState,
)

if TYPE_CHECKING:
    from qtd.brokers.base import OrderStatusReport

T = TypeVar("T")


class RateLimited(TemporaryError):
    """HTTP 429: request refused unprocessed. ``retry_after_s`` from ``Retry-After`` (s)."""

    def __init__(self, message: str, *, retry_after_s: float | None, **fields: Any) -> None:
        super().__init__(message, retry_after_s=retry_after_s, **fields)
        self.retry_after_s = retry_after_s


class VenueUnavailable(TemporaryError):
    """Timeout, dropped connection, 5xx or an unreadable answer: the outcome is unknown."""


class VenueBanned(OperationalError):
    """HTTP 418 (Binance IP ban): no call may go out until ``retry_after_s`` has passed;
    the account must be halted and on-call paged."""

    def __init__(self, message: str, *, retry_after_s: float | None, **fields: Any) -> None:
        super().__init__(message, retry_after_s=retry_after_s, **fields)
        self.retry_after_s = retry_after_s


class VenueRejected(QtdError):
    """A definite refusal (4xx with a venue error code): nothing was placed or changed."""

    def __init__(self, message: str, *, code: str = "", status: int = 0, **fields: Any) -> None:
        super().__init__(message, code=code, status=status, **fields)
        self.code, self.status = code, status


class OutcomeUnknown(TemporaryError):
    """A submit whose fate the venue could not yet be asked about: the order stays in flight."""


class VenueMessageError(QtdError):
    """A venue message qtd cannot read or map (malformed JSON, unknown status or event)."""


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Retry and resolution timing.

    Attributes:
        attempts: tries per call, first included.
        initial_s: first backoff, seconds (doubles each retry, plus jitter up to ``initial_s``).
        max_backoff_s: cap of one backoff, seconds.
        max_retry_after_s: longest ``Retry-After`` waited inline; longer ones raise at once.
        resolve_attempts: lookups of an order whose submit outcome is unknown.
        resolve_interval_s: first pause between those lookups, seconds (backs off ×2).
    """

    attempts: int = 4
    initial_s: float = 0.2
    max_backoff_s: float = 5.0
    max_retry_after_s: float = 30.0
    resolve_attempts: int = 5
    resolve_interval_s: float = 0.2


def _wait(policy: RetryPolicy, offset: int = 0) -> Callable[[RetryCallState], float]:
    """Backoff before the next attempt (``Retry-After`` first); ``offset`` attempts were
    already made outside tenacity (the fast path of :func:`call`)."""
    backoff = wait_exponential_jitter(multiplier=policy.initial_s, max=policy.max_backoff_s,
                                      jitter=policy.initial_s)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
            return exc.retry_after_s
        shim: Any = SimpleNamespace(attempt_number=state.attempt_number + offset)
        return float(backoff(shim))

    return wait


def _retry_after_too_long(policy: RetryPolicy) -> Callable[[BaseException], bool]:
    def ok(exc: BaseException) -> bool:
        after = getattr(exc, "retry_after_s", None)
        return after is None or after <= policy.max_retry_after_s

    return ok


async def call(
    fn: Callable[[], Awaitable[T]], *, idempotent: bool, policy: RetryPolicy,
) -> T:
    """Run one venue call with retries.

    A 429 is retried after its ``Retry-After`` (the venue did not process it). Timeouts, 5xx
    and dropped connections are retried only when ``idempotent`` (a query or a cancel): a
    submit that hits one re-raises :class:`VenueUnavailable` for the caller to resolve.

    The first attempt runs without tenacity (it costs ~45 µs per call to set up, measured
    in ``benchmarks/order_path.py``: that is on every order's path); after a retryable
    failure the remaining ``policy.attempts − 1`` attempts run under tenacity with the same
    backoff sequence.

    Raises:
        RateLimited: still limited after ``policy.attempts``, or ``Retry-After`` longer than
            ``policy.max_retry_after_s``.
        VenueUnavailable: see above.
        VenueBanned, VenueRejected, VenueMessageError: never retried.
    """
    kinds: tuple[type[BaseException], ...] = (
        (RateLimited, VenueUnavailable) if idempotent else (RateLimited,))
    too_long = _retry_after_too_long(policy)
    try:
        return await fn()
    except kinds as exc:
        if policy.attempts <= 1 or not too_long(exc):
            raise
        first: BaseException = exc
    after = getattr(first, "retry_after_s", None)
    await asyncio.sleep(after if isinstance(first, RateLimited) and after is not None
                        else _wait(policy)(_failed_state(first)))
    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.attempts - 1),
        wait=_wait(policy, offset=1),
        retry=retry_if_exception_type(kinds) & retry_if_exception(too_long),
        reraise=True,
    )

    async def attempt() -> T:  # a coroutine function, so tenacity awaits it
        return await fn()

    return await retrying(attempt)


def _failed_state(exc: BaseException) -> Any:
    """A stand-in for tenacity's state after a failed first attempt."""
    return SimpleNamespace(attempt_number=1, outcome=SimpleNamespace(exception=lambda: exc))


async def resolve_unknown(
    lookup: Callable[[], Awaitable[T | None]], *, policy: RetryPolicy,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> T | None:
    """Ask the venue what became of an order whose submit outcome is unknown.

    Calls ``lookup`` (a query by client_order_id, itself retried as idempotent) up to
    ``policy.resolve_attempts`` times, pausing ``resolve_interval_s`` × 2^n between tries,
    because a request that timed out may still be in the venue's queue.

    Returns:
        The venue's report of the order, or None when every lookup said "no such order".

    Raises:
        VenueUnavailable, RateLimited: the venue could not be asked at all.
    """
    pause = sleep or asyncio.sleep
    delay = policy.resolve_interval_s
    for n in range(policy.resolve_attempts):
        found = await call(lookup, idempotent=True, policy=policy)
        if found is not None:
            return found
        if n + 1 < policy.resolve_attempts:
            await pause(delay)
            delay *= 2
    return None


def report_events(report: OrderStatusReport, *, node: str, bot: str, ts_init: int) -> list[Event]:
    """Status events implied by the venue's word on an order (fills are not included: they
    need the venue's trade ids and come from the stream or :meth:`Broker.fills_since`).

    Returns [] when the venue status is unknown to qtd (``report.state is None``): the
    caller keeps the order in flight and flags it.
    """
    st = report.state
    if st is None:
        return []
    base: dict[str, Any] = {"node": node, "bot": bot, "ts_event": report.ts_ns or ts_init,
                            "ts_init": ts_init,
            "client_order_id": report.client_order_id}
    if st is OrderState.REJECTED:
        return [OrderRejected(**base, reason=f"venue status {report.venue_status}",
                              code=report.venue_status)]
    out: list[Event] = [OrderAccepted(**base, venue_order_id=report.venue_order_id)]
    if st is OrderState.CANCELED:
        out.append(OrderCanceled(**base, venue_order_id=report.venue_order_id))
    elif st is OrderState.EXPIRED:
        out.append(OrderExpired(**base, venue_order_id=report.venue_order_id))
    return out


class RateGate:
    """Client-side sliding windows for a venue's published limits, and a block until a time
    (a 429's ``Retry-After``, a 418 ban): :meth:`acquire` waits until a request fits.

    Args:
        limits: ``(kind, window_s, limit)`` per window, e.g. ``("REQUEST_WEIGHT", 60, 6000)``.
        max_wait_s: longest wait :meth:`acquire` accepts; longer raises :class:`RateLimited`.
    """

    def __init__(self, limits: list[tuple[str, float, int]], max_wait_s: float = 30.0) -> None:
        self.windows = [_Window(kind, float(w), lim) for kind, w, lim in limits]
        self.max_wait_s = max_wait_s
        self.blocked_until = 0.0  # time.monotonic() seconds

    def block_for(self, seconds: float) -> None:
        """No request before ``seconds`` from now."""
        self.blocked_until = max(self.blocked_until, time.monotonic() + seconds)

    def used(self, kind: str, window_s: float) -> int:
        """Units of ``kind`` counted in the window of that length now."""
        now = time.monotonic()
        return sum(w.expire(now) for w in self.windows if w.kind == kind and w.span == window_s)

    def _wait(self, costs: dict[str, int], now: float) -> float:
        wait = self.blocked_until - now
        for w in self.windows:
            cost = costs.get(w.kind, 0)
            if cost and w.expire(now) + cost > w.limit:
                wait = max(wait, w.q[0][0] + w.span - now if w.q else w.span)
        return wait

    async def acquire(self, **costs: int) -> None:
        """Wait until ``costs`` (units per kind, e.g. ``REQUEST_WEIGHT=4, ORDERS=1``) fit
        every window, then count them.

        Raises:
            RateLimited: the wait would exceed ``max_wait_s`` (``retry_after_s`` says how long).
        """
        while True:
            now = time.monotonic()
            wait = self._wait(costs, now)
            if wait <= 0:
                for w in self.windows:
                    cost = costs.get(w.kind, 0)
                    if cost:
                        w.q.append((now, cost))
                        w.total += cost
                return
            if wait > self.max_wait_s:
                raise RateLimited(f"client-side rate limit: next slot in {wait:.1f} s",
                                  retry_after_s=wait)
            await asyncio.sleep(wait)


class _Window:
    """One sliding window: entries ``(t, cost)`` and their running total."""

    __slots__ = ("kind", "limit", "q", "span", "total")

    def __init__(self, kind: str, span: float, limit: int) -> None:
        self.kind, self.span, self.limit = kind, span, limit
        self.q: deque[tuple[float, int]] = deque()
        self.total = 0

    def expire(self, now: float) -> int:
        """Drop entries older than the window; return the units still counted."""
        q, floor = self.q, now - self.span
        while q and q[0][0] <= floor:
            self.total -= q.popleft()[1]
        return self.total
