"""What every Binance REST call goes through, for the broker and the history source alike:
the client-side rate gate (the venue's published limits), a 418 ban honoured without
sending, a 429's ``Retry-After`` applied to the gate, and python-binance / aiohttp errors
translated into :mod:`qtd.brokers.retry` outcomes."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import aiohttp
from binance.exceptions import (  # type: ignore[import-untyped]
    BinanceAPIException,
    BinanceRequestException,
)

from qtd.brokers.retry import (
    RateGate,
    RateLimited,
    VenueBanned,
    VenueRejected,
    VenueUnavailable,
)

_UNKNOWN_CODES: Final = {-1006, -1007}  # "execution status unknown"
BAN_DEFAULT_S: Final = 120.0
"""A 418 without ``Retry-After``: no call for this long, seconds."""
RETRY_AFTER_DEFAULT_S: Final = 60.0
"""A 429 without ``Retry-After``: no call for this long, seconds."""


def translate(exc: BaseException) -> BaseException:
    """Map a python-binance / aiohttp error to a :mod:`qtd.brokers.retry` outcome."""
    if isinstance(exc, (TimeoutError, aiohttp.ClientError, BinanceRequestException)):
        return VenueUnavailable(f"binance: {type(exc).__name__}: {exc}")
    if not isinstance(exc, BinanceAPIException):
        return exc
    status, code = int(exc.status_code), int(exc.code or 0)
    after = exc.response.headers.get("Retry-After") if exc.response is not None else None
    after_s = float(after) if after else None
    if status == 418:
        return VenueBanned(f"binance: 418 IP banned ({exc.message}); retry after {after_s} s",
                           retry_after_s=after_s)
    if status == 429:
        return RateLimited(f"binance: 429 ({exc.message})", retry_after_s=after_s)
    if status >= 500 or code in _UNKNOWN_CODES:
        return VenueUnavailable(f"binance: HTTP {status} code {code}: {exc.message}")
    return VenueRejected(f"binance: HTTP {status} code {code}: {exc.message}", code=str(code),
                         status=status)


class RestGuard:
    """One client's rate gate and 418 ban (Binance spot API docs, "LIMITS": a 429 means
    back off for ``Retry-After``, a 418 is an IP ban for ``Retry-After``).

    Args:
        gate: the client-side gate (replaced by :meth:`limit` once ``exchangeInfo`` has
            given the account's own limits).
    """

    def __init__(self, gate: RateGate) -> None:
        self.gate = gate
        self.banned_until = 0.0  # time.monotonic() until which a 418 ban lasts

    def limit(self, gate: RateGate) -> None:
        """Count calls against ``gate`` from now on."""
        self.gate = gate

    async def send(self, fn: Callable[..., Awaitable[Any]], costs: Mapping[str, int],
                   **params: Any) -> Any:
        """Wait until ``costs`` fit the gate (units per limit kind, e.g.
        ``{"REQUEST_WEIGHT": 2, "RAW_REQUESTS": 1}``), then ``await fn(**params)``.

        Raises:
            VenueBanned: banned now (no call sent) or by this call (418).
            RateLimited: a 429 (the gate is blocked for its ``Retry-After``).
            VenueUnavailable, VenueRejected: as :func:`translate` maps the error.
        """
        left = self.banned_until - time.monotonic()
        if left > 0:
            raise VenueBanned(f"binance: IP banned (418) for {left:.0f} s more; no call sent",
                              retry_after_s=left)
        await self.gate.acquire(**costs)
        try:
            return await fn(**params)
        except Exception as exc:
            err = translate(exc)
            if isinstance(err, VenueBanned):
                self.banned_until = time.monotonic() + (err.retry_after_s or BAN_DEFAULT_S)
            elif isinstance(err, RateLimited):
                self.gate.block_for(err.retry_after_s or RETRY_AFTER_DEFAULT_S)
            raise err from exc
