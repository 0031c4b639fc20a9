"""Session schedule: bots start, stop or flatten on their venue's trading session.

Each bot may have a *session plan* (``[schedule]`` in the agent config, a bot's
``[schedule.bots.<bot>]`` entry, or the ``session`` of the route that yielded it): a session
name — an ``exchange-calendars`` code such as ``XNYS`` (holidays and early closes included,
:mod:`qtd.calendars`), the built-in ``24x7`` (crypto: never closes) or ``FX``, or a custom
``[sessions.<name>]`` of the routes file — and what to do at the close:

* ``flatten`` — ``flatten_before_close_s`` seconds before the close the bot is stopped, its
  open orders are cancelled and its positions closed with reduce-only MARKET orders through
  the OrderRouter (so the risk engine checks them like any order: a HALTED scope denies them
  and the denial is stored; the schedule never overrides a kill switch);
* ``stop`` — at the close the bot is stopped and its open orders cancelled; positions stay;
* ``keep`` — the bot keeps running across the close (it is still started only in session).

A stopped bot is started again (a fresh runner: ``on_start`` runs, indicators warm up again)
at the next session open. A bot that is HALTED (strategy error, kill, risk) is never started
by the schedule. Bots without a plan run whenever data arrives.

Time is the agent's :class:`~qtd.clock.Clock`, read every ``poll_s`` seconds of wall time, so
a simulated clock (paper replay, tests) drives the schedule exactly as the wall clock does in
production. A session is looked up per minute (``exchange-calendars`` minutes); "closing"
means open now and closed ``flatten_before_close_s`` seconds from now, which is correct for
early closes (2018-12-24: NYSE closes at 13:00 New York) and for lunch breaks.

:class:`SessionPlan` and :func:`phase` are pure; :class:`Schedule` does the I/O through the
agent it is given.
"""

from __future__ import annotations

import asyncio
import logging
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from qtd.agent.config import AgentConfig, SessionRule
from qtd.control import KillCommand
from qtd.errors import ConfigError
from qtd.events import OrderDenied, Scope, TradingState
from qtd.risk.kill_file import flatten_requests
from qtd.routes import BUILTIN_SESSIONS, RoutesConfig, Rule
from qtd.runner import BotState

if TYPE_CHECKING:
    from qtd.agent.kernel import Kernel
    from qtd.agent.ports import BotHost

log = logging.getLogger("qtd.agent.schedule")

NS = 1_000_000_000


class SessionLike(Protocol):
    def contains(self, ts_ns: int) -> bool: ...


class Phase(StrEnum):
    OPEN = "OPEN"
    CLOSING = "CLOSING"  # within flatten_before_close_s of the close (on_close = flatten)
    CLOSED = "CLOSED"


class SessionPlan:
    """When one bot trades and what happens at the close.

    Args:
        name: session name (for logs and ``status``).
        session: the session (``contains(ts_ns)``).
        on_close: ``"flatten"``, ``"stop"`` or ``"keep"``.
        flatten_before_close_s: seconds before the close at which ``flatten`` acts.
    """

    def __init__(self, name: str, session: SessionLike, on_close: str,
                 flatten_before_close_s: float) -> None:
        self.name, self.session, self.on_close = name, session, on_close
        self.flatten_before_ns = int(flatten_before_close_s * NS)

    def phase(self, now_ns: int) -> Phase:
        """The session phase at UTC ns ``now_ns``."""
        if not self.session.contains(now_ns):
            return Phase.CLOSED
        if (self.on_close == "flatten" and self.flatten_before_ns > 0
                and not self.session.contains(now_ns + self.flatten_before_ns)):
            return Phase.CLOSING
        return Phase.OPEN


def session_named(name: str, routes: RoutesConfig | None, *, source: str, field: str
                  ) -> SessionLike:
    """Resolve a session name: the routes file's own, a built-in, or an exchange calendar.

    Raises:
        ConfigError: unknown name (names the file, the field and the known names).
    """
    found = routes.session(name) if routes is not None else None
    if found is None:
        from qtd.calendars import ExchangeSession, is_calendar

        found = BUILTIN_SESSIONS.get(name) or (ExchangeSession(name) if is_calendar(name)
                                               else None)
    if found is None:
        known = sorted({*BUILTIN_SESSIONS, *(routes.sessions if routes else {})})
        raise ConfigError(
            f"{source}: {field} = {name!r}: unknown session; known: {', '.join(known)} or an "
            "exchange-calendars code (e.g. XNYS, XNAS, CMES)",
            source=source, field=field, value=name, rule="known session")
    return found


def plan_for(cfg: AgentConfig, bot: str, route: Rule | None = None,
             routes: RoutesConfig | None = None) -> SessionPlan | None:
    """The bot's plan: ``[schedule.bots.<bot>]``, then ``[schedule.routes.<rule>]`` and the
    rule's ``session``, then ``[schedule]``; None when no session applies.

    Raises:
        ConfigError: unknown session name.
    """
    sch = cfg.schedule
    layers: list[tuple[str, SessionRule]] = []
    if bot in sch.bots:
        layers.append((f"schedule.bots.{bot}", sch.bots[bot]))
    if route is not None:
        if route.name in sch.routes:
            layers.append((f"schedule.routes.{route.name}", sch.routes[route.name]))
        if route.session:
            layers.append((f"route {route.name!r} session", SessionRule(session=route.session)))
    layers.append(("schedule", SessionRule(session=sch.session or None, on_close=sch.on_close,
                                           flatten_before_close_s=sch.flatten_before_close_s)))

    def first(attr: str) -> tuple[str, Any]:
        return next(((w, getattr(r, attr)) for w, r in layers if getattr(r, attr) is not None),
                    ("schedule", None))

    where, name = first("session")
    if not name:
        return None
    field = f"{where}.session" if where.startswith("schedule") else where
    sess = session_named(name, routes, source=cfg.source, field=field)
    return SessionPlan(name, sess, first("on_close")[1], first("flatten_before_close_s")[1])


