"""NATS identities: nkeys, the JWTs of NATS's decentralized auth, and ``.creds`` files.

NATS's decentralized auth is a chain of Ed25519 keys (nkeys): an **operator** signs
**accounts**, an account signs its **users**. The server is configured once with the operator
JWT and a resolver that stores account JWTs; it then accepts any user whose JWT is signed by
a known account's key, with the permissions written in that JWT. Adding a login therefore
needs nothing on the server, and revoking one is an update of the account JWT (its
``revocations``) pushed to the running server on ``$SYS.REQ.CLAIMS.UPDATE``, which closes
the revoked user's connections. Sources: NATS docs, "JWT authentication" and "NATS based
resolver" (docs.nats.io); the claim layout is that of github.com/nats-io/jwt v2.

Keys come from the ``nkeys`` package (NATS's own Ed25519 key encoding: seeds ``S...``,
public keys ``O...``/``A...``/``U...``) and JWTs are encoded and verified by PyJWT with the
``ed25519-nkey`` algorithm registered on a private :class:`jwt.PyJWS` instance (a NATS JWT is
a standard JWS whose signature is the nkey's Ed25519 signature).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from collections.abc import Mapping
from typing import Any, Literal, NoReturn

import jwt
import msgspec
import nacl.exceptions
import nacl.signing
import nkeys
from jwt.algorithms import Algorithm

ALGORITHM = "ed25519-nkey"
"""The JWT ``alg`` of NATS v2 JWTs."""

KeyKind = Literal["operator", "account", "user"]
_PREFIX: dict[KeyKind, int] = {
    "operator": nkeys.PREFIX_BYTE_OPERATOR,
    "account": nkeys.PREFIX_BYTE_ACCOUNT,
    "user": nkeys.PREFIX_BYTE_USER,
}
_PUBLIC_FIRST: dict[KeyKind, str] = {"operator": "O", "account": "A", "user": "U"}
NO_LIMIT = -1
"""``-1``: unlimited, in NATS JWT limits."""


class IdentityError(ValueError):
    """A key, JWT or ``.creds`` file that is not what it should be; the message says which
    part and why."""


class _NkeyAlgorithm(Algorithm):
    """PyJWT algorithm ``ed25519-nkey``: sign with an nkey key pair, verify with a public
    key (``O...``/``A...``/``U...``)."""

    def prepare_key(self, key: Any) -> Any:
        if isinstance(key, nkeys.KeyPair):
            return key
        if isinstance(key, str | bytes):
            return _verify_key(key.encode() if isinstance(key, str) else key)
        raise IdentityError(f"not an nkey: {type(key).__name__}")

    def sign(self, msg: bytes, key: Any) -> bytes:
        return bytes(key.sign(msg))

    def verify(self, msg: bytes, key: Any, sig: bytes) -> bool:
        try:
            key.verify(msg, sig)
        except nacl.exceptions.BadSignatureError:
            return False
        return True

    @staticmethod
    def to_jwk(key_obj: Any, as_dict: bool = False) -> NoReturn:
        raise NotImplementedError("nkeys have no JWK form")

    @staticmethod
    def from_jwk(jwk: Any) -> NoReturn:
        raise NotImplementedError("nkeys have no JWK form")


def _verify_key(public: bytes) -> nacl.signing.VerifyKey:
    """The Ed25519 verify key of an encoded nkey public key (prefix byte, 32 key bytes,
    CRC-16 little-endian, base32)."""
    try:
        raw = base64.b32decode(public)
    except ValueError:
        raise IdentityError("not an nkey public key") from None
    if (len(raw) != 35 or not nkeys.valid_public_prefix_byte(raw[0])
            or nkeys.crc16(bytearray(raw[:33])) != int.from_bytes(raw[33:], "little")):
        raise IdentityError("not an nkey public key")
    return nacl.signing.VerifyKey(raw[1:33])


_JWS = jwt.PyJWS(algorithms=[])
_JWS.register_algorithm(ALGORITHM, _NkeyAlgorithm())


def new_key(kind: KeyKind) -> nkeys.KeyPair:
    """A fresh random nkey of ``kind`` (32 bytes from :func:`os.urandom`)."""
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), _PREFIX[kind]))


def key_from_seed(seed: str | bytes, kind: KeyKind) -> nkeys.KeyPair:
    """The key pair of an encoded seed (``SO...``, ``SA...``, ``SU...``).

    Raises:
        IdentityError: not a seed, or a seed of another kind.
    """
    raw = seed.strip().encode() if isinstance(seed, str) else seed.strip()
    try:
        kp = nkeys.from_seed(bytearray(raw))
    except nkeys.NkeysError as e:
        raise IdentityError(f"not an nkey seed ({type(e).__name__})") from None
    if public_key(kp)[0] != _PUBLIC_FIRST[kind]:
        raise IdentityError(f"seed of a {public_key(kp)[0]}... key, expected a {kind} key")
    return kp


def public_key(kp: nkeys.KeyPair) -> str:
    """The encoded public key of ``kp`` (56 characters, ``O``/``A``/``U`` first)."""
    return bytes(kp.public_key).decode()


def seed_of(kp: nkeys.KeyPair) -> str:
    """The encoded seed of ``kp`` (secret: 58 characters, ``S`` first)."""
    return bytes(kp.seed).decode()


# --- claims ----------------------------------------------------------------------------------


class Permissions(msgspec.Struct, frozen=True):
    """What a NATS user may do (the ``pub``/``sub``/``resp`` of a user JWT).

    Attributes:
        publish: subjects the user may publish to (wildcards allowed).
        subscribe: subjects the user may subscribe to.
        responses: may publish once to the reply subject of each request it receives
            (nats-server ``allow_responses``), whatever ``publish`` says.
    """

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    responses: bool = False


def _jti(claims: Mapping[str, Any]) -> str:
    """The claim ID as github.com/nats-io/jwt computes it: base32 (no padding) of the
    SHA-512/256 of the claims' JSON with an empty ``jti``."""
    body = msgspec.json.encode({**claims, "jti": ""})
    return base64.b32encode(hashlib.new("sha512_256", body).digest()).decode().rstrip("=")


