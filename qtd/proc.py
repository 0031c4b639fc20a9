"""Process helpers shared by everything that starts child processes."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Resolved once in the parent: the child (between fork and exec) only calls it, without
# loading anything — the less a preexec_fn does, the safer it is in a threaded parent.
_PRCTL = _load_prctl()


def term_with_parent() -> None:
    """``preexec_fn`` for :class:`subprocess.Popen`: the child gets SIGTERM when its parent
    dies for any reason (even SIGKILL), so it never outlives the process that owns it
    (``man 2 prctl``, PR_SET_PDEATHSIG; kept across ``execve``). A no-op where prctl is
    unavailable."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def qtd_root() -> str:
    """The directory holding the ``qtd`` package this process imported."""
    return str(Path(__file__).resolve().parent.parent)


def python_argv(module: str) -> list[str]:
    """``python -P -m MODULE``: this interpreter, running ``module`` with neither the working
    directory nor a script directory on ``sys.path`` (``-P``, Python 3.11+), so a ``qtd/``
    (or any other package) in the directory a command is started from never shadows ours.
    Start it with :func:`child_env` so the child imports the same ``qtd`` as this process."""
    return [sys.executable, "-P", "-m", module]


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) with :func:`qtd_root` first on ``PYTHONPATH`` and
    ``PYTHONSAFEPATH`` set: a child started with :func:`python_argv` imports this very
    ``qtd`` wherever it runs (a source checkout needs no install), and so do its children."""
    env = dict(os.environ if base is None else base)
    paths = [qtd_root(), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONSAFEPATH"] = "1"
    return env
