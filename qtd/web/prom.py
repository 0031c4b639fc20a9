"""Prometheus ``/metrics``: a collector that reads one fleet snapshot per scrape.

Its own :class:`~prometheus_client.CollectorRegistry` per app (no process-global state).
Money in the fleet currency. Counters are the leader's all-time event counts (rebuilt from
fleet.db at start, so they only grow). ``qtd_order_ack_latency_seconds`` is kept from the
blotters the status page computes (the intent → venue acceptance time of each order seen).

Trading states are gauges with one value per state, ordered by how much they stop (alert on
``>= 3`` for halted): **ACTIVE 0, REDUCING 1, STOPPED 2, HALTED 3, UNKNOWN -1**.

* ``qtd_trading_state{scope,key}``: the most restrictive state of a scope across the fleet
  (the leader's kills and every agent's scopes; ``scope="NODE"``: an agent's own GLOBAL
  scope, ``key`` its node); ``GLOBAL`` with key "" is always there.
* ``qtd_bot_trading_state{node,bot,cause}``: a bot's effective state; ``cause`` is what
  imposes it: the breaker or check (``consecutive_losses``, ``kill_switch``,
  ``store_fault``…), else the cause's kind (``kill``, ``operator``, ``runner``, ``agent``…),
  "" when ACTIVE (:mod:`qtd.leader.why`).
* ``qtd_bot_denials_by_check{node,bot,check}``: denied orders by the risk check that said no.
* ``qtd_node_version_info{node,version}`` (1) and ``qtd_version_skew`` (1 while the live
  agents run more than one qtd version or one reports none; alert on ``== 1``).

Execution quality and surveillance (:meth:`~qtd.web.protocol.FleetSource.quality`; labels
``bot``, ``venue``, ``symbol``; today's trading day): ``qtd_exec_orders``,
``qtd_exec_latency_p50_seconds``, ``qtd_exec_latency_p99_seconds`` (decision → ack),
``qtd_exec_slippage_bps`` (extra label ``benchmark`` = decision|arrival, adverse positive),
``qtd_exec_fill_rate``, ``qtd_exec_cancel_rate``, ``qtd_exec_reject_rate`` (fractions);
``qtd_exec_threshold_breaches`` and ``qtd_surveil_findings`` (label ``pattern``: findings
since the leader started).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from qtd.bus.rejects import KINDS as REJECT_KINDS
from qtd.bus.rejects import REJECTED
from qtd.fleetsnapshot import RANK, BotView, FleetSnapshot
from qtd.web.conn import DROP_REASONS, ConnectionGuard
from qtd.web.protocol import FleetSource, QualityView

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_COUNTS = ("orders", "fills", "rejects", "errors", "denials")


class SnapshotCollector(Collector):
    """Fleet, node, bot, cap, kill and alert figures from ``source.snapshot()``."""

    def __init__(self, source: FleetSource) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        snap = self.source.snapshot()
        t = snap.totals
        for name, value, text in (
            ("qtd_fleet_pnl_today", t.pnl_today, "fleet PnL today"),
            ("qtd_fleet_realized_pnl", t.realized, "fleet realized PnL net of fees"),
            ("qtd_fleet_unrealized_pnl", t.unrealized, "fleet unrealized PnL at the marks"),
            ("qtd_fleet_equity", snap.equity, "capital + realized + unrealized"),
            ("qtd_fleet_drawdown_pct", snap.drawdown_pct, "percent below peak equity"),
            ("qtd_fleet_gross_exposure", t.gross_exposure, "sum of |qty x mark|"),
            ("qtd_fleet_net_exposure", t.net_exposure, "sum of qty x mark"),
            ("qtd_kill_active", float(snap.kill.active), "1 while a kill switch is active"),
        ):
            yield GaugeMetricFamily(name, text, value=value)
        yield from self._bots(snap.bots)
        yield from self._states(snap)
        yield from self._nodes(snap)
        yield from self._caps(snap)
        yield from quality_metrics(self.source.quality())

    def _bots(self, bots: Iterable[BotView]) -> Iterable[Metric]:
        pnl = GaugeMetricFamily("qtd_bot_pnl_today", "bot PnL today", labels=["node", "bot"])
        gross = GaugeMetricFamily("qtd_bot_gross_exposure", "bot gross exposure",
                                  labels=["node", "bot"])
        counts = {c: CounterMetricFamily(f"qtd_bot_{c}", f"bot {c} (events)",
                                         labels=["node", "bot"]) for c in _COUNTS}
        limits = GaugeMetricFamily("qtd_bot_limit_utilisation",
                                   "risk limit in use / limit, as the bot's agent reported it",
                                   labels=["node", "bot", "limit", "scope", "key"])
        for b in bots:
            labels = [b.node, b.bot]
            agg = b.agg
            pnl.add_metric(labels, agg.pnl_today)
            gross.add_metric(labels, agg.gross_exposure)
            for c, fam in counts.items():
                fam.add_metric(labels, getattr(agg, c))
            for x in b.limits:
                limits.add_metric([b.node, b.bot, x.name, x.scope, x.key], x.utilisation)
        yield pnl
        yield gross
        yield from counts.values()
        yield limits

    def _states(self, snap: FleetSnapshot) -> Iterable[Metric]:
        scopes = GaugeMetricFamily("qtd_trading_state", "most restrictive state of a scope "
                                   "(ACTIVE 0, REDUCING 1, STOPPED 2, HALTED 3)",
                                   labels=["scope", "key"])
        for st in snap.states:
            scopes.add_metric([st.scope, st.key], RANK.get(st.state, -1))
        bots = GaugeMetricFamily("qtd_bot_trading_state", "effective state of a bot (ACTIVE 0, "
                                 "REDUCING 1, STOPPED 2, HALTED 3, UNKNOWN -1) and its cause",
                                 labels=["node", "bot", "cause"])
        denies = CounterMetricFamily("qtd_bot_denials_by_check", "denied orders by check",
                                     labels=["node", "bot", "check"])
        for b in snap.bots:
            first = next((c for c in b.causes if c.state == b.effective_state), None)
            cause = "" if first is None else first.check or first.kind
            bots.add_metric([b.node, b.bot, cause], RANK.get(b.effective_state, -1))
            for d in b.deny_reasons:
                denies.add_metric([b.node, b.bot, d.check], d.count)
        yield from (scopes, bots, denies)

    def _nodes(self, snap: FleetSnapshot) -> Iterable[Metric]:
        age = GaugeMetricFamily("qtd_node_heartbeat_age_seconds", "since the last heartbeat",
                                labels=["node"])
        alive = GaugeMetricFamily("qtd_node_alive", "1 if the heartbeat is fresh",
                                  labels=["node"])
        info = GaugeMetricFamily("qtd_node_version_info", "1: the qtd version a node reports",
                                 labels=["node", "version"])
        for n in snap.nodes:
            if n.heartbeat_age_s is not None:
                age.add_metric([n.node], n.heartbeat_age_s)
            alive.add_metric([n.node], float(n.alive))
            info.add_metric([n.node, n.version], 1.0)
        skew = GaugeMetricFamily("qtd_version_skew", "1 while live agents run different qtd "
                                 "versions or one reports none",
                                 value=float(snap.qtd_versions.skew))
        lat = GaugeMetricFamily("qtd_kill_ack_latency_ms", "kill decision to agent ack",
                                labels=["node"])
        for node, ms in snap.kill.ack_latency_ms.items():
            lat.add_metric([node], ms)
        yield from (age, alive, info, skew, lat)

    def _caps(self, snap: FleetSnapshot) -> Iterable[Metric]:
        util = GaugeMetricFamily("qtd_cap_utilisation", "value / limit", labels=["cap", "key"])
        tripped = GaugeMetricFamily("qtd_cap_tripped", "1 once the cap fired a kill",
                                    labels=["cap"])
        for c in snap.caps:
            util.add_metric([c.name, c.key], c.utilisation)
            tripped.add_metric([c.name], float(c.tripped))
        alerts = GaugeMetricFamily("qtd_alerts_open", "open or acknowledged alerts",
                                   labels=["severity", "status"])
        tally: dict[tuple[str, str], int] = {}
        for a in snap.alerts:
            tally[(a.severity, a.status)] = tally.get((a.severity, a.status), 0) + 1
        for (sev, status), n in sorted(tally.items()):
            alerts.add_metric([sev, status], n)
        bad = CounterMetricFamily("qtd_bad_messages", "NATS messages this process could not "
                                  "read (rejected, not applied)", labels=["kind"])
        for kind in REJECT_KINDS:
            bad.add_metric([kind], REJECTED.counts[kind])
        forged = CounterMetricFamily("qtd_forged_events", "events refused because subject, "
                                     "payload and Msg-Id name different nodes",
                                     labels=["subject_node", "claimed_node"])
        for (by, claimed), n in sorted(REJECTED.forged_by.items()):
            forged.add_metric([by, claimed], n)
        yield from (util, tripped, alerts, bad, forged)


class ConnectionCollector(Collector):
    """The status page's own connections, from its :class:`ConnectionGuard`."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard

    def collect(self) -> Iterable[Metric]:
        g = self.guard
        yield CounterMetricFamily("qtd_web_request_bytes", "bytes received on the page's "
                                  "HTTP connections (WebSocket frames not included)",
                                  value=g.bytes_received)
        dropped = CounterMetricFamily("qtd_web_connections_dropped", "connections closed "
                                      "for being slow, too many, or sending unread bodies",
                                      labels=["reason"])
        for reason in DROP_REASONS:
            dropped.add_metric([reason], g.dropped[reason])
        yield dropped
        yield GaugeMetricFamily("qtd_web_connections_receiving",
                                "connections still sending a request", value=len(g.receiving))