def sign(claims: dict[str, Any], signer: nkeys.KeyPair, *, issued_at: int | None = None
         ) -> str:
    """Encode ``claims`` as a NATS JWT signed by ``signer`` (sets ``iss``, ``iat``, ``jti``).

    Args:
        claims: the claims without ``iss``/``iat``/``jti`` (``sub``, ``name``, ``nats``).
        signer: the issuer's key pair (an operator for accounts, an account for users).
        issued_at: ``iat``, Unix seconds; default now.
    """
    full = {**claims, "iss": public_key(signer),
            "iat": int(time.time()) if issued_at is None else issued_at}
    full["jti"] = _jti(full)
    return _JWS.encode(msgspec.json.encode(full), signer, algorithm=ALGORITHM,
                       headers={"typ": "JWT", "alg": ALGORITHM})


def verify(token: str, issuer: str) -> dict[str, Any]:
    """The claims of ``token`` after checking its signature against the public key
    ``issuer`` and that ``iss`` names it.

    Raises:
        IdentityError: malformed token, bad signature or another issuer.
    """
    try:
        body = _JWS.decode(token, issuer, algorithms=[ALGORITHM])
    except jwt.exceptions.PyJWTError as e:
        raise IdentityError(f"JWT rejected: {e}") from None
    claims: dict[str, Any] = msgspec.json.decode(body)
    if claims.get("iss") != issuer:
        raise IdentityError(f"JWT issued by {claims.get('iss')!r}, not {issuer}")
    return claims


def claims_unverified(token: str) -> dict[str, Any]:
    """The claims of ``token`` without checking its signature (to name a login only).

    Raises:
        IdentityError: not a JWT.
    """
    try:
        body = _JWS.decode(token, options={"verify_signature": False})
        claims: dict[str, Any] = msgspec.json.decode(body)
    except (jwt.exceptions.PyJWTError, msgspec.DecodeError) as e:
        raise IdentityError(f"not a JWT: {e}") from None
    return claims


