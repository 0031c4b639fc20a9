"""qtd's exceptions, split by what the operator must do.

* :class:`OperationalError` — a human must act (stop, fix, page). Exit code 2 in the CLI.
* :class:`TemporaryError` — retry with backoff; it may clear by itself. Exit code 75
  (``EX_TEMPFAIL``).
* :class:`ConfigError` — bad input (config, params, strategy, message): names the source,
  the field, the value and the rule. Exit code 78 (``EX_CONFIG``).

Every error carries its fields as attributes so callers (and the event store) can record
them without parsing the message. The CLI maps classes to exit codes in one place:
:func:`exit_code_for`.
"""

from __future__ import annotations

from typing import Any


class QtdError(Exception):
    """Base of every error qtd raises on purpose.

    Args:
        message: one line for the operator, saying what happened and what to do.
        **fields: structured context (file, field, value, rule, ...), kept on ``.fields``.
    """

    exit_code = 1

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def __str__(self) -> str:
        return self.message


class OperationalError(QtdError):
    """A human must act: the process should stop the affected scope and page."""

    exit_code = 2


class TemporaryError(QtdError):
    """Transient failure (network, busy venue): retry with backoff."""

    exit_code = 75


class ConfigError(QtdError):
    """Bad input: a config file, params file, strategy or message failed validation.

    Args:
        message: the full sentence for the operator.
        source: the file (or subject, or "<arg>") the bad value came from.
        field: dotted path of the offending field, e.g. ``"risk.max_order_qty"``.
        value: the offending value, as given.
        rule: the rule it broke, e.g. ``"must be > 0"``.
    """

    exit_code = 78

    def __init__(
        self,
        message: str,
        *,
        source: str = "",
        field: str = "",
        value: Any = None,
        rule: str = "",
        **fields: Any,
    ) -> None:
        super().__init__(message, source=source, field=field, value=value, rule=rule, **fields)
        self.source = source
        self.field = field
        self.value = value
        self.rule = rule


class StoreError(OperationalError):
    """The event store cannot be opened or written (corrupt, foreign, newer, read-only, full).

    Attributes:
        path: the database file.
    """

    def __init__(self, message: str, *, path: str, **fields: Any) -> None:
        super().__init__(message, path=path, **fields)
        self.path = path


class StoreCorrupt(StoreError):
    """The event store's content failed verification: a record does not match its checksum
    or the hash chain, a seq is missing, or SQLite cannot read a page. Nothing may trade on
    it; the file is left as it is for the operator (restore or move aside).

    Attributes:
        path: the database file.
        seq: the first seq found bad (for an unreadable page: the first seq not verified;
            ``None`` when SQLite's page check failed, which names no record).
        what: what mismatched, e.g. ``"payload checksum mismatch"``.
    """

    def __init__(self, message: str, *, path: str, seq: int | None, what: str) -> None:
        super().__init__(message, path=path, seq=seq, what=what)
        self.seq = seq
        self.what = what


def operator_error(exc: BaseException) -> QtdError | None:
    """The error to show the operator for ``exc``: itself if it is a :class:`QtdError`, else
    the first one among the exceptions of an exception group (a daemon's task group wraps
    the error that stopped it, e.g. a :class:`StoreCorrupt` found while running), else
    ``None``."""
    if isinstance(exc, QtdError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = operator_error(inner)
            if found is not None:
                return found
    return None


def exit_code_for(exc: BaseException) -> int:
    """Map an exception to the CLI exit status (one place for the whole CLI)."""
    if isinstance(exc, QtdError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 1
