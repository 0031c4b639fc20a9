"""Paging through Apprise: severities, dedupe, escalation, P1 repeats, retries, quiet hours.

:meth:`Notifier.notify` only queues (it never blocks and never raises into the caller: risk
handling goes on whatever the network does); the dispatcher task (:meth:`Notifier.run`)
delivers each page to every Apprise URL configured for its severity, one delivery per URL,
retrying a failed one with exponential backoff and logging every failure.

* **Dedupe**: a page with the same alert key, severity and status as one queued within
  ``dedupe_window_s`` is dropped. A higher severity is another page, so escalations pass.
* **P1 repeats** every ``p1_repeat_s`` until :meth:`Notifier.ack` (``qtd ack ALERT_ID``) or
  :meth:`Notifier.resolve`.
* **Quiet hours**: P3/P4 pages raised inside the window are held until it ends.

Each page carries the trigger, the limit and the observed value, the bot's and the fleet's
PnL today, the affected positions and the bot's last events (:func:`format_page`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import heapq
import itertools
import logging
import warnings
from collections.abc import Awaitable
from datetime import datetime, timedelta
from datetime import time as dtime
from typing import Annotated, Any, Protocol
from zoneinfo import ZoneInfo

import msgspec
from msgspec import Meta

from qtd.clock import Clock, LiveClock
from qtd.events import Severity

log = logging.getLogger("qtd.notify")
_NS = 1_000_000_000
# the leader config's bounds (qtd.leader.config Seconds / Count)
_Seconds = Annotated[float, Meta(gt=0, lt=10 * 365 * 86400)]
_Count = Annotated[int, Meta(gt=0, lt=10**9)]


class QuietHours(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Local ``HH:MM`` window (may wrap midnight) in which P3/P4 pages are held."""

    start: str
    end: str
    tz: str = "UTC"


class NotifyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Paging: ``[notify]`` of the leader config (:class:`~qtd.leader.config.LeaderConfig`).

    Attributes:
        destinations: Apprise URLs per severity, e.g. ``P1 = ["tgram://TOKEN/CHAT"]``.
        dedupe_window_s: an identical page (same alert key and severity) inside this window
            is dropped.
        p1_repeat_s: a P1 page is re-sent this often until acknowledged.
        retry_attempts: delivery attempts per destination before giving up (logged).
        retry_base_s: first retry delay; doubles per attempt up to ``retry_max_s``.
        retry_max_s: cap of the retry delay.
        send_timeout_s: one delivery may take at most this long.
        quiet_hours: P3/P4 pages raised inside it are held until it ends.
        recent_events: how many of the bot's last events a page lists.
    """

    destinations: dict[Severity, list[str]] = {}
    dedupe_window_s: _Seconds = 300.0
    p1_repeat_s: _Seconds = 120.0
    retry_attempts: _Count = 5
    retry_base_s: _Seconds = 1.0
    retry_max_s: _Seconds = 60.0
    send_timeout_s: _Seconds = 10.0
    quiet_hours: QuietHours | None = None
    recent_events: Annotated[int, Meta(ge=0, le=100)] = 5


class Page(msgspec.Struct, kw_only=True):
    """One page (an alert raised, escalated or recovered), with its PnL context.

    Money in ``currency``; ``limit``/``value`` in ``unit``; ``positions`` and
    ``recent_events`` are one line each (newest event first).
    """

    alert_id: str
    key: str
    severity: Severity
    title: str
    status: str = "open"
    trigger: str = ""
    limit: float | None = None
    value: float | None = None
    unit: str = ""
    node: str = ""
    bot: str = ""
    symbol: str = ""
    currency: str = "USD"
    bot_pnl_today: float | None = None
    fleet_pnl_today: float | None = None
    positions: list[str] = []
    recent_events: list[str] = []
    message: str = ""
    ts_ns: int = 0


def format_page(page: Page, repeat: int = 0) -> tuple[str, str]:
    """The page as (title, body) plain text."""
    again = f" (repeat {repeat}, not acknowledged)" if repeat else ""
    state = "RECOVERED: " if page.status == "closed" else ""
    title = f"[{page.severity}] qtd: {state}{page.title}{again}"
    cur = page.currency
    lines = [f"trigger: {page.trigger or page.key}"]
    if page.limit is not None or page.value is not None:
        lines.append(f"limit: {_num(page.limit)} {page.unit}   observed: {_num(page.value)} "
                     f"{page.unit}")
    where = "/".join(x for x in (page.node, page.bot) if x)
    if where or page.symbol:
        lines.append(f"where: {where or '-'}   symbol: {page.symbol or '-'}")
    bot = f"bot {where} {_num(page.bot_pnl_today)} {cur}; " if page.bot else ""
    lines.append(f"PnL today: {bot}fleet {_num(page.fleet_pnl_today)} {cur}")
    if page.message:
        lines.append(page.message)
    lines.append("positions:" if page.positions else "positions: none")
    lines += [f"  {p}" for p in page.positions]
    if page.recent_events:
        lines.append("last events (newest first):")
        lines += [f"  {e}" for e in page.recent_events]
    lines.append(f"alert {page.alert_id}: acknowledge with `qtd ack {page.alert_id}`")
    return title, "\n".join(lines)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.2f}"


class Sender(Protocol):
    async def __call__(self, url: str, title: str, body: str, severity: Severity) -> bool:
        """Deliver one message to one URL; True on success."""
        ...


_TYPES = {Severity.P1: "failure", Severity.P2: "failure", Severity.P3: "warning",
          Severity.P4: "info"}


@functools.cache
def _apprise() -> Any:
    """Import Apprise and load its plugins once, in the calling (main) thread.

    Apprise's PGP helper imports the stdlib ``imghdr``, deprecated since Python 3.11
    (``DeprecationWarning``); that one warning is ignored here so it cannot turn into an
    error (``-W error``) inside a delivery thread.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'imghdr' is deprecated",
                                category=DeprecationWarning)
        import apprise

        apprise.Apprise().add("json://localhost/")  # loads the plugin registry now
    return apprise


