"""Field-by-field validation of a dict against a msgspec Struct schema, collecting every error.

msgspec stops at the first error; admission must report all of them, so each field is
converted on its own (``msgspec.convert(value, field.type)``, which keeps the
``Annotated[..., Meta(...)]`` constraints), nested Structs are walked recursively, unknown
keys get a did-you-mean (:func:`difflib.get_close_matches`), and only when every field
passed is the whole Struct built (which also runs ``__post_init__``).
"""

from __future__ import annotations

import difflib
import re
from typing import Any, TypeVar

import msgspec

from qtd.admit.problems import Problem

T = TypeVar("T", bound=msgspec.Struct)
_AT = re.compile(r" - at `\$[^`]*`$")


def _rule(exc: Exception) -> str:
    return _AT.sub("", str(exc))


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def check_struct(
    cls: type[T], raw: Any, *, file: str, prefix: str = "", lines: dict[str, int] | None = None,
) -> tuple[T | None, list[Problem]]:
    """Validate ``raw`` against ``cls``; return ``(instance or None, problems)``.

    Args:
        cls: a msgspec Struct type (``forbid_unknown_fields`` is enforced here regardless).
        raw: the decoded TOML/JSON value.
        file: file name for the problems.
        prefix: dotted path of ``raw`` inside the file (e.g. ``"params"``).
        lines: key path → line map from :func:`~qtd.admit.problems.toml_lines`.
    """
    lines = lines or {}

    def problem(path: str, value: Any, rule: str) -> Problem:
        return Problem(file=file, field=path, value=value, rule=rule, line=lines.get(path, 0))

    if not isinstance(raw, dict):
        return None, [problem(prefix or "<root>", raw, "must be a table")]
    problems: list[Problem] = []
    fields = msgspec.structs.fields(cls)
    names = [f.encode_name for f in fields]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(names)}"
            problems.append(problem(_join(prefix, key), raw[key], f"unknown field{hint}"))
    for f in fields:
        path = _join(prefix, f.encode_name)
        if f.encode_name not in raw:
            if f.required:
                problems.append(problem(path, None, "required field is missing"))
            continue
        value = raw[f.encode_name]
        if _is_struct(f.type):
            problems += check_struct(f.type, value, file=file, prefix=path, lines=lines)[1]
            continue
        try:
            msgspec.convert(value, f.type)
        except msgspec.ValidationError as exc:
            problems.append(problem(path, value, _rule(exc)))
        except TypeError as exc:  # a schema msgspec cannot use (e.g. Meta(gt=) on Decimal)
            problems.append(problem(path, value, f"invalid schema in {cls.__qualname__}: {exc}"))
    if problems:
        return None, problems
    try:
        return msgspec.convert(raw, cls), []
    except (msgspec.ValidationError, TypeError, ValueError) as exc:
        return None, [problem(prefix or "<root>", raw, _rule(exc))]


def _join(prefix: str, key: object) -> str:
    return f"{prefix}.{key}" if prefix else str(key)
