"""Notifier with a recording sender: dedupe, escalation, P1 repeats until ack, retries with
backoff, never raising, quiet hours; and the page text."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from qtd.clock import SimClock
from qtd.events import Severity
from qtd.notify import Notifier, NotifyConfig, Page, QuietHours, format_page, quiet_remaining_s


class Recorder:
    """A sender that records (url, title, body) and fails the first ``fail`` calls."""

    def __init__(self, fail: int = 0, raise_: bool = False) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.fail = fail
        self.raise_ = raise_

    async def __call__(self, url: str, title: str, body: str, severity: Severity) -> bool:
        if self.raise_:
            raise RuntimeError("network on fire")
        if self.fail > 0:
            self.fail -= 1
            return False
        self.calls.append((url, title, body))
        return True


def _cfg(**kw: object) -> NotifyConfig:
    base: dict[str, object] = {
        "destinations": {Severity.P1: ["p1://a", "p1://b"], Severity.P2: ["p2://x"],
                         Severity.P3: ["p3://x"]},
        "dedupe_window_s": 60.0, "p1_repeat_s": 0.1, "retry_base_s": 0.01,
        "retry_attempts": 3}
    base.update(kw)
    return NotifyConfig(**base)  # type: ignore[arg-type]


def _page(sev: Severity = Severity.P2, key: str = "hb:n1", aid: str = "a1") -> Page:
    return Page(alert_id=aid, key=key, severity=sev, title="agent n1 heartbeat missing",
                trigger="heartbeat_missing", limit=5.0, value=7.5, unit="s", node="n1",
                bot="momo", bot_pnl_today=-120.5, fleet_pnl_today=-3400.0,
                positions=["n1/momo acct SPY qty 10 avg 100.00 mark 98 unrealized -20.00"],
                recent_events=["12:00:01.000 Fill symbol=SPY side=BUY qty=10 price=98"])


@pytest.fixture
async def running() -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    yield stop
    stop.set()


async def _run(n: Notifier, stop: asyncio.Event) -> asyncio.Task[None]:
    return asyncio.create_task(n.run(stop))


async def _settle(s: float = 0.15) -> None:
    await asyncio.sleep(s)


async def test_dedupe_within_window_but_escalation_passes(running: asyncio.Event) -> None:
    rec = Recorder()
    n = Notifier(_cfg(), sender=rec)
    task = await _run(n, running)
    assert n.notify(_page()) is True
    assert n.notify(_page()) is False  # identical: dropped
    assert n.notify(_page(Severity.P1)) is True  # escalation: passes (two P1 URLs)
    await _settle()
    assert [u for u, _, _ in rec.calls][:3] == ["p2://x", "p1://a", "p1://b"]
    assert n.stats["deduped"] == 1
    running.set()
    await task


async def test_p1_repeats_until_acknowledged(running: asyncio.Event) -> None:
    rec = Recorder()
    n = Notifier(_cfg(destinations={Severity.P1: ["p1://a"]}), sender=rec)
    task = await _run(n, running)
    n.notify(_page(Severity.P1, aid="p1"))
    await _settle(0.35)
    sent = len(rec.calls)
    assert sent >= 3 and "(repeat 1, not acknowledged)" in rec.calls[1][1]
    assert n.ack("p1") is True and n.ack("p1") is False
    await _settle(0.3)
    assert len(rec.calls) <= sent + 1  # at most one already in flight
    running.set()
    await task


async def test_failed_delivery_is_retried_with_backoff_then_given_up(
    running: asyncio.Event, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder(fail=2)
    n = Notifier(_cfg(), sender=rec)
    task = await _run(n, running)
    n.notify(_page())
    await _settle(0.2)
    assert len(rec.calls) == 1 and n.stats["retried"] == 2
    boom = Notifier(_cfg(), sender=Recorder(raise_=True))
    t2 = await _run(boom, running)
    assert boom.notify(_page()) is True  # queueing never raises
    await _settle(0.3)
    assert boom.stats["gave_up"] == 1 and "giving up" in caplog.text
    running.set()
    await asyncio.gather(task, t2)


async def test_quiet_hours_hold_p3_not_p2() -> None:
    night = int(datetime(2026, 3, 2, 23, 30, tzinfo=UTC).timestamp()) * 10**9
    quiet = QuietHours(start="22:00", end="07:00", tz="UTC")
    assert quiet_remaining_s(quiet, night) == 7.5 * 3600
    assert quiet_remaining_s(quiet, night + 9 * 3600 * 10**9) == 0.0
    rec = Recorder()
    n = Notifier(_cfg(quiet_hours=quiet), sender=rec, clock=SimClock(night))
    stop = asyncio.Event()
    task = asyncio.create_task(n.run(stop))
    n.notify(_page(Severity.P3, key="stale"))
    n.notify(_page(Severity.P2))
    await _settle()
    assert [u for u, _, _ in rec.calls] == ["p2://x"] and n.stats["held"] == 1
    stop.set()
    await task


def test_page_text_carries_trigger_limit_value_pnl_positions_and_events() -> None:
    title, body = format_page(_page())
    assert title == "[P2] qtd: agent n1 heartbeat missing"
    assert "limit: 5.00 s   observed: 7.50 s" in body
    assert "PnL today: bot n1/momo -120.50 USD; fleet -3,400.00 USD" in body
    assert "n1/momo acct SPY qty 10" in body and "Fill symbol=SPY" in body
    assert "qtd ack a1" in body