def check_url(url: str) -> bool:
    """True if Apprise recognises ``url`` (e.g. ``tgram://TOKEN/CHAT``, ``json://host/path``)."""
    return bool(_apprise().Apprise().add(url))


class AppriseSender:
    """Delivers through Apprise in a worker thread (Apprise's plugins are blocking).

    Args:
        timeout_s: socket timeout of one delivery, seconds.
    """

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self._apprise = _apprise()

    async def __call__(self, url: str, title: str, body: str, severity: Severity) -> bool:
        return await asyncio.to_thread(self._send, url, title, body, severity)

    def _send(self, url: str, title: str, body: str, severity: Severity) -> bool:
        ap = self._apprise.Apprise()
        if not ap.add(url):
            return False
        return bool(ap.notify(body=body, title=title, notify_type=_TYPES[severity],
                              timeout=self.timeout_s))


class _Delivery(msgspec.Struct, kw_only=True):
    page: Page
    url: str  # "" = the P1 repeat check
    attempt: int = 0
    repeat: int = 0


class Notifier:
    """Queues pages and delivers them from one dispatcher task (:meth:`run`).

    Args:
        cfg: destinations per severity, dedupe, repeat, retry and quiet-hours settings.
        sender: the delivery function (default :class:`AppriseSender`).
        clock: wall clock for quiet hours.

    Attributes:
        stats: ``queued``, ``sent``, ``failed`` (attempts), ``retried``, ``gave_up``,
            ``deduped``, ``held`` (quiet hours), ``repeats``, ``no_destination``.
    """

    def __init__(self, cfg: NotifyConfig, *, sender: Sender | None = None,
                 clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.sender: Sender = sender or AppriseSender(cfg.send_timeout_s)
        self.clock = clock or LiveClock()
        self.stats = dict.fromkeys(("queued", "sent", "failed", "retried", "gave_up",
                                    "deduped", "held", "repeats", "no_destination"), 0)
        self._heap: list[tuple[float, int, _Delivery]] = []
        self._n = itertools.count()
        self._last: dict[tuple[str, Severity, str], float] = {}
        self._repeating: dict[str, Page] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent_log: list[tuple[str, str, str]] = []  # (url, title, body), last 100

    def notify(self, page: Page) -> bool:
        """Queue a page for every destination of its severity. Never raises, never blocks.

        Returns:
            True if queued; False when deduplicated, without destination, or on an
            internal error (logged).
        """
        try:
            return self._notify(page)
        except Exception:
            log.exception("notify: could not queue page %s", page.alert_id)
            return False

    def _notify(self, page: Page) -> bool:
        now = _mono()
        key = (page.key, page.severity, page.status)
        last = self._last.get(key)
        if last is not None and now - last < self.cfg.dedupe_window_s:
            self.stats["deduped"] += 1
            return False
        self._last[key] = now
        urls = self.cfg.destinations.get(page.severity, [])
        if page.severity is Severity.P1 and page.status == "open":
            self._repeating[page.alert_id] = page
            self._schedule(_Delivery(page=page, url=""), now + self.cfg.p1_repeat_s)
        if not urls:
            self.stats["no_destination"] += 1
            log.warning("page %s (%s) has no destination configured", page.alert_id,
                        page.severity)
            return False
        due = now + self._quiet_delay(page.severity)
        for url in urls:
            self._schedule(_Delivery(page=page, url=url), due)
        self.stats["queued"] += 1
        return True

    def ack(self, alert_id: str) -> bool:
        """Stop repeating a P1 page. Returns True if it was repeating."""
        return self._repeating.pop(alert_id, None) is not None

    def resolve(self, alert_id: str) -> None:
        """The alert's condition cleared: stop repeats."""
        self._repeating.pop(alert_id, None)

    def _schedule(self, d: _Delivery, due: float) -> None:
        heapq.heappush(self._heap, (due, next(self._n), d))
        self._wake.set()

    def _quiet_delay(self, sev: Severity) -> float:
        q = self.cfg.quiet_hours
        if q is None or sev in (Severity.P1, Severity.P2):
            return 0.0
        delay = quiet_remaining_s(q, self.clock.now_ns())
        if delay > 0:
            self.stats["held"] += 1
        return delay

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver due pages until ``stop`` is set; in-flight deliveries are then awaited
        up to ``send_timeout_s`` and cancelled."""
        try:
            while not stop.is_set():
                self._dispatch_due()
                self._wake.clear()
                delay = self._heap[0][0] - _mono() if self._heap else 1.0
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(max(delay, 0.0), 1.0)):
                        await _first(self._wake.wait(), stop.wait())
        finally:
            await self._drain()

    async def _drain(self) -> None:
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=self.cfg.send_timeout_s)
            for t in pending:
                t.cancel()

    def _dispatch_due(self) -> None:
        now = _mono()
        while self._heap and self._heap[0][0] <= now:
            _, _, d = heapq.heappop(self._heap)
            if not d.url:
                self._repeat(d)
                continue
            task = asyncio.create_task(self._deliver(d), name=f"qtd-notify-{d.page.alert_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _repeat(self, d: _Delivery) -> None:
        if d.page.alert_id not in self._repeating:
            return
        self.stats["repeats"] += 1
        for url in self.cfg.destinations.get(d.page.severity, []):
            self._schedule(_Delivery(page=d.page, url=url, repeat=d.repeat + 1), _mono())
        self._schedule(_Delivery(page=d.page, url="", repeat=d.repeat + 1),
                       _mono() + self.cfg.p1_repeat_s)

    async def _deliver(self, d: _Delivery) -> None:
        title, body = format_page(d.page, d.repeat)
        ok = False
        try:
            async with asyncio.timeout(self.cfg.send_timeout_s):
                ok = await self.sender(d.url, title, body, d.page.severity)
        except Exception as exc:  # a page must never take the leader down
            log.warning("page %s to %s raised %r", d.page.alert_id, _safe(d.url), exc)
        if ok:
            self.stats["sent"] += 1
            self.sent_log = [*self.sent_log[-99:], (d.url, title, body)]
            return
        self.stats["failed"] += 1
        if d.attempt + 1 >= self.cfg.retry_attempts:
            self.stats["gave_up"] += 1
            log.error("page %s to %s failed %d times; giving up", d.page.alert_id,
                      _safe(d.url), d.attempt + 1)
            return
        delay = min(self.cfg.retry_base_s * 2**d.attempt, self.cfg.retry_max_s)
        log.warning("page %s to %s failed (attempt %d); retry in %.1fs", d.page.alert_id,
                    _safe(d.url), d.attempt + 1, delay)
        self.stats["retried"] += 1
        self._schedule(msgspec.structs.replace(d, attempt=d.attempt + 1), _mono() + delay)


def quiet_remaining_s(q: QuietHours, now_ns: int) -> float:
    """Seconds until the quiet window ends (0 when outside it). The window may wrap
    midnight (e.g. 22:00 to 07:00)."""
    tz = ZoneInfo(q.tz)
    now = datetime.fromtimestamp(now_ns / _NS, tz)
    start, end = dtime.fromisoformat(q.start), dtime.fromisoformat(q.end)
    t = now.time()
    inside = start <= t < end if start <= end else (t >= start or t < end)
    if not inside:
        return 0.0
    end_dt = datetime.combine(now.date(), end, tz)
    if end_dt <= now:
        end_dt = datetime.combine(now.date() + timedelta(days=1), end, tz)
    return (end_dt - now).total_seconds()


def _safe(url: str) -> str:
    """The URL's scheme and a short hash (tokens stay out of logs)."""
    digest = hashlib.blake2b(url.encode(), digest_size=4).hexdigest()
    return f"{url.partition('://')[0]}://#{digest}"


def _mono() -> float:
    return asyncio.get_running_loop().time()


async def _first(*aws: Awaitable[object]) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
