"""``[quality]`` of the leader config: execution-quality thresholds, surveillance settings
and the daily report. Every key is optional; the defaults are the documented ones.

Example (``etc/leader.toml``)::

    [quality]
    daily_report = true            # message + page at the end of each trading day
    daily_severity = "P4"          # sent to [notify.destinations] of this severity
    alert_severity = "P3"          # execution-quality and surveillance alerts

    [quality.execution]            # qtd.quality.execution_quality.Thresholds
    latency_p99_ms = 50.0
    slippage_bps = 5.0
    fill_rate_min = 0.95
    cancel_rate_max = 0.15

    [quality.surveil]              # qtd.quality.surveil.SurveilConfig
    wash_window_s = 5.0
    spoof_cancel_ms = 100.0
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from qtd.events import Severity
from qtd.quality.execution_quality import Thresholds
from qtd.quality.surveil import SurveilConfig


class DecayConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The leader's live decay alert (``[quality.decay]``): each bot's PnL (realized +
    unrealized, fleet currency) is sampled every ``sample_s`` seconds onto an equity curve of
    ``capital`` + PnL; the Sharpe of its last ``window`` returns, annualised on calendar time
    (√(365.25 × 86400 / sample_s)), below ``floor`` opens a ``decay:<node>/<bot>`` alert at
    ``severity``; back at or above it, the alert closes. A bot whose PnL did not move over
    the window is not judged. (Live vs its own backtest is ``qtd report drift``.)"""

    enabled: bool = True
    sample_s: Annotated[float, Meta(gt=0)] = 3600.0
    window: Annotated[int, Meta(ge=3, le=10_000)] = 48
    floor: float = 0.5
    capital: Annotated[float, Meta(gt=0)] = 100_000.0
    severity: Severity = Severity.P3


class QualityConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the leader watches beyond "is it running" (module docstring).

    Attributes:
        enabled: run execution quality and surveillance on ingested events.
        execution: execution-quality alert thresholds.
        surveil: surveillance thresholds.
        alert_severity: severity of execution-quality and surveillance alerts.
        daily_report: send the daily report when a trading day ends.
        daily_severity: the daily report goes to the notify destinations of this severity.
        eval_interval_s: seconds between two evaluations of the execution thresholds.
        surveil_quiet_s: a surveillance alert closes after this long without a new finding.
        decay: the live rolling-Sharpe decay alert (:class:`DecayConfig`).
    """

    enabled: bool = True
    execution: Thresholds = Thresholds()
    surveil: SurveilConfig = SurveilConfig()
    alert_severity: Severity = Severity.P3
    daily_report: bool = True
    daily_severity: Severity = Severity.P4
    eval_interval_s: Annotated[float, Meta(gt=0)] = 5.0
    surveil_quiet_s: Annotated[float, Meta(gt=0)] = 3600.0
    decay: DecayConfig = DecayConfig()
