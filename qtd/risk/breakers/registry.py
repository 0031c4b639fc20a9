"""The breaker registry: the ``[breakers]`` section of the risk file, one field per breaker
named by its ``[breakers.<name>]`` table and typed by its config struct, which builds it.

Adding a breaker: its module (a :class:`~qtd.risk.breakers.base.BreakerConfig` with
``build()`` and a :class:`~qtd.risk.breakers.base.Breaker`), one line below, and a test.
The engine runs the enabled breakers in this order.
"""

from __future__ import annotations

from qtd.risk.breakers.broker_errors import BrokerErrorConfig
from qtd.risk.breakers.consecutive_losses import LossStreakConfig
from qtd.risk.breakers.daily_loss import DailyLossConfig
from qtd.risk.breakers.drawdown import DrawdownConfig
from qtd.risk.breakers.execution_throttle import ExecutionThrottleConfig
from qtd.risk.breakers.sharpe import SharpeConfig
from qtd.risk.breakers.win_streak import WinStreakConfig
from qtd.risk.fields import ConfigStruct


class Breakers(ConfigStruct, frozen=True, kw_only=True):
    """Every circuit breaker by name (each disabled while its threshold is unset)."""

    daily_loss: DailyLossConfig = DailyLossConfig()
    drawdown: DrawdownConfig = DrawdownConfig()
    consecutive_losses: LossStreakConfig = LossStreakConfig()
    win_streak: WinStreakConfig = WinStreakConfig()
    sharpe: SharpeConfig = SharpeConfig()
    broker_errors: BrokerErrorConfig = BrokerErrorConfig()
    execution_throttle: ExecutionThrottleConfig = ExecutionThrottleConfig()


BREAKER_NAMES: tuple[str, ...] = Breakers.__struct_fields__
"""The known breaker names, in run order."""


def unknown_breakers(table: dict[str, object]) -> list[str]:
    """The names in a ``[breakers]`` table that no breaker is registered under."""
    return [name for name in table if name not in BREAKER_NAMES]
