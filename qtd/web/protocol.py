"""What the status page reads and asks: the :class:`FleetSource` protocol and the Structs
it returns. This is the whole boundary between the web app and the leader.

``qtd.web`` imports no module of ``qtd.leader``: the leader's implementation,
:class:`qtd.leader.websource.LeaderSource`, lives on the leader's side and is handed to
:func:`qtd.web.create_app`. Every panel of every page reads one method of the protocol
(the fleet panels :meth:`FleetSource.snapshot`, the versions panel
:meth:`FleetSource.versions`, the execution panel :meth:`FleetSource.quality`, the daily
report :meth:`FleetSource.daily_report`, a bot's page :meth:`FleetSource.bot_events`), so a
new panel is one method here, its implementation in ``LeaderSource``, and one template.
Tests pass a source built on a :class:`~qtd.leader.FleetView` fed events directly.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from qtd.control import ControlAction
from qtd.deploy.model import VersionRow
from qtd.events import AnyEvent
from qtd.fleetsnapshot import FleetSnapshot
from qtd.quality.daily import DailyReport
from qtd.quality.execution_quality import ExecBreach, ExecRow


class QualityView(msgspec.Struct, frozen=True, kw_only=True):
    """Today's execution quality and surveillance tallies (the execution panel, and the
    ``qtd_exec_*``/``qtd_surveil_*`` gauges of ``/metrics``).

    Attributes:
        rows: one row per (bot, venue, symbol) with orders today.
        breaches: thresholds crossed now.
        finding_counts: surveillance findings per pattern since the leader started.
    """

    rows: list[ExecRow]
    breaches: list[ExecBreach]
    finding_counts: dict[str, int]


class FleetSource(Protocol):
    """The leader's read and control API as the web app uses it (module docstring)."""

    def snapshot(self) -> FleetSnapshot:
        """The fleet now (see :mod:`qtd.fleetsnapshot`)."""
        ...

    def versions(self) -> list[VersionRow] | None:
        """Desired against running version per bot and node (None: no version table, the
        panel is not shown)."""
        ...

    def quality(self) -> QualityView | None:
        """Today's execution quality (None: no quality monitor, the panel is not shown)."""
        ...

    async def daily_report(self, day: str | None) -> DailyReport | None:
        """The daily report of ``day`` (``YYYY-MM-DD``; None: the last day that ended).

        Returns:
            The report, or None when this source keeps no daily reports.

        Raises:
            ValueError: ``day`` is not ``YYYY-MM-DD``.
        """
        ...

    async def control(self, action: ControlAction) -> dict[str, Any]:
        """Run a kill, flatten or resume; returns a JSON-able result."""
        ...

    async def ack(self, alert_id: str, operator: str) -> bool:
        """Acknowledge an open alert; False when there is no such open alert."""
        ...

    async def bot_events(self, node: str, bot: str, limit: int,
                         kinds: tuple[str, ...] = ()) -> list[AnyEvent]:
        """The bot's last ``limit`` stored events (of ``kinds`` if given), oldest first."""
        ...
