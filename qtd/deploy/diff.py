"""Human diffs between versions: params key by key, strategy source as a unified diff."""

from __future__ import annotations

import difflib
from typing import Any

_MISSING = object()


def _flat(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in doc.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def params_diff(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """One line per changed param, sorted by name: ``fast: 10 -> 12``, ``+ qty = 5``
    (added), ``- qty = 5`` (removed). Empty when equal. ``old=None`` lists every param as
    added."""
    a, b = _flat(old or {}), _flat(new)
    lines = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, _MISSING), b.get(key, _MISSING)
        if x == y:
            continue
        if x is _MISSING:
            lines.append(f"+ {key} = {y!r}")
        elif y is _MISSING:
            lines.append(f"- {key} = {x!r}")
        else:
            lines.append(f"{key}: {x!r} -> {y!r}")
    return lines


def source_diff(old: bytes | None, new: bytes, old_name: str, new_name: str,
                context: int = 3) -> list[str]:
    """Unified diff of two strategy sources (UTF-8, undecodable bytes replaced)."""
    a = (old or b"").decode("utf-8", "replace").splitlines()
    b = new.decode("utf-8", "replace").splitlines()
    return list(difflib.unified_diff(a, b, old_name, new_name, n=context, lineterm=""))
