"""The leader's quality watch: execution quality and surveillance on every ingested event,
alerts when a threshold is crossed or a pattern found, the daily report when a day ends.

Wiring (:class:`~qtd.leader.daemon.Leader`): built with the leader, fed the events of
fleet.db while the leader rebuilds (:meth:`QualityMonitor.replay`: state only, nothing is
raised for history), attached to the alert book once NATS is up (:meth:`attach`), fed each
ingested batch (:meth:`on_events`) and ticked by the leader's check loop (:meth:`check`).

* Execution quality counts the current trading day (reset at the rollover). A crossed
  threshold opens alert ``exec:<metric>:<bot>:<venue>:<symbol>`` (``[quality]
  alert_severity``, default P3); it closes when the figure is back inside (or at the
  rollover).
* A surveillance finding opens alert ``surveil:<pattern>:<account>:<symbol>`` with the
  events behind it in the message; further findings on that key while it is open are logged
  (``qtd surveil --db fleet.db`` lists every one). The alert closes after
  ``surveil_quiet_s`` without a new finding on its key.
* When the trading day of the leader's clock changes, the report of the day that ended
  (:mod:`qtd.quality.daily`) is built from fleet.db and sent to the ``[notify]``
  destinations of ``[quality] daily_severity`` (default P4); the last day sent is kept in
  fleet.db (meta ``daily_report_day``) so a restart neither repeats nor skips one (a leader
  that was down over a rollover sends the missed day when it starts).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from qtd.clock import Clock
from qtd.events import AnyEvent, Severity
from qtd.metrics import sharpe_ratio
from qtd.projections import TradingDay
from qtd.quality.config import QualityConfig
from qtd.quality.daily import DailyReport, build_daily, day_bounds, format_daily, previous_day
from qtd.quality.execution_quality import ExecBreach, ExecRow, ExecutionQuality
from qtd.quality.surveil import Finding, Surveillance

if TYPE_CHECKING:
    from qtd.aio import TaskSet
    from qtd.notify import Sender

log = logging.getLogger("qtd.quality")
DAILY_META_KEY = "daily_report_day"


class AlertSink(Protocol):
    """Where the monitor opens and closes its alerts (the leader's
    :class:`~qtd.leader.alerts.AlertBook`)."""

    def raise_alert(self, key: str, severity: Severity, title: str, **fields: Any) -> object:
        """Open (or escalate) the alert for ``key`` and page it."""
        ...

    def close(self, key: str, message: str = ...) -> object:
        """Close the alert for ``key`` (its condition recovered)."""
        ...


class ReportDB(Protocol):
    """The fleet database the daily report reads and remembers its last day in (the
    leader's :class:`~qtd.leader.fleetdb.FleetDB`)."""

    @property
    def path(self) -> Path:
        """The database file (the report opens it read-only)."""
        ...

    async def get_meta(self, key: str) -> str | None:
        """A stored value (None if absent)."""
        ...

    async def set_meta(self, key: str, value: str) -> None:
        """Store a small value."""
        ...


class QualityMonitor:
    """Execution quality, surveillance and the daily report inside the leader.

    Args:
        cfg: ``[quality]`` of the leader config.
        trading_day: the fleet's trading day (tz and rollover).
        clock: the leader's clock.
        currency: the fleet currency (daily report).
    """

    def __init__(self, cfg: QualityConfig, trading_day: TradingDay, clock: Clock,
                 currency: str = "USD") -> None:
        self.cfg = cfg
        self.trading_day = trading_day
        self.clock = clock
        self.currency = currency
        self.day = trading_day.label(clock.now_ns())
        self.execution = ExecutionQuality(day_bounds(self.day, trading_day)[0])
        self.surveillance = Surveillance(cfg.surveil)
        self.finding_counts: dict[str, int] = {"wash": 0, "spoof": 0, "layer": 0}
        self.breaches: list[ExecBreach] = []
        self.reports: list[tuple[DailyReport, int]] = []  # (report, deliveries ok), last 7
        self._alerts: AlertSink | None = None
        self._db: ReportDB | None = None
        self._sender: Sender | None = None
        self._urls: list[str] = []
        self._tasks: TaskSet | None = None
        self._open_exec: set[str] = set()
        self._open_surveil: dict[str, int] = {}  # alert key -> ts of its last finding, ns
        self._sent_day: str | None = None
        self._next_eval = 0
        self._equity: Callable[[], dict[str, float]] | None = None
        self._samples: dict[str, deque[float]] = {}
        self._next_sample = 0
        self._open_decay: set[str] = set()
        self.rolling_sharpe: dict[str, float] = {}
        """``node/bot`` -> the last rolling Sharpe the decay alert judged."""
        self.retry_base_s = 1.0  # daily report delivery: retry after 1 s, then 2 s

    # --- wiring ---------------------------------------------------------------------------

    def replay(self, events: list[AnyEvent]) -> None:
        """Feed history (the leader's rebuild): state only, no alert."""
        if not self.cfg.enabled:
            return
        for ev in events:
            self.execution.feed(ev)
            self.surveillance.feed(ev)
        del self.surveillance.findings[:-200]

    async def attach(self, *, alerts: AlertSink, db: ReportDB, sender: Sender, urls: list[str],
                     tasks: TaskSet, equity: Callable[[], dict[str, float]] | None = None
                     ) -> None:
        """Connect to the alert book, fleet.db and the page sender (after the rebuild);
        ``equity`` gives each bot's PnL now (``"node/bot"`` -> currency) for the decay
        alert."""
        self._equity = equity
        self._alerts, self._db, self._sender, self._urls, self._tasks = (
            alerts, db, sender, list(urls), tasks)
        self._sent_day = await db.get_meta(DAILY_META_KEY)

    # --- live -----------------------------------------------------------------------------

    def on_events(self, events: list[AnyEvent]) -> list[Finding]:
        """Feed an ingested batch; raise an alert for each surveillance finding."""
        if not self.cfg.enabled:
            return []
        found: list[Finding] = []
        for ev in events:
            self.execution.feed(ev)
            found += self.surveillance.feed(ev)
        for f in found:
            self.finding_counts[f.pattern] = self.finding_counts.get(f.pattern, 0) + 1
            self._raise_finding(f)
        if len(self.surveillance.findings) > 400:  # the last 200 are kept for the page
            del self.surveillance.findings[:-200]
        return found

    async def check(self) -> None:
        """Roll the trading day (sending the report of the one that ended), then open or
        close execution-quality alerts. Called by the leader's check loop."""
        today = self.trading_day.label(self.clock.now_ns())
        if today != self.day:
            self.day = today
            self.execution.reset(day_bounds(today, self.trading_day)[0])
        now = self.clock.now_ns()
        if self.cfg.enabled and now >= self._next_eval:
            self._next_eval = now + int(self.cfg.eval_interval_s * 1e9)
            self._exec_alerts()
            self._close_quiet(now)
        if self.cfg.enabled and self.cfg.decay.enabled and self._equity is not None \
                and now >= self._next_sample:
            self._next_sample = now + int(self.cfg.decay.sample_s * 1e9)
            self._decay_alerts(self._equity())
        if self.cfg.daily_report and self._db is not None and self._tasks is not None:
            ended = previous_day(self.clock.now_ns(), self.trading_day)
            if self._sent_day is None or self._sent_day < ended:
                first_run = self._sent_day is None
                self._sent_day = ended
                await self._db.set_meta(DAILY_META_KEY, ended)
                if not first_run:  # a fresh fleet.db starts counting from today
                    self._tasks.spawn(self.send_daily(ended), f"qtd-daily-{ended}")

    @property
    def last_report_day(self) -> str | None:
        """The last trading day whose report was sent (or skipped on a fresh fleet.db)."""
        return self._sent_day

    @property
    def db_path(self) -> Path | None:
        """fleet.db (None until attached)."""
        return None if self._db is None else self._db.path

    def rows(self) -> list[ExecRow]:
        """Today's execution quality per (bot, venue, symbol)."""
        return self.execution.rows()

    # --- alerts ---------------------------------------------------------------------------

    def _exec_alerts(self) -> None:
        if self._alerts is None:
            return
        self.breaches = self.execution.breaches(self.cfg.execution)
        now_open: set[str] = set()
        for b in self.breaches:
            key = f"exec:{b.metric}:{b.bot}:{b.venue}:{b.symbol}"
            now_open.add(key)
            if key not in self._open_exec:
                self._alerts.raise_alert(
                    key, self.cfg.alert_severity, f"execution quality: {b.bot} {b.metric} "
                    f"{b.value:.4g} {b.unit} (limit {b.limit:g})", trigger=f"exec_{b.metric}",
                    limit=b.limit, value=b.value, unit=b.unit, bot=b.bot, symbol=b.symbol,
                    message=b.message)
        for key in self._open_exec - now_open:
            self._alerts.close(key, "execution quality back inside its threshold")
        self._open_exec = now_open

    def _decay_alerts(self, pnl: dict[str, float]) -> None:
        """Sample each bot's equity; open or close its decay alert (:class:`DecayConfig`)."""
        d = self.cfg.decay
        ppy = 365.25 * 86_400 / d.sample_s
        for bot, value in pnl.items():
            curve = self._samples.setdefault(bot, deque(maxlen=d.window + 1))
            curve.append(d.capital + value)
            if len(curve) <= d.window:
                continue
            pts = list(curve)
            rets = [b / a - 1.0 for a, b in itertools.pairwise(pts) if a > 0]
            sharpe = sharpe_ratio(rets, ppy)
            if sharpe is None:
                continue  # the PnL did not move (zero dispersion): nothing to judge
            self.rolling_sharpe[bot] = sharpe
            key = f"decay:{bot}"
            if sharpe < d.floor and key not in self._open_decay and self._alerts is not None:
                self._open_decay.add(key)
                self._alerts.raise_alert(
                    key, d.severity, f"decay: {bot} rolling Sharpe {sharpe:.2f} < floor "
                    f"{d.floor:g} over {d.window} samples of {d.sample_s:g} s",
                    trigger="decay", limit=d.floor, value=sharpe, unit="Sharpe",
                    bot=bot.split("/", 1)[-1], node=bot.split("/", 1)[0],
                    message=f"rolling Sharpe of {bot}'s live PnL fell below its floor")
            elif sharpe >= d.floor and key in self._open_decay and self._alerts is not None:
                self._open_decay.discard(key)
                self._alerts.close(key, f"rolling Sharpe {sharpe:.2f} back at or above "
                                   f"{d.floor:g}")

    def _close_quiet(self, now: int) -> None:
        quiet = int(self.cfg.surveil_quiet_s * 1e9)
        for key, last in list(self._open_surveil.items()):
            if now - last >= quiet and self._alerts is not None:
                del self._open_surveil[key]
                self._alerts.close(key, f"no new finding for {self.cfg.surveil_quiet_s:g} s")

    def _raise_finding(self, f: Finding) -> None:
        if self._alerts is None:
            return
        key = f"surveil:{f.pattern}:{f.account}:{f.symbol}"
        log.warning("surveil.finding pattern=%s account=%s symbol=%s message=%s", f.pattern,
                    f.account, f.symbol, f.message)
        if key in self._open_surveil:
            self._open_surveil[key] = self.clock.now_ns()
            return
        self._open_surveil[key] = self.clock.now_ns()
        lines = [f"seq {e.seq} {e.kind} {e.node}/{e.bot} {e.client_order_id} {e.detail}"
                 for e in f.events[:12]]
        self._alerts.raise_alert(
            key, self.cfg.alert_severity,
            f"surveillance: {f.pattern} on {f.account} {f.symbol}", trigger=f"surveil_{f.pattern}",
            limit=f.limit, value=f.value, unit=f.unit, bot=f.bots[0] if f.bots else "",
            symbol=f.symbol, message=f.message + "\n" + "\n".join(lines))

    # --- daily report ---------------------------------------------------------------------

    async def send_daily(self, day: str) -> DailyReport | None:
        """Build the report of ``day`` from fleet.db and send it to every destination
        (three attempts each, 1 s then 2 s apart). Never raises; returns the report."""
        if self._db is None or self._sender is None:
            return None
        try:
            report = await build_daily(self._db.path, day, self.trading_day,
                                       thresholds=self.cfg.execution,
                                       surveil=self.cfg.surveil)
        except Exception:
            log.exception("daily report %s could not be built", day)
            return None
        title, body = format_daily(report, self.currency)
        ok = 0
        for url in self._urls:
            ok += await self._deliver(url, title, body)
        if not self._urls:
            log.warning("daily report %s: no destination for %s", day, self.cfg.daily_severity)
        self.reports = [*self.reports[-6:], (report, ok)]
        log.info("daily report %s sent to %d of %d destinations", day, ok, len(self._urls))
        return report

    async def _deliver(self, url: str, title: str, body: str) -> bool:
        assert self._sender is not None
        for attempt in range(3):
            try:
                if await self._sender(url, title, body, self.cfg.daily_severity):
                    return True
            except Exception as exc:  # a report must never take the leader down
                log.warning("daily report delivery raised %r", exc)
            if attempt < 2:
                await asyncio.sleep(self.retry_base_s * 2**attempt)
        log.error("daily report: delivery failed 3 times; giving up")
        return False