class WebMetrics:
    """The app's registry: the snapshot collector plus the web's own instruments.

    Args:
        source: the fleet.
        connections: the server's connection guard (None: its figures are not reported).
    """

    def __init__(self, source: FleetSource, connections: ConnectionGuard | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(source))
        if connections is not None:
            self.registry.register(ConnectionCollector(connections))
        self.controls = Counter("qtd_web_controls", "controls run from the web",
                                ["verb", "target", "ok"], registry=self.registry)
        self.refused = Counter("qtd_web_refused", "control requests refused",
                               ["status"], registry=self.registry)
        self.order_latency = Histogram(
            "qtd_order_ack_latency_seconds", "order intent to venue acceptance",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry)
        self._seen: set[str] = set()

    def observe_orders(self, rows: Iterable[tuple[str, float | None]]) -> None:
        """Record ``(client_order_id, latency_ms)`` once per order."""
        for cid, ms in rows:
            if ms is not None and cid not in self._seen and len(self._seen) < 1_000_000:
                self._seen.add(cid)
                self.order_latency.observe(ms / 1000)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)


_QLABELS = ["bot", "venue", "symbol"]


def quality_metrics(mon: QualityView | None) -> Iterable[Metric]:
    """The ``qtd_exec_*`` and ``qtd_surveil_*`` gauges (module docstring; nothing without
    a quality view)."""
    if mon is None:
        return
    rows = mon.rows
    fams = {name: GaugeMetricFamily(f"qtd_exec_{name}", text, labels=_QLABELS) for name, text in (
        ("orders", "orders (intents) today"),
        ("latency_p50_seconds", "decision to ack latency, median"),
        ("latency_p99_seconds", "decision to ack latency, 99th percentile"),
        ("fill_rate", "filled / ordered quantity of done orders"),
        ("cancel_rate", "canceled / done orders"),
        ("reject_rate", "rejected / done orders"))}
    slip = GaugeMetricFamily("qtd_exec_slippage_bps", "notional-weighted slippage, adverse "
                             "positive", labels=[*_QLABELS, "benchmark"])
    for r in rows:
        lab = [r.bot, r.venue, r.symbol]
        fams["orders"].add_metric(lab, r.orders)
        for name, value in (("latency_p50_seconds", _s(r.latency_p50_ms)),
                            ("latency_p99_seconds", _s(r.latency_p99_ms)),
                            ("fill_rate", r.fill_rate), ("cancel_rate", r.cancel_rate),
                            ("reject_rate", r.reject_rate)):
            if value is not None:
                fams[name].add_metric(lab, value)
        for bench, value in (("decision", r.slippage_decision_bps),
                             ("arrival", r.slippage_arrival_bps)):
            if value is not None:
                slip.add_metric([*lab, bench], value)
    yield from fams.values()
    yield slip
    breaches = GaugeMetricFamily("qtd_exec_threshold_breaches", "thresholds crossed now",
                                 labels=["metric"])
    tally: dict[str, int] = {}
    for b in mon.breaches:
        tally[b.metric] = tally.get(b.metric, 0) + 1
    for metric, n in sorted(tally.items()):
        breaches.add_metric([metric], n)
    yield breaches
    found = GaugeMetricFamily("qtd_surveil_findings", "surveillance findings since start",
                              labels=["pattern"])
    for pattern, n in mon.finding_counts.items():
        found.add_metric([pattern], n)
    yield found


def _s(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000
