"""Process helpers shared by everything that starts child processes."""

from __future__ import annotations

import ctypes
import signal
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
