"""One row of the preflight table, and the table itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["ok", "FAIL", "skipped"]


@dataclass(frozen=True, slots=True)
class Check:
    """One row of the checklist.

    Attributes:
        name: what was checked.
        status: ``ok``, ``FAIL`` or ``skipped``.
        detail: what was found, or why it failed / was skipped.
    """

    name: str
    status: Status
    detail: str


def failed(checks: list[Check]) -> bool:
    """True when any check failed."""
    return any(c.status == "FAIL" for c in checks)


def format_table(checks: list[Check]) -> str:
    """The checks as an aligned text table (check, status, detail)."""
    width = max([len("CHECK")] + [len(c.name) for c in checks])
    lines = [f"{'CHECK':<{width}}  STATUS   DETAIL"]
    lines += [f"{c.name:<{width}}  {c.status:<7}  {c.detail}" for c in checks]
    return "\n".join(lines)


def first_line(e: BaseException) -> str:
    """The first line of an error's message (its class name if it has none)."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__
