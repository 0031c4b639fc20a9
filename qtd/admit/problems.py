"""Admission problems: one record per broken rule, with file, line, field path, value, rule."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from qtd.errors import ConfigError
from qtd.files import EXCERPT_CHARS, excerpt


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """One admission error.

    Attributes:
        file: the file the bad input is in (bot config, strategy or routes file).
        field: dotted field path, e.g. ``"params.fast"``; ``"<source>"`` for the strategy
            file itself.
        value: the offending value as given (``None`` if missing); a long one is cut to a
            short excerpt (:func:`qtd.files.excerpt`), so no error echoes a file's content.
        rule: the rule it broke, e.g. ``"Expected `int` >= 2"``.
        line: 1-based line in ``file`` when known, else 0.
    """

    file: str
    field: str
    value: Any = None
    rule: str
    line: int = 0

    def __post_init__(self) -> None:
        value = self.value
        if isinstance(value, str | list | dict | tuple):
            text = value if isinstance(value, str) else repr(value)
            if len(text) > EXCERPT_CHARS:
                msgspec.structs.force_setattr(self, "value", excerpt(text))

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field} = {self.value!r}: {self.rule}"

    def to_error(self) -> ConfigError:
        """The same problem as a :class:`~qtd.errors.ConfigError`."""
        return ConfigError(str(self), source=self.file, field=self.field, value=self.value,
                           rule=self.rule, line=self.line)


def combined_error(problems: list[Problem]) -> ConfigError:
    """One :class:`ConfigError` listing every problem (``.fields["problems"]``)."""
    first = problems[0]
    text = f"{len(problems)} admission error(s):\n" + "\n".join(f"  {p}" for p in problems)
    return ConfigError(text, source=first.file, field=first.field, value=first.value,
                       rule=first.rule, problems=problems)


_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"']+)\s*=")
_TABLE = re.compile(r"^\s*(\[+)\s*([^\]]+?)\s*\]+")


def toml_lines(text: str) -> dict[str, int]:
    """Map dotted key paths of a TOML document to their 1-based line (best effort: plain
    ``key = value`` lines under ``[table]`` and ``[[array]]`` headers, the latter as
    ``array[i].key``; good enough to point an operator)."""
    out: dict[str, int] = {}
    arrays: dict[str, int] = {}
    table = ""
    for n, line in enumerate(text.splitlines(), 1):
        if m := _TABLE.match(line):
            table = m.group(2).replace('"', "").replace("'", "")
            if m.group(1) == "[[":  # array of tables: name[0], name[1], ...
                arrays[table] = arrays.get(table, -1) + 1
                table = f"{table}[{arrays[table]}]"
            out.setdefault(table, n)
        elif m := _KEY.match(line):
            key = m.group(1).strip("\"'")
            out.setdefault(f"{table}.{key}" if table else key, n)
    return out
