"""Process helpers shared by everything that starts child processes."""

from __future__ import annotations

import contextlib
import ctypes
import signal

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def term_with_parent() -> None:
    """``preexec_fn`` for :class:`subprocess.Popen`: the child gets SIGTERM when its parent
    dies for any reason (even SIGKILL), so it never outlives the process that owns it
    (``man 2 prctl``, PR_SET_PDEATHSIG; kept across ``execve``). A no-op where prctl is
    unavailable."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