class Schedule:
    """Applies session plans to the agent's bots (module docstring).

    Args:
        kernel: the agent's kernel (clock, router, engine, projections, brokers).
        bots: the bots it starts and stops.
        plans: bot name → plan (bots without one are not scheduled; filled as bots are
            admitted).
        poll_s: wall seconds between looks at the clock.
    """

    def __init__(self, kernel: Kernel, bots: BotHost, plans: dict[str, SessionPlan],
                 poll_s: float) -> None:
        self.k, self.bots, self.plans, self.poll_s = kernel, bots, plans, poll_s
        self.phases: dict[str, Phase] = {}
        self.paused: set[str] = set()  # bots the schedule stopped (or never started)
        self._lock = asyncio.Lock()

    def may_start(self, bot: str) -> bool:
        """At agent start: True unless the bot's session is closed (or closing) now; a bot
        held back is started at the next open."""
        plan = self.plans.get(bot)
        if plan is None:
            return True
        ph = plan.phase(self.k.clock.now_ns())
        self.phases[bot] = ph
        if ph is Phase.OPEN:
            return True
        self.paused.add(bot)
        return False

    def status(self) -> dict[str, dict[str, str]]:
        """Bot → session name, last phase seen, on_close (for ``status``)."""
        return {b: {"session": p.name, "phase": self.phases.get(b, Phase.CLOSED).value,
                    "on_close": p.on_close} for b, p in self.plans.items()}

    async def run(self) -> None:
        """Look at the clock every ``poll_s`` seconds and act (cancel to stop)."""
        while True:
            await self.step()
            await asyncio.sleep(self.poll_s)

    async def step(self) -> None:
        """Evaluate every plan once at the agent's clock and apply the transitions."""
        async with self._lock:
            now = self.k.clock.now_ns()
            for bot, plan in self.plans.items():
                try:
                    await self._one(bot, plan, plan.phase(now))
                except ConfigError:
                    raise
                except Exception:
                    log.exception("session schedule of bot %s failed", bot, extra={"bot": bot})

    async def _one(self, bot: str, plan: SessionPlan, ph: Phase) -> None:
        prev = self.phases.get(bot)
        self.phases[bot] = ph
        if ph is Phase.OPEN:
            if bot in self.paused:
                await self._start(bot, plan)
            return
        if plan.on_close == "keep" or prev is ph:
            return
        # the session is closing or closed and this is the first look at it
        if self._running(bot):
            await self._stop(bot, f"session {plan.name} {ph.value.lower()}")
        if prev is None:
            return  # seen closed at start: never trade out of session, never flatten blind
        cancelled = await self.k.router.cancel_open(bot=bot,
                                                        reason=f"session {plan.name} close")
        flattened = 0
        if plan.on_close == "flatten" and (ph is Phase.CLOSING or prev is Phase.OPEN):
            flattened = await self._flatten(bot, plan)
        log.info("bot %s: session %s %s: %d cancels, %d flatten orders", bot, plan.name,
                 ph.value.lower(), len(cancelled), flattened, extra={"bot": bot})

    def _running(self, bot: str) -> bool:
        task = self.bots.bot_task(bot)
        return task is not None and not task.done()

    async def _stop(self, bot: str, reason: str) -> None:
        slot = self.bots.slots[bot]
        self.paused.add(bot)
        if slot.runner is not None:
            slot.runner.request_stop()
        task = self.bots.bot_task(bot)
        if task is not None:
            await asyncio.wait([task], timeout=self.k.cfg.hook_budget_s * 2 + 1.0)
        slot.reason = reason
        self.bots.unsubscribe(bot)
        log.info("bot %s stopped: %s", bot, reason, extra={"bot": bot})

    async def _start(self, bot: str, plan: SessionPlan) -> None:
        slot = self.bots.slots[bot]
        if self._running(bot):
            self.paused.discard(bot)
            return
        if (slot.state is BotState.HALTED
                or self.k.risk.states.get(Scope.STRATEGY, bot) is TradingState.HALTED):
            return  # halted bots wait for an operator's resume, not for the bell
        self.paused.discard(bot)
        slot.reason = ""
        self.bots.spawn_bot(slot)
        log.info("bot %s started: session %s open", bot, plan.name, extra={"bot": bot})

    async def _flatten(self, bot: str, plan: SessionPlan) -> int:
        k = self.k
        cmd = KillCommand(scope=Scope.STRATEGY, key=bot, reason=f"session {plan.name} close",
                          source="schedule")
        venues = {a: b.venue for a, b in k.brokers.items()}
        sent = 0
        for req in flatten_requests(cmd, list(k.proj.positions.values()), venues):
            req = msgspec.structs.replace(req, reason=f"session flatten: {plan.name} close")
            out = await k.router.submit(req)
            if isinstance(out, OrderDenied):
                log.warning("bot %s: session flatten of %s denied (%s): %s", bot, req.symbol,
                            out.check, out.message, extra={"bot": bot})
            else:
                sent += 1
        return sent
