"""The leader daemon: wires fleet.db, the fleet view, caps, kill switch, liveness and paging.

Tasks (one task group): ``ingest`` (JetStream → fleet.db → view), ``checks`` (caps and
liveness every ``check_interval_s``), ``heartbeat`` (``<prefix>.hb.leader`` every
``heartbeat_interval_s``), ``notify`` (the page dispatcher), and with ``[web] enabled`` the
status page (``qtd-leader-web``: uvicorn in this event loop, :mod:`qtd.web`). Core
subscriptions: agents' heartbeats and PnL ticks, kill acknowledgements, and the leader's
request/reply commands on ``<prefix>.ctl.leader.<verb>`` (``resume``, ``ack``, ``alerts``,
``kill``, ``status``, ``caps``, ``caps_raise``) used by ``qtd resume``/``qtd ack``/``qtd
alerts``/``qtd caps``. Shutdown: web server
stopped (WebSockets closed, requests drained) → stop flag → tasks end their loop → pending
audit/page tasks get a few seconds → NATS drained → fleet.db closed.

With ``[lease] enabled`` a ``lease`` task competes for the leader lease
(:mod:`qtd.leader.lease`). Until it holds the lease the leader is a warm standby
(:attr:`Leader.active` False): it ingests into its own fleet.db and consumer and keeps its
view, but its caps are disarmed, it raises no alert, sends no page, publishes no heartbeat
or kill and leaves commands to the active leader. Taking over arms the caps (a self-trade seen
meanwhile fires at once), re-reads the kill state from KV and publishes a heartbeat; losing
the lease hands open alerts over (their P1 repeats stop here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from qtd.aio import cancel_and_wait
from qtd.bus import Subjects, connect, ensure_jetstream
from qtd.bus.rejects import REJECTED
from qtd.clock import Clock, LiveClock
from qtd.errors import ConfigError, QtdError
from qtd.events import (
    DECODE_ERRORS,
    AnyEvent,
    CapOverride,
    Heartbeat,
    PnLSnapshot,
    RiskBreach,
    Scope,
    Severity,
    TradingState,
    TradingStateChanged,
)
from qtd.leader.alerts import AlertBook, TaskSet
from qtd.leader.caps import Breach, FleetCaps
from qtd.leader.config import LeaderConfig, consumer_name
from qtd.leader.fleetdb import LEADER_NODE, FleetDB
from qtd.leader.ingest import Ingestor
from qtd.leader.kill import KillSwitchController
from qtd.leader.lease import LeaderLease, lease_bucket
from qtd.leader.liveness import LivenessMonitor
from qtd.leader.versions import VersionBoard
from qtd.leader.view import FleetView
from qtd.notify import Notifier, Sender
from qtd.quality.monitor import QualityMonitor
from qtd.tradingday import fleet_trading_day

if TYPE_CHECKING:
    from qtd.web import WebServer

log = logging.getLogger("qtd.leader")
_hb_decoder = msgspec.json.Decoder(Heartbeat | RiskBreach)  # RiskBreach: store faults
_pnl_decoder = msgspec.json.Decoder(PnLSnapshot)
PEAK_KEY = "peak_equity"


KILL_SYNC_S = 1.0
"""Seconds between reads of the kill set: a kill removed by ``qtd kill --release`` (or
added while the core broadcast was missed) shows on the page within this."""


class CommandRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of a ``<prefix>.ctl.leader.<verb>`` request.

    For ``kill``: ``scope`` (default GLOBAL) and ``key``. For ``resume``: what to release —
    ``kill_ids``, or every kill on ``scope``/``key``, or ``everything``; none of them
    releases the only active kill (refused when several are active). For ``caps_raise``:
    ``cap``, ``key`` (the symbol of ``symbol_exposure``), ``limit``, ``operator``, ``reason``.
    """

    operator: str = ""
    reason: str = ""
    alert_id: str = ""
    scope: Scope | None = None
    key: str = ""
    flatten: bool = False
    kill_ids: list[str] = []
    everything: bool = False
    cap: str = ""
    limit: float | None = None


