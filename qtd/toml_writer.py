"""A small TOML writer for the configs qtd generates (``qtd up``, routed bots; tomllib only
reads).

Supports what qtd configs use: tables, strings, booleans, ints, floats and lists of
scalars. Keys that are not bare words are quoted.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"TOML cannot hold {v!r} here")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _emit(doc: Mapping[str, Any], path: tuple[str, ...], out: list[str]) -> None:
    tables = []
    for k, v in doc.items():
        if isinstance(v, Mapping):
            tables.append((k, v))
        else:
            out.append(f"{_key(k)} = {_value(v)}")
    for k, v in tables:
        sub = (*path, k)
        out.append("")
        out.append("[" + ".".join(_key(p) for p in sub) + "]")
        _emit(v, sub, out)


def dumps(doc: Mapping[str, Any], header: str = "") -> str:
    """Serialise ``doc`` (nested dicts of scalars and lists) as TOML text.

    Args:
        doc: the document; every dict value becomes a ``[table]``.
        header: comment lines written first (without the ``#``).

    Raises:
        TypeError: a value TOML cannot hold here.
    """
    out = [f"# {line}" if line else "#" for line in header.splitlines()]
    _emit(doc, (), out)
    return "\n".join(out).strip("\n") + "\n"
