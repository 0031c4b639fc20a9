"""Operator authentication and CSRF protection for the status page's controls.

* **No token configured**: the page is read-only; every control answers 403.
* **Bearer** (scripts): ``Authorization: Bearer <token>``; the operator's name comes from
  the request body (``operator``, required). Browsers never attach this header on their
  own, so a cross-site page cannot forge it; a request that carries a foreign ``Origin`` is
  still refused.
* **Session** (browser): ``POST /login`` with the operator's name and the token sets an
  ``HttpOnly; SameSite=Strict`` cookie ``qtd_session = <operator>|<expiry>|<hmac>`` signed
  with a key derived from the token (changing the token logs everybody out). Every control
  then needs (1) an ``Origin`` (or ``Referer``) equal to the page's own origin and (2) an
  ``X-CSRF-Token`` header equal to HMAC(key, session cookie), which the server renders into
  the page: a cross-site page can neither read it nor send the cookie (SameSite=Strict).

Credentials are checked before a control's body is read (:meth:`Auth.authenticate`).
The token never appears in logs, pages or errors.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request

from qtd.errors import ConfigError

log = logging.getLogger("qtd.web.auth")
COOKIE = "qtd_session"
CSRF_HEADER = "x-csrf-token"
MIN_TOKEN_CHARS = 16
_OPERATOR = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_PAGE_SCHEME = {"ws": "http", "wss": "https"}


def resolve_operator_token(env_name: str = "", file: str = "",
                           environ: dict[str, str] | None = None) -> str | None:
    """The operator token from an environment variable or a file (never the config itself).

    Args:
        env_name: name of the environment variable holding the token.
        file: path of a file holding the token (surrounding whitespace stripped).
        environ: environment to read (default ``os.environ``).

    Returns:
        The token, or None when neither source is configured or the variable is unset
        (read-only page, logged).

    Raises:
        ConfigError: both sources, an unreadable file, or a token shorter than
            ``MIN_TOKEN_CHARS`` (the value is never shown).
    """
    env = os.environ if environ is None else environ
    if env_name and file:
        raise ConfigError("web: set operator_token_env or operator_token_file, not both",
                          field="web.operator_token_file", rule="one token source")
    if env_name:
        token, where = env.get(env_name, ""), f"environment variable {env_name}"
        if not token:
            log.warning("web.read_only reason=%s is not set", where)
            return None  # fail safe: no controls rather than no leader
    elif file:
        try:
            token, where = Path(file).read_text().strip(), f"file {file}"
        except OSError as e:
            raise ConfigError(f"web: cannot read operator token file {file} ({e.strerror})",
                              field="web.operator_token_file", value=file) from None
    else:
        return None
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"web: operator token from {where} is shorter than "
                          f"{MIN_TOKEN_CHARS} characters", field="web.operator_token",
                          rule=f">= {MIN_TOKEN_CHARS} characters")
    return token


def valid_operator(name: str) -> bool:
    """1-64 characters of letters, digits and ``._@-``."""
    return bool(_OPERATOR.match(name))


class Auth:
    """Checks operator credentials and CSRF (see the module docstring).

    Args:
        token: the operator token (None: read-only, controls refused).
        session_ttl_s: how long a login lasts, seconds.
        allowed_origins: extra origins accepted besides the page's own
            (e.g. ``https://ops.example.com`` behind a TLS proxy).
    """

    def __init__(self, token: str | None, *, session_ttl_s: float = 12 * 3600,
                 allowed_origins: tuple[str, ...] = ()) -> None:
        self._token = token
        self._key = hashlib.sha256(b"qtd-web-session\0" + token.encode()).digest() if token \
            else b""
        self.session_ttl_s = session_ttl_s
        self.allowed_origins = frozenset(o.rstrip("/") for o in allowed_origins)

    @property
    def enabled(self) -> bool:
        """True when controls can be used at all (a token is configured)."""
        return self._token is not None

    def check_token(self, candidate: str) -> bool:
        """Constant-time comparison with the configured token."""
        return self._token is not None and hmac.compare_digest(candidate.encode(),
                                                               self._token.encode())

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def session_cookie(self, operator: str, now: float | None = None) -> str:
        """A signed session value for ``operator``."""
        expiry = int((time.time() if now is None else now) + self.session_ttl_s)
        body = f"{operator}|{expiry}"
        return f"{body}|{self._sign(body)}"

    def session_operator(self, conn: HTTPConnection) -> str | None:
        """The operator of a valid, unexpired session cookie, else None."""
        value = conn.cookies.get(COOKIE, "")
        parts = value.split("|")
        if not self.enabled or len(parts) != 3 or not parts[1].isdigit():
            return None
        if not hmac.compare_digest(parts[2], self._sign(f"{parts[0]}|{parts[1]}")):
            return None
        return parts[0] if int(parts[1]) > time.time() else None

    def csrf_token(self, conn: HTTPConnection) -> str:
        """The CSRF token bound to this request's session ("" without a session)."""
        value = conn.cookies.get(COOKIE, "")
        return self._sign(f"csrf|{value}") if value and self.enabled else ""

    def origin_ok(self, conn: HTTPConnection, *, required: bool) -> bool:
        """Origin (or Referer) is this site's or an allowed one; absent is ok unless
        ``required``. A WebSocket's own origin is the page's (``ws`` → ``http``)."""
        origin = conn.headers.get("origin") or _origin_of(conn.headers.get("referer", ""))
        if not origin or origin == "null":
            return not required and not origin
        scheme = _PAGE_SCHEME.get(conn.url.scheme, conn.url.scheme)
        own = f"{scheme}://{conn.headers.get('host', conn.url.netloc)}"
        return origin.rstrip("/") in {own, *self.allowed_origins}

    def authenticate(self, request: Request) -> str | None:
        """Check a control request's credentials before its body is read.

        Returns:
            The session's operator, or None for a valid bearer token (the body must name
            the operator: :meth:`bearer_operator`).

        Raises:
            HTTPException: 403 controls disabled / bad origin / bad CSRF token; 401 no or
                wrong credentials.
        """
        if not self.enabled:
            raise HTTPException(403, "read-only: no operator token is configured")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            if not self.check_token(auth[7:].strip()):
                raise HTTPException(401, "wrong operator token",
                                    headers={"WWW-Authenticate": "Bearer"})
            if not self.origin_ok(request, required=False):
                raise HTTPException(403, "cross-site request refused (Origin)")
            return None
        operator = self.session_operator(request)
        if operator is None:
            raise HTTPException(401, "operator login or bearer token required",
                                headers={"WWW-Authenticate": "Bearer"})
        if not self.origin_ok(request, required=True):
            raise HTTPException(403, "cross-site request refused (Origin)")
        sent = request.headers.get(CSRF_HEADER, "")
        if not sent or not hmac.compare_digest(sent, self.csrf_token(request)):
            raise HTTPException(403, "missing or wrong CSRF token")
        return operator

    @staticmethod
    def bearer_operator(body_operator: str) -> str:
        """The operator a bearer-token request names in its body.

        Raises:
            HTTPException: 403 not 1-64 of letters, digits, ``._@-``.
        """
        if not valid_operator(body_operator):
            raise HTTPException(403, "operator: 1-64 of letters, digits, ._@-")
        return body_operator


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""
