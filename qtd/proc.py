"""Process helpers: for everything that starts child processes, and for the daemons'
heap once they have started."""

from __future__ import annotations

import ctypes
import gc
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


def freeze_heap() -> int:
    """Collect garbage once, then move every object the cyclic garbage collector tracks
    into its permanent generation (:func:`gc.freeze`), so that later collections skip them;
    returns how many objects that was.

    For a daemon once it has started (imports, configs, the store's replay, the venue
    adapters), before it trades. That start-up heap is mostly modules, classes and
    functions: about 118,000 tracked objects in an agent with the alpaca-py and
    python-binance adapters, which every full collection scans again (~40 ms on a 2-core
    machine: a stall of the order path and of the kill switch each time one runs). After
    the freeze a full collection scans only what was allocated since. Frozen objects are
    still freed by reference counting; only reference cycles among them are never collected,
    hence the collection first.

    Source: the Python documentation of :func:`gc.freeze` (since 3.7): "ignore them in
    all the future collections ... to speed up collection".
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
