"""JSON logs to stdout (journald): one object per line.

Fields: ``ts`` (ISO 8601 UTC), ``level``, ``logger``, ``msg``, ``node``, and ``bot``,
``client_order_id``, ``hook`` when the record carries them (``extra={...}``), ``exc`` with
the traceback for exceptions. Config objects are never logged whole; the bus config redacts
tokens and passwords itself.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

_EXTRA = ("bot", "client_order_id", "hook", "account", "verb", "kill_id")


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


def setup_json_logging(node: str, *, level: int = logging.INFO,
                       stream: TextIO | None = None) -> logging.Handler:
    """Send every ``qtd`` log record to ``stream`` (default stdout) as JSON lines.

    Returns:
        The installed handler (remove it with ``logging.getLogger().removeHandler``).
    """
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter(node))
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old.formatter, JsonFormatter):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
