"""Importing a strategy file: the one way qtd turns a file into a Strategy class.

Each file is imported under its own module name, ``qtd_user.<stem>_<sha256[:12]>``, built
from its content hash, so two versions of the same file (hot reload) or two files with the
same name never share a namespace and never shadow a real package. The module is put in
``sys.modules`` because msgspec resolves ``from __future__ import annotations`` type hints
through it.

Admission imports files in its child process (:mod:`qtd.admit.loader`); a strategy worker
(:mod:`qtd.workers.host`) imports only an admitted file, through :func:`load_admitted`,
which checks the bytes, the class and the params are the ones admission accepted.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import msgspec

from qtd.files import MAX_SOURCE_BYTES, read_capped
from qtd.strategy import Strategy
from qtd.workers.protocol import StrategyRef


def source_hash(source: bytes) -> str:
    """sha256 hex of a strategy file's bytes."""
    return hashlib.sha256(source).hexdigest()


def params_json(params: Strategy.Params) -> bytes:
    """Canonical JSON of params: defaults filled in, keys sorted, no spaces."""
    return msgspec.json.encode(params, order="sorted")


def content_hash(source: bytes, params: Strategy.Params) -> str:
    """sha256 hex of strategy source bytes followed by :func:`params_json`."""
    return hashlib.sha256(source + params_json(params)).hexdigest()


def exec_file(path: Path, source: bytes) -> ModuleType:
    """Import ``source`` (the bytes of ``path``) as its own module (module docstring).

    Raises:
        Exception: whatever the module body raises (a ``SyntaxError`` included).
    """
    name = f"qtd_user.{path.stem}_{source_hash(source)[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        code = compile(source, str(path), "exec")
        exec(code, module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def strategies_in(module: ModuleType) -> list[type[Strategy]]:
    """The Strategy subclasses ``module`` itself defines (not the ones it imports)."""
    return [obj for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, Strategy) and obj is not Strategy
            and obj.__module__ == module.__name__]


class NotAdmitted(Exception):
    """The file no longer imports to what admission accepted (the message says how)."""


def load_admitted(ref: StrategyRef) -> tuple[type[Strategy], Strategy.Params]:
    """Import the strategy ``ref`` names and convert its params.

    Raises:
        NotAdmitted: the file cannot be read, has other bytes than admitted, defines another
            class, or its params do not convert or hash as admitted.
        Exception: whatever the module body raises.
    """
    path = Path(ref.file)
    try:
        source = read_capped(path, MAX_SOURCE_BYTES)
    except Exception as exc:
        raise NotAdmitted(f"{path}: cannot read the admitted strategy file: {exc}") from None
    got = source_hash(source)
    if got != ref.source_hash:
        raise NotAdmitted(f"{path}: changed since admission (sha256 {got[:12]}, admitted "
                          f"{ref.source_hash[:12]}): admit it again")
    found = strategies_in(exec_file(path, source))
    if len(found) != 1 or found[0].__name__ != ref.strategy:
        raise NotAdmitted(f"{path}: defines {[c.__name__ for c in found]}, admitted "
                          f"{ref.strategy!r}")
    cls = found[0]
    try:
        params = msgspec.convert(ref.params, cls.Params)
    except (msgspec.ValidationError, TypeError) as exc:
        raise NotAdmitted(f"{path}: admitted params do not load: {exc}") from None
    if content_hash(source, params) != ref.content_hash:
        raise NotAdmitted(f"{path}: params hash differs from admission's")
    return cls, params


def ref_for(path: Path, source: bytes, cls: type[Strategy], params: Strategy.Params
            ) -> StrategyRef:
    """The :class:`StrategyRef` of a strategy already imported from ``path`` (``source``: its
    bytes) with ``params``: for a caller that validated it in-process (``qtd backtest
    --isolate``, tests). The agent gets its refs from admission instead."""
    return StrategyRef(file=str(path.resolve()), source_hash=source_hash(source),
                       strategy=cls.__name__, params=msgspec.to_builtins(params),
                       content_hash=content_hash(source, params))
