"""The pre-trade limit structs of the risk file's scopes: :class:`Limits` (shared by every
scope) and the ``[global]``, ``[accounts.<name>]``, ``[strategies.<bot>]`` and
``[symbols.<symbol>]`` tables (layout and units: :mod:`qtd.risk.config`).

Kept apart from :class:`~qtd.risk.config.RiskConfig` so that the breakers, the rules and
the checks can name a scope's limits without importing the whole config.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from qtd.risk.fields import Amount, ConfigStruct, Count, Pct, Seconds


class Limits(ConfigStruct, frozen=True, kw_only=True):
    """Pre-trade limits shared by every scope (global, account, strategy, symbol).

    Attributes:
        max_order_qty: largest quantity of one order, instrument units.
        max_order_notional: largest notional of one order (qty × reference price), currency.
        max_position_qty: largest worst-case position (filled + open orders on the order's
            side) in one symbol at this scope, instrument units.
        max_position_notional: the same position at the reference price, currency.
        max_position_pct_equity: the same position notional as % of the account's equity.
        max_open_orders: open (non-terminal) orders at this scope.
        max_orders_per_s: orders approved in any sliding 1-second window at this scope.
        max_trades_per_day: orders approved per trading day at this scope.
        trade_cooldown_s: minimum seconds between two approved orders at this scope.
        price_collar_bps: a limit price may differ from the last trade / mid by at most this.
        max_data_age_s: no new exposure when the symbol's last market data is older.
    """

    max_order_qty: Amount | None = None
    max_order_notional: Amount | None = None
    max_position_qty: Amount | None = None
    max_position_notional: Amount | None = None
    max_position_pct_equity: Pct | None = None
    max_open_orders: Count | None = None
    max_orders_per_s: Count | None = None
    max_trades_per_day: Count | None = None
    trade_cooldown_s: Seconds | None = None
    price_collar_bps: Amount | None = None
    max_data_age_s: Seconds | None = None


class GlobalConfig(Limits, frozen=True, kw_only=True):
    """Engine-wide limits and controls.

    Attributes:
        restricted_symbols: symbols no order may trade (compliance restricted list); only a
            kill-switch flatten may reduce a position in them.
        duplicate_window_s: an order with the same bot, account, symbol, side and qty as one
            approved less than this many seconds ago is a duplicate (0 disables).
        order_spike_factor: deny and HALT a strategy whose orders in the current second
            exceed this multiple of its trailing normal rate (0 disables).
        order_spike_halflife_s: half-life of the trailing normal rate (EWMA), seconds.
        order_spike_min_baseline: floor of the trailing normal rate, orders per second.
    """

    restricted_symbols: tuple[str, ...] = ()
    duplicate_window_s: Seconds = 1.0
    order_spike_factor: Annotated[float, Meta(ge=0, le=1e6)] = 10.0
    order_spike_halflife_s: Annotated[float, Meta(gt=0, le=86400)] = 300.0
    order_spike_min_baseline: Annotated[float, Meta(gt=0, le=1e6)] = 1.0


class AccountConfig(Limits, frozen=True, kw_only=True):
    """Limits of one broker account.

    Attributes:
        equity: the account's equity at start, currency; realised and unrealised PnL of the
            account's positions are added to it (for % limits and breakers).
        currency: the account's quote currency.
        max_daily_loss: daily-loss breaker in currency (overrides ``breakers.daily_loss``;
            resolved by :meth:`~qtd.risk.breakers.daily_loss.DailyLossConfig.limits`).
        max_daily_loss_pct: daily-loss breaker in % of the day's opening equity (overrides).
    """

    equity: Amount
    currency: str = "USD"
    max_daily_loss: Amount | None = None
    max_daily_loss_pct: Pct | None = None


class StrategyConfig(Limits, frozen=True, kw_only=True):
    """Limits of one strategy (bot).

    Attributes:
        max_gross_notional: Σ |worst-case position| × price over the bot's symbols, currency.
        max_net_notional: |Σ worst-case signed position × price| over its symbols, currency.
    """

    max_gross_notional: Amount | None = None
    max_net_notional: Amount | None = None


class SymbolConfig(Limits, frozen=True, kw_only=True):
    """Limits of one instrument; having a table puts the symbol on the allow-list."""
