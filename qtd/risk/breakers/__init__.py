"""Circuit breakers on realised + unrealised PnL, trade outcomes and broker health, as
plug-ins: one module per breaker (its config struct and its class), registered by name in
:mod:`qtd.risk.breakers.registry`.

Each breaker watches the engine's inputs (fills, marks, broker request results) and, when its
threshold is crossed, moves its scope to the trading state its config names (escalation
only), emitting a :class:`~qtd.events.RiskBreach` and a
:class:`~qtd.events.TradingStateChanged`:

=====================  ==================================================  ================
breaker                observed value                                      default trip
=====================  ==================================================  ================
daily_loss             day-open equity − equity (currency and %)           HALTED account
drawdown               (peak equity − equity) / peak (%), GLOBAL/ACCOUNT   HALTED global
consecutive_losses     losing closing trades in a row, per strategy        HALTED strategy
win_streak             winning closing trades in a row, per strategy       REDUCING for
                                                                           ``cooldown_s``
sharpe                 mean / std of the last N trades' PnL, per strategy  REDUCING strategy
                       (:func:`qtd.metrics.sharpe_ratio`; undefined at zero
                       dispersion: no trip, unless every trade lost the
                       same amount)
broker_errors          failed / all broker requests in a window, account   REDUCING account
execution_throttle     fills of a strategy within a window                 HALTED strategy
=====================  ==================================================  ================

A breaker's limits and their current use for the status page come from the breaker itself
(:meth:`Breaker.usage`, read through :meth:`CircuitBreakers.usage`).
"""

from __future__ import annotations

from qtd.risk.breakers.base import AccountBook, Breaker, BreakerConfig, BreakerContext, Tripper
from qtd.risk.breakers.circuit import CircuitBreakers
from qtd.risk.breakers.registry import BREAKER_NAMES, Breakers

__all__ = [
    "BREAKER_NAMES",
    "AccountBook",
    "Breaker",
    "BreakerConfig",
    "BreakerContext",
    "Breakers",
    "CircuitBreakers",
    "Tripper",
]
