"""Pre-trade risk engine, trading states, circuit breakers and kill switch (issue 5).

Public API: :class:`RiskEngine`, :class:`Approved`, :class:`Denied`, :class:`Denial`,
:class:`RiskConfig` and :func:`load_risk_config`, :class:`KillFileWatcher`,
:func:`write_kill_file`.
"""

from __future__ import annotations

from qtd.risk.checks import Denial
from qtd.risk.config import RiskConfig
from qtd.risk.engine import Approved, Denied, RiskEngine
from qtd.risk.kill_file import DEFAULT_KILL_FILE, KillFileWatcher, write_kill_file
from qtd.risk.load import load_risk_config, parse_risk_config

__all__ = [
    "DEFAULT_KILL_FILE",
    "Approved",
    "Denial",
    "Denied",
    "KillFileWatcher",
    "RiskConfig",
    "RiskEngine",
    "load_risk_config",
    "parse_risk_config",
    "write_kill_file",
]
