"""A flood of identical log lines is capped per interval with a count of the held-back
ones (issue 21, finding 8: an EMFILE accept loop wrote 427,781 lines in 40 s)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from qtd.agent.logs import RepeatFilter, setup_json_logging


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def lines() -> Iterator[tuple[io.StringIO, Clock]]:
    out, clock = io.StringIO(), Clock()
    handler = setup_json_logging("leader", stream=out)
    handler.filters.clear()
    handler.addFilter(RepeatFilter(interval_s=5.0, clock=clock))
    try:
        yield out, clock
    finally:
        logging.getLogger().removeHandler(handler)


def _docs(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_flood_is_one_line_per_interval_with_the_count(
        lines: tuple[io.StringIO, Clock]) -> None:
    out, clock = lines
    log = logging.getLogger("asyncio")
    for i in range(20_000):
        clock.t = 1000.0 + i * 0.002  # 40 s of a 500 lines/s flood
        log.error("socket.accept() out of system resource")
        log.warning("other %s", "line")
    docs = _docs(out)
    flood = [d for d in docs if d["msg"] == "socket.accept() out of system resource"]
    assert len(flood) == 80  # 10 a window, 40 s / 5 s windows
    firsts = flood[::10]
    assert firsts[0].get("repeated") is None
    assert all(d["repeated"] == 2_490 for d in firsts[1:])  # 2,500 a window, 10 passed
    assert all(d.get("repeated") is None for i, d in enumerate(flood) if i % 10)
    assert len(docs) == 160


def test_a_state_change_logged_again_soon_is_not_hidden(
        lines: tuple[io.StringIO, Clock]) -> None:
    """An agent that loses its leader, sees it back and loses it again within seconds must
    say so each time (a 1-per-interval filter hid the second ``leader absent``)."""
    out, clock = lines
    log = logging.getLogger("qtd.agent")
    for i, text in enumerate(["leader absent", "leader back", "leader absent",
                              "leader back", "leader absent"]):
        clock.t = 1000.0 + i * 0.5
        log.warning(text)
    assert [d["msg"] for d in _docs(out)] == ["leader absent", "leader back", "leader absent",
                                               "leader back", "leader absent"]


def test_different_messages_are_not_collapsed(lines: tuple[io.StringIO, Clock]) -> None:
    out, _ = lines
    log = logging.getLogger("qtd.test")
    for i in range(50):
        log.warning("kill applied id=%d", i)
    assert len(_docs(out)) == 50


def test_a_bad_format_passes_the_filter_without_raising() -> None:
    record = logging.LogRecord("qtd.test", logging.WARNING, __file__, 1, "%s %s %s %s",
                               (1, 2, 3), None)
    f = RepeatFilter()
    assert f.filter(record) and f.filter(record)  # left to the handler to report


def test_setup_installs_the_filter() -> None:
    handler = setup_json_logging("n", stream=io.StringIO())
    try:
        assert any(isinstance(f, RepeatFilter) for f in handler.filters)
    finally:
        logging.getLogger().removeHandler(handler)