def operator_jwt(operator: nkeys.KeyPair, name: str, system_account: str) -> str:
    """The self-signed operator JWT naming ``system_account`` (a public key)."""
    return sign({"sub": public_key(operator), "name": name,
                 "nats": {"system_account": system_account, "type": "operator",
                          "version": 2}}, operator)


def account_jwt(account: str, name: str, operator: nkeys.KeyPair, *, jetstream: bool,
                revocations: Mapping[str, int] | None = None) -> str:
    """An account JWT signed by ``operator``.

    Args:
        account: the account's public key (``A...``).
        name: its name (``QTD``, ``SYS``).
        operator: the operator's key pair.
        jetstream: enable JetStream (memory and file storage bounded by the server's own
            ``max_memory_store`` / ``max_file_store``). The system account has none.
        revocations: user public key -> Unix seconds; that user's JWTs issued at or before
            that second are refused and its connections closed.
    """
    js = NO_LIMIT if jetstream else 0
    limits = {"subs": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT, "imports": NO_LIMIT,
              "exports": NO_LIMIT, "wildcards": True, "conn": NO_LIMIT, "leaf": NO_LIMIT,
              "mem_storage": js, "disk_storage": js, "streams": js, "consumer": js}
    nats: dict[str, Any] = {"limits": limits, "type": "account", "version": 2}
    if revocations:
        nats["revocations"] = dict(sorted(revocations.items()))
    return sign({"sub": account, "name": name, "nats": nats}, operator)


def user_jwt(user: str, name: str, account: nkeys.KeyPair, perms: Permissions) -> str:
    """A user JWT signed by ``account`` with exactly ``perms``.

    Args:
        user: the user's public key (``U...``).
        name: the login's name (also its reply-inbox prefix ``_INBOX_<name>``).
        account: the account key pair that signs it.
        perms: what it may publish and subscribe to.
    """
    nats: dict[str, Any] = {
        "pub": {"allow": list(perms.publish)} if perms.publish else {},
        "sub": {"allow": list(perms.subscribe)} if perms.subscribe else {},
        "subs": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT,
        "type": "user", "version": 2,
    }
    if not perms.publish:
        nats["pub"] = {"deny": [">"]}
    if not perms.subscribe:
        nats["sub"] = {"deny": [">"]}
    if perms.responses:
        nats["resp"] = {"max": 1, "ttl": 0}
    return sign({"sub": user, "name": name, "nats": nats}, account)


# --- .creds files ----------------------------------------------------------------------------

_CREDS = """-----BEGIN NATS USER JWT-----
{jwt}
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
{seed}
------END USER NKEY SEED------

*************************************************************
"""
_CREDS_PARTS = re.compile(r"-{3,}BEGIN NATS USER JWT-{3,}\s*\n\s*(\S+)\s*\n.*?"
                          r"-{3,}BEGIN USER NKEY SEED-{3,}\s*\n\s*(\S+)\s*\n", re.S)


def creds(user_token: str, user_key: nkeys.KeyPair) -> str:
    """A ``.creds`` file (the decorated JWT + seed format nsc writes and nats-py reads)."""
    return _CREDS.format(jwt=user_token, seed=seed_of(user_key))


def read_creds(text: str) -> tuple[str, str]:
    """``(jwt, seed)`` of a ``.creds`` file's text.

    Raises:
        IdentityError: the text has no JWT and seed blocks.
    """
    m = _CREDS_PARTS.search(text)
    if m is None:
        raise IdentityError("not a .creds file: no NATS USER JWT and USER NKEY SEED blocks")
    return m.group(1), m.group(2)


def creds_login(text: str) -> str:
    """The login name (the user JWT's ``name``) of a ``.creds`` file's text.

    Raises:
        IdentityError: not a ``.creds`` file, or its JWT has no name.
    """
    name = claims_unverified(read_creds(text)[0]).get("name")
    if not isinstance(name, str) or not name:
        raise IdentityError("the .creds file's JWT has no name")
    return name
