"""Default trading costs of a simulated run: the demo's paper accounts' (``etc/agent.toml``
``[accounts.paper-*]``: ``commission_bps = 0.5``, ``slippage_bps = 1.0``), so that
``qtd backtest`` and ``qtd report drift`` charge by default what ``qtd up`` charges.

Kept in this import-light module because the CLI's parsers show them as defaults.
"""

from __future__ import annotations

from typing import Final

DEMO_COMMISSION_BPS: Final = 0.5  # per fill, basis points of notional
DEMO_SLIPPAGE_BPS: Final = 1.0  # adverse move of market/stop fills, basis points
