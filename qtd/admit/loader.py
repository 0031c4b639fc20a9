"""Load a strategy file in isolation and find its one :class:`~qtd.strategy.Strategy`.

Files are imported by :func:`qtd.workers.load.exec_file` (one module per content hash).
The import runs in a worker thread under a time budget (a module body that
loops forever is an admission error, not a hung ``qtd validate``). Admission imports in its
child process (:mod:`qtd.admit.sandbox`); an agent never imports strategy code: its strategy
workers do (:mod:`qtd.workers`).
"""

from __future__ import annotations

import asyncio
import traceback
from pathlib import Path
from types import ModuleType

from qtd.admit.problems import Problem
from qtd.errors import ConfigError
from qtd.files import MAX_SOURCE_BYTES, read_capped
from qtd.runner import HookThread, HookTimeout
from qtd.strategy import Strategy
from qtd.workers.load import exec_file, strategies_in

IMPORT_BUDGET_S = 5.0


def _error_line(exc: BaseException, path: Path) -> int:
    if isinstance(exc, SyntaxError) and exc.lineno:
        return exc.lineno
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
    return (frames[-1].lineno or 0) if frames else 0


async def load_strategy(path: Path) -> tuple[type[Strategy] | None, bytes, list[Problem]]:
    """Import ``path`` and return ``(strategy class or None, source bytes, problems)``.

    Problems: unreadable file, a file over :data:`~qtd.files.MAX_SOURCE_BYTES`, syntax
    error (with its line), any exception while importing (with the line in the file), an
    import that overruns :data:`IMPORT_BUDGET_S`, and not exactly one Strategy subclass
    defined in the file.
    """
    file = str(path)
    try:
        source = read_capped(path, MAX_SOURCE_BYTES)
    except ConfigError as exc:
        return None, b"", [Problem(file=file, field="<source>", value=exc.value, rule=exc.rule)]
    except OSError as exc:
        return None, b"", [Problem(file=file, field="<source>", value=file,
                                   rule=f"cannot read strategy file: {exc.strerror}")]
    cls, problems = await load_source(path, source)
    return cls, source, problems


async def load_source(path: Path, source: bytes) -> tuple[type[Strategy] | None, list[Problem]]:
    """Import ``source`` (the bytes of strategy file ``path``) in this process, under
    :data:`IMPORT_BUDGET_S`; return ``(strategy class or None, problems)`` as
    :func:`load_strategy` does. Admission runs this in its child process; an agent runs it
    again in its own process only for a file admission accepted with these very bytes."""
    file = str(path)
    thread = HookThread(f"qtd-import-{path.stem}")
    try:
        module = await thread.call(exec_file, path, source, timeout_s=IMPORT_BUDGET_S)
    except HookTimeout:
        return None, [Problem(file=file, field="<source>", value=None,
                              rule=f"import did not finish within {IMPORT_BUDGET_S} s")]
    except Exception as exc:
        text = exc.text.strip() if isinstance(exc, SyntaxError) and exc.text else None
        rule = f"{type(exc).__name__}: {exc.msg if isinstance(exc, SyntaxError) else exc}"
        return None, [Problem(file=file, field="<source>", value=text, rule=rule,
                              line=_error_line(exc, path))]
    finally:
        thread.close()
    return _one_strategy(module, file)


def _one_strategy(module: ModuleType, file: str) -> tuple[type[Strategy] | None, list[Problem]]:
    found = strategies_in(module)
    if len(found) == 1:
        return found[0], []
    names = [c.__name__ for c in found]
    return None, [Problem(file=file, field="<source>", value=names,
                          rule=f"must define exactly one Strategy subclass, found {len(found)}")]


def load_strategy_sync(path: Path) -> tuple[type[Strategy] | None, bytes, list[Problem]]:
    """:func:`load_strategy` for code without a running event loop."""
    return asyncio.run(load_strategy(path))
