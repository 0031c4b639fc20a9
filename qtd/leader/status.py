"""The leader's status: the fleet view with the caps measured, the open alerts and the
ingest counters, as one :class:`~qtd.fleetsnapshot.FleetSnapshot`."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from qtd.fleetsnapshot import AlertView, FleetSnapshot
from qtd.leader.caps import FleetCaps
from qtd.leader.view import FleetView


class FleetStatus:
    """What the status page, ``qtd status`` and the Prometheus endpoint read.

    Args:
        view: the fleet view.
        caps: measured on each snapshot's rollup.
        alerts: the open alerts now (:meth:`~qtd.leader.alerts.AlertBook.views`).
        ingest_stats: the ingest counters now (:meth:`~qtd.leader.ingest.Ingestor.stats`).
    """

    def __init__(self, view: FleetView, caps: FleetCaps, alerts: Callable[[], list[AlertView]],
                 ingest_stats: Callable[[], dict[str, int]]) -> None:
        self._view = view
        self._measure = partial(caps.views, view)
        self._alerts, self._ingest_stats = alerts, ingest_stats

    def snapshot(self) -> FleetSnapshot:
        """The fleet now (see :mod:`qtd.fleetsnapshot` for the shape and units)."""
        return self._view.snapshot(measure_caps=self._measure, alerts=self._alerts,
                                   ingest_stats=self._ingest_stats)
