"""Passwords (argon2) and bearer tokens (signed JWT) for the staff API."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_HASHER = PasswordHasher()
_ALGORITHM = "HS256"
_REQUIRED_CLAIMS = ("exp", "iat", "sub")


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``."""
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether ``password`` matches; constant-time inside argon2."""
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


_DUMMY_HASH: list[str] = []


def verify_unknown(password: str) -> bool:
    """Spend the time of a real verification for a username that does not exist.

    Without it, "unknown user" answers measurably faster than "wrong password", and the
    login form becomes an oracle for valid usernames. Always False.
    """
    if not _DUMMY_HASH:
        _DUMMY_HASH.append(_HASHER.hash("trygg-no-such-user"))
    verify_password(_DUMMY_HASH[0], password)
    return False


class TokenError(Exception):
    """A token that is missing, malformed, forged or expired."""


@dataclass(frozen=True, slots=True)
class TokenIssuer:
    """Issues and checks access tokens bound to one staff id."""

    secret: str
    ttl_s: int

    def issue(self, staff_id: str, now: float | None = None) -> str:
        """A token for ``staff_id``."""
        issued = int(now if now is not None else time.time())
        claims = {"sub": staff_id, "iat": issued, "exp": issued + self.ttl_s, "typ": "access"}
        return jwt.encode(claims, self.secret, algorithm=_ALGORITHM)

    def check(self, token: str) -> str:
        """The staff id a valid token was issued to."""
        try:
            # A token without an expiry would be good for ever (it cannot be revoked):
            # "exp" is required, not merely checked when present.
            claims = jwt.decode(token, self.secret, algorithms=[_ALGORITHM],
                                options={"require": list(_REQUIRED_CLAIMS)})
        except jwt.PyJWTError as exc:
            raise TokenError(str(exc)) from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or claims.get("typ") != "access":
            raise TokenError("not an access token")
        return subject
