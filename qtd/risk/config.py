"""Risk limits and circuit-breaker configuration: frozen msgspec Structs loaded from TOML.

Layout of a risk file (see ``etc/risk.toml``)::

    [global]               engine-wide limits (GLOBAL scope) and controls
    [accounts.<name>]      per-account limits, starting equity and daily-loss limits
    [strategies.<bot>]     per-strategy (bot) limits, incl. gross / net notional caps
    [strategy_defaults]    limits for bots without their own table (omit: unknown bots denied)
    [symbols.<symbol>]     per-symbol limits; the keys form the instrument allow-list
    [breakers.<name>]      circuit breakers and the trading state each trips to (names:
                           :mod:`qtd.risk.breakers.registry`; an unknown one is an error)

Units: quantities in instrument units (shares, contracts, coins); notional and money in the
account's quote currency; percentages in percent (``3.0`` = 3 %); collars in basis points
(1 bps = 0.01 %); durations in seconds. A limit that is absent (or ``None``) is not checked.

The scope tables are the structs of :mod:`qtd.risk.scope_limits`; loading and validation (each
table on its own, then the cross-field rules of :mod:`qtd.risk.rules`, all problems
reported at once) live in :mod:`qtd.risk.load`.
"""

from __future__ import annotations

import msgspec

from qtd.risk.breakers.registry import Breakers
from qtd.risk.fields import ConfigStruct
from qtd.risk.scope_limits import AccountConfig, GlobalConfig, Limits, StrategyConfig, SymbolConfig

# Limits is re-exported for qtd.agent.telemetry (owned by another branch) until it imports
# qtd.risk.scope_limits; everything else imports the scope structs from qtd.risk.scope_limits.
__all__ = ["Limits", "RiskConfig"]


class RiskConfig(ConfigStruct, frozen=True, kw_only=True):
    """The whole risk configuration (module docstring for the layout).

    Attributes:
        source: where it was loaded from (for error messages).
    """

    global_: GlobalConfig = msgspec.field(default_factory=GlobalConfig, name="global")
    accounts: dict[str, AccountConfig] = msgspec.field(default_factory=dict)
    strategies: dict[str, StrategyConfig] = msgspec.field(default_factory=dict)
    strategy_defaults: StrategyConfig | None = None
    symbols: dict[str, SymbolConfig] = msgspec.field(default_factory=dict)
    breakers: Breakers = Breakers()
    trading_day_tz: str = "UTC"
    trading_day_rollover: str = "00:00"
    source: str = "<memory>"

    def strategy(self, bot: str) -> StrategyConfig | None:
        """The bot's own table, else ``strategy_defaults`` (None: the bot is unknown)."""
        return self.strategies.get(bot, self.strategy_defaults)