class Leader:
    """The leader process (use ``async with Leader(cfg) as leader`` or start/stop).

    Args:
        cfg: the leader config.
        clock: leader clock (default wall clock).
        sender: page delivery (default Apprise).

    Attributes:
        view: the live :class:`FleetView` (``view.snapshot()`` for the status page).
        db, caps, alerts, kill, notifier, ingestor: the parts, available after start.
    """

    def __init__(self, cfg: LeaderConfig, *, clock: Clock | None = None,
                 sender: Sender | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or LiveClock()
        self.subjects = Subjects(cfg.bus.prefix)
        fleet = cfg.fleet
        self.view = FleetView(
            trading_day=fleet_trading_day(fleet),
            capital=Decimal(repr(fleet.capital)), currency=fleet.currency, clock=self.clock,
            heartbeat_timeout_s=cfg.liveness.heartbeat_timeout_s, pnl_stale_s=fleet.pnl_stale_s,
            keep_terminal_orders=cfg.ingest.terminal_orders_kept)
        self.caps = FleetCaps(cfg.caps, self.clock, self.view.trading_day)
        self.versions = VersionBoard(self.clock)  # deployed versions (qtd.deploy)
        self.quality = QualityMonitor(cfg.quality, self.view.trading_day, self.clock,
                                      fleet.currency)
        self.notifier = Notifier(cfg.notify, sender=sender, clock=self.clock)
        self.tasks = TaskSet()
        self._stop = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        self._saved_peak = Decimal(0)
        self.web: WebServer | None = None
        self.lease: LeaderLease | None = None  # [lease] enabled: set in _wire

    async def __aenter__(self) -> Leader:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open fleet.db, rebuild the view, connect, subscribe and start the tasks.

        Raises:
            StoreError: fleet.db cannot be opened.
            ConfigError, OperationalError, TemporaryError: NATS setup failed.
        """
        self.db = await FleetDB.open(self.cfg.fleet_db, fsync=self.cfg.ingest.fsync)
        try:
            await self._rebuild()
            self.nc: Client = await connect(self.cfg.bus)
            await self._wire()
        except BaseException:
            await self.db.close()
            raise
        self._main = asyncio.create_task(self._run(), name="qtd-leader")
        if self.cfg.web.enabled:
            try:
                await self._start_web()
            except BaseException:
                await self.stop()
                raise

    async def _start_web(self) -> None:
        from qtd.leader.websource import LeaderSource
        from qtd.web import WebServer, create_app, resolve_operator_token
        from qtd.web.conn import ConnectionGuard

        w = self.cfg.web
        token = resolve_operator_token(w.operator_token_env, w.operator_token_file)
        guard = ConnectionGuard(w.max_connections, w.request_timeout_s)
        app = create_app(LeaderSource(self), token=token, push_interval_s=w.push_interval_s,
                         session_ttl_s=w.session_ttl_s, allowed_origins=tuple(w.allowed_origins),
                         allowed_hosts=(w.host, *w.allowed_hosts), connections=guard)
        web = WebServer(app, w.host, w.port, guard=guard)
        try:
            await web.start()
        except OSError as exc:
            raise ConfigError(f"web: cannot listen on {w.host}:{w.port} ({exc.strerror})",
                              field="web.port", value=w.port) from None
        self.web = web
        log.warning("leader.web url=%s controls=%s", web.url,
                    "token" if token else "read-only")

    @property
    def web_port(self) -> int | None:
        """The status page's bound TCP port (None: not serving)."""
        return None if self.web is None else self.web.port

    @property
    def web_url(self) -> str | None:
        """The status page's URL, ``http://host:port/`` (None: not serving)."""
        return None if self.web is None else self.web.url

    async def _rebuild(self) -> None:
        n = 0
        async for batch in self.db.replay_batches():
            for ev in batch:
                self.view.apply(ev)
                self.caps.on_event(ev, live=False)
                self.versions.on_event(ev, live=False)
            self.quality.replay(batch)
            n += len(batch)
        for ov in await self.db.local_events(CapOverride.__name__):
            if isinstance(ov, CapOverride):
                self.caps.apply_override(ov)
        peak = await self.db.get_meta(PEAK_KEY)
        if peak is not None:
            self.view.peak_equity = self._saved_peak = max(self.view.capital, Decimal(peak))
        log.info("leader.rebuilt events=%d stream_seq=%d", n, self.db.stream_seq)

    async def _wire(self) -> None:
        js = self.nc.jetstream()
        setup = await ensure_jetstream(js, self.subjects.prefix)
        if self.cfg.lease.enabled:  # standby until the lease is ours
            self.lease = LeaderLease(await lease_bucket(js, self.cfg.lease), self.cfg.lease,
                                     self.clock, self._on_lease)
            self.caps.arm(False)
        self.alerts = AlertBook(view=self.view, db=self.db, notifier=self.notifier,
                                clock=self.clock, tasks=self.tasks,
                                recent_events=self.cfg.notify.recent_events)
        self.view.alerts = self.alerts.views
        self.view.measure_caps = lambda r: self.caps.views(self.view, r)
        self.alerts.is_active = lambda: self.active
        await self.versions.attach(self.alerts, js)
        self.kill = KillSwitchController(
            nc=self.nc, kv=setup.control, subjects=self.subjects, db=self.db, view=self.view,
            alerts=self.alerts, caps=self.caps, clock=self.clock, tasks=self.tasks,
            ack_timeout_s=self.cfg.kill.ack_timeout_s)
        self.liveness = LivenessMonitor(self.cfg.liveness, self.view, self.alerts)
        ingest = msgspec.structs.replace(self.cfg.ingest, durable=consumer_name(self.cfg))
        self.ingestor = Ingestor(js, self.subjects, ingest, self.db, self._on_events,
                                 on_suspect=self.alerts.on_suspect)
        self.view.ingest_stats = self.ingestor.stats
        await self.quality.attach(
            alerts=self.alerts, db=self.db, sender=self.notifier.sender, tasks=self.tasks,
            urls=self.cfg.notify.destinations.get(self.cfg.quality.daily_severity, []),
            equity=self._bot_pnl)
        self.kill.is_active = lambda: self.active
        await self.kill.start()
        await self.nc.subscribe(self.subjects.hb_all, cb=self._on_hb)
        await self.nc.subscribe(self.subjects.pnl_all, cb=self._on_pnl)
        await self.nc.subscribe(f"{self.subjects.prefix}.ctl.{LEADER_NODE}.*", cb=self._on_cmd)
        await self.nc.flush()

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.ingestor.run(self._stop), name="qtd-leader-ingest")
            tg.create_task(self._every(self.cfg.liveness.check_interval_s, self._checks),
                           name="qtd-leader-checks")
            tg.create_task(self._every(self.cfg.liveness.heartbeat_interval_s, self._beat),
                           name="qtd-leader-heartbeat")
            tg.create_task(self._every(KILL_SYNC_S, self._sync_kills),
                           name="qtd-leader-kill-sync")
            tg.create_task(self.notifier.run(self._stop), name="qtd-leader-notify")
            if self.lease is not None:
                tg.create_task(self.lease.run(self._stop), name="qtd-leader-lease")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the web server and the tasks, drain NATS, close fleet.db."""
        if self.web is not None:
            await self.web.stop(timeout_s)
            self.web = None
        self._stop.set()
        if self._main is not None:
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(self._main)
            except TimeoutError:
                await cancel_and_wait(self._main)
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
        await self.tasks.drain(timeout_s)
        with contextlib.suppress(Exception):
            await self.nc.drain()
        await self.db.close()

    @property
    def active(self) -> bool:
        """This leader acts (pages, trips caps, kills, answers commands, heartbeats):
        always without ``[lease]``, else while it holds the lease (:mod:`qtd.leader.lease`)."""
        return self.lease is None or self.lease.is_active()

    async def _on_lease(self, active: bool) -> None:
        log.warning("leader.%s instance=%s", "active" if active else "standby",
                    self.cfg.lease.instance)
        self._handle(self.caps.arm(active))
        if active:
            await self.kill.sync()
            await self._beat()
        else:
            self.alerts.hand_over()

    async def wait(self) -> None:
        """Until the tasks end (after :meth:`stop`, or when one fails: re-raised)."""
        if self._main is not None:
            await self._main

    # --- loops ---------------------------------------------------------------------------

    async def _every(self, period_s: float, fn: Callable[[], Awaitable[None]]) -> None:
        while not self._stop.is_set():
            try:
                await fn()
            except Exception:  # one bad tick must not end the leader's checks
                log.exception("leader.tick_failed fn=%s", getattr(fn, "__name__", fn))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period_s):
                    await self._stop.wait()

    async def _sync_kills(self) -> None:
        await self.kill.sync(watch=True)

    async def _checks(self) -> None:
        self._handle(self.caps.evaluate(self.view))
        if self.active:  # a standby pages nothing
            self.liveness.check()
        await self.versions.check()
        if self.active:
            await self.quality.check()
        if self.view.peak_equity > self._saved_peak:
            self._saved_peak = self.view.peak_equity
            await self.db.set_meta(PEAK_KEY, str(self._saved_peak))

    async def _beat(self) -> None:
        if not self.active:  # agents must see no leader rather than a standby
            return
        now = self.clock.now_ns()
        state = TradingState.HALTED if self.view.kill.active else TradingState.ACTIVE
        hb = Heartbeat(node=LEADER_NODE, ts_event=now, ts_init=now, role="leader",
                       state=state, last_seq=self.db.stream_seq)
        await self.nc.publish(self.subjects.hb_leader, msgspec.json.encode(hb))

    def _bot_pnl(self) -> dict[str, float]:
        """``node/bot`` -> realized + unrealized PnL now (the quality monitor's decay alert)."""
        return {f"{b.node}/{b.bot}": b.agg.realized + b.agg.unrealized
                for b in self.view.snapshot().bots}

    # --- events and breaches -------------------------------------------------------------

    def _on_events(self, events: list[AnyEvent]) -> None:
        breaches: list[Breach] = []
        for ev in events:
            self.view.apply(ev)
            breaches += self.caps.on_event(ev)
            self.versions.on_event(ev)
            if type(ev) in (RiskBreach, TradingStateChanged) and self.active:
                self.alerts.on_agent_event(ev)
        self._handle(breaches)
        self.quality.on_events(events)

    def _handle(self, breaches: list[Breach]) -> None:
        for b in breaches:
            self.tasks.spawn(self.trip(b), f"qtd-leader-trip-{b.cap}")

    async def trip(self, b: Breach) -> None:
        """A cap fired: kill at its level first, then audit and page P1."""
        if not self.active:
            return
        scope, key = b.scope()
        reason = f"fleet cap {b.cap}: {b.message}"
        await self.kill.trigger_kill(scope, key, reason, flatten=b.flatten, source="leader",
                                     cap=b.trip_key)
        now = self.clock.now_ns()
        await self.db.append_local([RiskBreach(
            node=LEADER_NODE, bot=b.bot, ts_event=now, ts_init=now, check=b.cap, scope=scope,
            scope_key=key, limit=b.limit, value=b.value, unit=b.unit, severity=Severity.P1,
            action="kill", symbol=b.symbol, message=b.message)])
        self.alerts.raise_alert(
            f"cap:{b.cap}:{key}", Severity.P1, f"fleet cap {b.cap} tripped: kill {scope} {key}",
            trigger=b.cap, limit=b.limit, value=b.value, unit=b.unit, node=b.node, bot=b.bot,
            symbol=b.symbol, message=b.message)

    # --- core subscriptions --------------------------------------------------------------

    async def _on_hb(self, msg: Msg) -> None:
        if msg.subject == self.subjects.hb_leader:
            return
        try:
            hb = _hb_decoder.decode(msg.data)
        except DECODE_ERRORS as exc:
            REJECTED.reject("heartbeat", msg.subject, exc, log)
            return
        if isinstance(hb, RiskBreach):  # a store fault: the agent's outbox cannot carry it
            if msg.subject == f"{self.subjects.prefix}.hb.{hb.node}":
                self.view.on_agent_page(hb)
                if self.active:
                    self.alerts.on_agent_breach(hb)
            return
        self.view.on_heartbeat(hb)

    async def _on_pnl(self, msg: Msg) -> None:
        try:
            self.view.on_pnl(_pnl_decoder.decode(msg.data))
        except DECODE_ERRORS as exc:
            REJECTED.reject("pnl", msg.subject, exc, log)

    async def _on_cmd(self, msg: Msg) -> None:
        if not self.active:
            return  # a standby stays silent: the active leader answers
        verb = msg.subject.rsplit(".", 1)[-1]
        try:
            req = msgspec.json.decode(msg.data or b"{}", type=CommandRequest)
            reply: dict[str, Any] = {"ok": True, **await self.command(verb, req)}
        except (QtdError, *DECODE_ERRORS) as exc:
            reply = {"ok": False, "error": str(exc)}
        if msg.reply:
            await self.nc.publish(msg.reply, msgspec.json.encode(reply))

    async def command(self, verb: str, req: CommandRequest) -> dict[str, Any]:
        """Run an operator command (``resume``, ``ack``, ``alerts``, ``kill``, ``status``).

        Raises:
            QtdError: unknown verb, missing operator/reason, unknown alert.
        """
        if verb == "resume":
            res = await self.kill.resume(req.operator, req.reason, kill_ids=req.kill_ids,
                                         scope=req.scope, key=req.key,
                                         everything=req.everything)
            return {"resumed": not res.still_active, **msgspec.to_builtins(res)}
        if verb == "ack":
            rec = self.alerts.ack(req.alert_id, req.operator or "operator")
            if rec is None:
                raise QtdError(f"no open alert {req.alert_id!r}", alert_id=req.alert_id)
            return {"alert_id": rec.alert_id, "status": rec.status}
        if verb == "alerts":
            return {"alerts": msgspec.to_builtins(self.alerts.views())}
        if verb == "kill":
            rnd = await self.kill.trigger_kill(req.scope or Scope.GLOBAL, req.key,
                                               req.reason or "operator kill",
                                               req.operator, req.flatten, source="cli")
            return {"kill_id": rnd.kill_id, "expected": sorted(rnd.expected)}
        if verb == "versions":
            return {"versions": msgspec.to_builtins(self.versions.rows())}
        if verb in ("caps", "caps_raise"):
            return await self._caps_command(verb, req)
        if verb == "status":
            return {"snapshot": msgspec.to_builtins(self.view.snapshot()),
                    "instance": self.cfg.lease.instance, "active": self.active}
        raise QtdError(f"unknown leader command {verb!r}", verb=verb)

    async def _caps_command(self, verb: str, req: CommandRequest) -> dict[str, Any]:
        """``caps``: every cap and today's overrides; ``caps_raise``: store an audited
        override in fleet.db, then put it in force (and measure the caps again)."""
        if verb == "caps_raise":
            ev = self.caps.raise_limit(self.view, req.cap, req.key, req.limit,
                                       req.operator, req.reason)
            await self.db.append_local([ev])
            self.caps.apply_override(ev)
            log.warning("caps.raised cap=%s key=%s old=%g new=%g day=%s operator=%s "
                        "reason=%r", ev.cap, ev.cap_key, ev.old_limit, ev.new_limit,
                        ev.trading_day, ev.operator, ev.reason)
            self._handle(self.caps.evaluate(self.view))
        return {"caps": msgspec.to_builtins(self.view.caps),
                "overrides": msgspec.to_builtins(self.caps.overrides.active()),
                "trading_day": self.caps.overrides.today()}
