"""What a NATS server refused a client: permission violations and refused logins, as
errors that name the user and the permission.

nats-server answers a publish or subscribe its ACL forbids with
``-ERR 'Permissions Violation for Publish to "<subject>"'`` (or ``... for Subscription to
...``) and keeps the connection open (nats-server docs, "Authorization"); nats-py hands that
line, lower-cased, to the client's ``error_cb`` and carries on, so a denied request simply
times out. :class:`Denials` is an ``error_cb`` listener (:func:`qtd.bus.connect`'s
``on_error``) that records the first violation and sets an event, so a command can stop at
once with :class:`PermissionDenied` instead of waiting for its timeout.
"""

from __future__ import annotations

import asyncio
import re

from qtd.errors import OperationalError

SERVER_CONF = "qtd/bus/logins.py"
"""Where the permissions of every login are written (named in refusals)."""
_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]*)"')
# nats-py lower-cases the server's error line; NATS subjects are case-sensitive. These are
# the tokens nats-server spells in capitals in a "$JS.API..." subject (before the subject it
# may embed), restored so the message names the subject an operator finds in the config.
_API_TOKENS = frozenset({"$JS", "API", "ACK", "FC", "STREAM", "CONSUMER", "DIRECT", "MSG",
                         "INFO", "GET", "CREATE", "DURABLE", "UPDATE", "DELETE", "PURGE",
                         "NAMES", "LIST", "NEXT", "QTD_EVENTS"})


def _token(token: str, api: bool) -> str:
    up = token.upper()
    if up in ("$KV", "$JS") or (api and up in _API_TOKENS):
        return up
    if api and up.startswith("KV_"):
        return "KV_" + token[3:]
    if up.startswith("_INBOX"):
        return "_INBOX" + token[6:]
    return token


def restore_case(subject: str) -> str:
    """``subject`` as nats-server spells it, from nats-py's lower-cased copy: ``$KV``,
    ``$JS.API`` and its verbs, ``KV_<bucket>``, ``QTD_EVENTS`` and ``_INBOX`` in capitals;
    everything else as given (qtd's own subjects are lower case)."""
    tokens = subject.split(".")
    api = tokens[0].upper() == "$JS"
    out = []
    for i, token in enumerate(tokens):
        if i and token.startswith("$"):
            api = False  # the subject a DIRECT.GET names
        out.append(_token(token, api))
    return ".".join(out)


def violation(text: str) -> tuple[str, str] | None:
    """``("publish" | "subscribe", subject)`` of a permission violation message, else None."""
    m = _VIOLATION.search(text.lower())
    if m is None:
        return None
    action = "publish" if m.group(1) == "publish" else "subscribe"
    return action, restore_case(m.group(2))


class PermissionDenied(OperationalError):
    """The NATS server's ACL refused this login something the command needs (exit 2: a human
    must use another login: ``qtd node add NAME --role ROLE`` issues one; the permissions
    of each role are in :mod:`qtd.bus.logins`).

    Attributes:
        user: the NATS login (``"(creds)"`` or ``"(no user)"`` when there is no user name).
        action: ``"publish"`` or ``"subscribe"``.
        subject: the refused subject.
        command: the qtd command that needed it.
    """

    def __init__(self, *, user: str, action: str, subject: str, command: str,
                 needs: str = "") -> None:
        hint = f"; {command} needs {needs}" if needs else ""
        super().__init__(f"{command}: NATS login {user} may not {action} to {subject} "
                         f"({SERVER_CONF}{hint})", user=user, action=action,
                         subject=subject, command=command)
        self.user, self.action, self.subject, self.command = user, action, subject, command


class NatsAuthRefused(OperationalError):
    """The NATS servers refused the login itself (bad user, password, token or creds).

    Attributes:
        servers: the server URLs, secrets masked.
        auth: the method tried: ``token``, ``user``, ``nkey``, ``creds`` or ``none``.
    """

    def __init__(self, message: str, *, servers: str, auth: str) -> None:
        super().__init__(message, servers=servers, auth=auth)
        self.servers, self.auth = servers, auth


class Denials:
    """Permission violations reported on one connection; pass as ``connect(on_error=...)``.

    Attributes:
        first: ``(action, subject)`` of the first violation, or None.
        event: set at the first violation.
    """

    def __init__(self) -> None:
        self.first: tuple[str, str] | None = None
        self.event = asyncio.Event()

    def __call__(self, exc: BaseException) -> None:
        found = violation(str(exc))
        if found is not None and self.first is None:
            self.first = found
            self.event.set()
