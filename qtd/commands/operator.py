"""``--operator`` of the commands that change trading (``kill``, ``resume``): one rule.

The operator is audited with every kill and resume (``CommandAudit``, fleet.db, the status
page). It defaults to the login name (:func:`getpass.getuser`: ``$LOGNAME``, ``$USER``,
then the password database) for both commands, as ``qtd deploy`` does: a kill must be quick
to type in an incident, and the audit still names an account. Where no login name can be
found (a process whose uid has no passwd entry) ``--operator`` is required, so no kill or
resume is ever audited without a name.
"""

from __future__ import annotations

import argparse
import getpass


def login_name() -> str:
    """The login name of this process ("" when none can be found)."""
    try:
        return getpass.getuser().strip()
    except (KeyError, OSError):  # no $LOGNAME/$USER and no passwd entry for the uid
        return ""


def add_operator(p: argparse.ArgumentParser) -> None:
    """Add ``--operator`` to ``p`` (module docstring)."""
    user = login_name()
    p.add_argument("--operator", default=user or None, required=not user,
                   help="who, audited (default: the login name" +
                   (f", {user})" if user else ", none here: required)"))
