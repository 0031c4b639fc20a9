"""JSON logs to stdout (journald): one object per line.

Fields: ``ts`` (ISO 8601 UTC), ``level``, ``logger``, ``msg``, ``node``, and ``bot``,
``client_order_id``, ``hook`` when the record carries them (``extra={...}``), ``exc`` with
the traceback for exceptions, ``repeated`` when identical lines were held back before this one
(:class:`RepeatFilter`). Config objects are never logged whole; the bus config redacts
tokens and passwords itself.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

_EXTRA = ("bot", "client_order_id", "hook", "account", "verb", "kill_id", "repeated")


class JsonFormatter(logging.Formatter):
    """Formats records as one JSON object per line.

    Args:
        node: the node name added to every line.
    """

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "node": self.node,
        }
        for key in _EXTRA:
            value = record.__dict__.get(key)
            if value:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class RepeatFilter(logging.Filter):
    """Cap a flood of identical log lines: at most ``burst`` per ``interval_s`` per message.

    Two records are identical when logger, level and formatted message are equal. Within
    an interval the first ``burst`` identical lines pass (a state change logged twice in a
    second — ``leader absent``, ``leader back``, ``leader absent`` — is never hidden); the
    rest are held back and counted, and the first line of the next interval carries
    ``repeated = <count held back>``. A flood (asyncio's ``socket.accept() out of system
    resource`` at EMFILE wrote 427,781 lines in 40 s) thus costs ``burst`` lines per
    interval. At most ``max_keys`` messages are tracked (the oldest are forgotten first).

    Args:
        interval_s: seconds of one window.
        burst: identical lines let through per window.
        max_keys: distinct messages tracked at once.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, interval_s: float = 5.0, burst: int = 10, max_keys: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s, self.burst = interval_s, burst
        self.max_keys = max_keys
        self.clock = clock
        # message -> (window start, lines passed in it, lines held back)
        self._seen: dict[tuple[str, int, str], tuple[float, int, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a bad format: let the handler report it (never raise here)
            return True
        key = (record.name, record.levelno, text)
        now = self.clock()
        start, passed, held = self._seen.pop(key, (-self.interval_s - 1.0, 0, 0))
        if now - start >= self.interval_s:
            start, passed = now, 0
            if held:
                record.__dict__["repeated"] = held
                held = 0
        elif passed >= self.burst:
            self._seen[key] = (start, passed, held + 1)
            return False
        if len(self._seen) >= self.max_keys:
            del self._seen[next(iter(self._seen))]
        self._seen[key] = (start, passed + 1, held)
        return True


def setup_json_logging(node: str, *, level: int = logging.INFO,
                       stream: TextIO | None = None) -> logging.Handler:
    """Send every ``qtd`` log record to ``stream`` (default stdout) as JSON lines, identical
    lines collapsed by a :class:`RepeatFilter`.

    Returns:
        The installed handler (remove it with ``logging.getLogger().removeHandler``).
    """
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter(node))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old.formatter, JsonFormatter):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
