"""``--operator`` of the commands that change trading (``kill``, ``resume``): one rule.

The operator is audited with every kill and resume (``CommandAudit``, fleet.db, the status
page). It defaults to the login name in ``$USER`` for both commands, as ``qtd deploy``
does: a kill must be quick to type in an incident, and the audit still names a person.
With ``$USER`` unset or empty (a bare container, a cron job) ``--operator`` is required,
so no kill or resume is ever audited without a name.
"""

from __future__ import annotations

import argparse
import os


def add_operator(p: argparse.ArgumentParser) -> None:
    """Add ``--operator`` to ``p`` (module docstring)."""
    user = os.environ.get("USER", "").strip()
    p.add_argument("--operator", default=user or None, required=not user,
                   help="who, audited (default: $USER" + (f", {user})" if user else
                                                          ", unset here: required)"))
