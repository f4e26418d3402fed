"""Edge security of the web app: login throttling, refresh tokens, headers, CORS.

- ``LoginGuard``: failed logins are counted per username and per client address in a sliding
  window; past the limit that key is locked out for a while (HTTP 429 + ``Retry-After``).
- ``RefreshStore``: opaque refresh tokens (only their SHA-256 is stored), rotated on every
  use. Presenting an already-used token revokes its whole family: somebody copied it.
- ``SecurityHeaders``: a pure ASGI middleware adding CSP, ``X-Content-Type-Options``,
  ``Referrer-Policy``, ``frame-ancestors 'none'`` (+ ``X-Frame-Options``) and, when the
  app is served over TLS, HSTS.

CORS is closed unless ``SecuritySettings.cors_origins`` names origins (docs/security.md).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SESSIONS_FILENAME = "sessions.sqlite3"
# The shortest access-token lifetime: in production, and in demo mode (tests).
MIN_ACCESS_TTL_S = 60
MIN_ACCESS_TTL_DEMO_S = 10


class SecuritySettings(BaseModel):
    """Knobs of the web edge (proposed ``Settings.security``)."""

    model_config = ConfigDict(extra="forbid")

    # Access tokens (JWT, not revocable): short. Clients refresh them with the refresh
    # token, which rotates on every use; ``refresh_ttl_s`` is how long an unused one lives
    # (each refresh starts it again). Below 60 s only in demo mode (``Settings`` checks):
    # tests use a few seconds to watch tokens expire and be refreshed.
    access_ttl_s: int = Field(default=15 * 60, ge=MIN_ACCESS_TTL_DEMO_S)
    refresh_ttl_s: int = Field(default=12 * 3600, ge=300)
    login_window_s: float = Field(default=15 * 60.0, gt=0)
    max_failures_per_user: int = Field(default=5, ge=1)
    max_failures_per_ip: int = Field(default=20, ge=1)
    lockout_s: float = Field(default=15 * 60.0, gt=0)
    cors_origins: list[str] = []
    # Send HSTS (set when TLS terminates here or at a proxy in front).
    hsts: bool = False


# -- login throttling -----------------------------------------------------------------------


@dataclass(slots=True)
class _Counter:
    failures: deque[float]
    locked_until: float = 0.0


class LoginGuard:
    """Sliding-window failure counts and lockouts, per username and per client address.

    In memory: a restart forgets counts, which an attacker cannot trigger from outside.
    """

    def __init__(self, settings: SecuritySettings, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self._settings = settings
        self._clock = clock
        self._max_keys = max_keys
        self._keys: dict[str, _Counter] = {}

    def _limit(self, key: str) -> int:
        s = self._settings
        return s.max_failures_per_user if key.startswith("user:") else s.max_failures_per_ip

    def retry_after(self, username: str, address: str) -> float:
        """Seconds until a login may be tried again (0 = now)."""
        now = self._clock()
        waits = [c.locked_until - now for k in (f"user:{username}", f"ip:{address}")
                 if (c := self._keys.get(k)) is not None]
        return max([0.0, *waits])

    def failed(self, username: str, address: str) -> list[str]:
        """Count a failure; returns the keys that just became locked."""
        now = self._clock()
        if len(self._keys) >= self._max_keys:
            # Bounded memory under a spray of usernames: forget idle keys first.
            self._keys = {k: c for k, c in self._keys.items() if c.locked_until > now}
        locked = []
        for key in (f"user:{username}", f"ip:{address}"):
            counter = self._keys.setdefault(key, _Counter(deque()))
            window = self._settings.login_window_s
            while counter.failures and counter.failures[0] < now - window:
                counter.failures.popleft()
            counter.failures.append(now)
            if len(counter.failures) >= self._limit(key) and counter.locked_until <= now:
                counter.locked_until = now + self._settings.lockout_s
                counter.failures.clear()
                locked.append(key)
        return locked

    def succeeded(self, username: str) -> None:
        """A good password clears the username's count (not the address's)."""
        self._keys.pop(f"user:{username}", None)


# -- refresh tokens -------------------------------------------------------------------------


class RefreshError(Exception):
    """An unknown, expired, revoked or reused refresh token."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class RefreshStore:
    """Rotating, revocable refresh tokens in SQLite (a connection per operation)."""

    def __init__(self, path: Path, ttl_s: int, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.ttl_s = ttl_s
        self._clock = clock
        with self._db():
            pass

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path, timeout=10)) as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS refresh (digest TEXT PRIMARY KEY,"
                " family TEXT NOT NULL, staff_id TEXT NOT NULL, expires_at REAL NOT NULL,"
                " used INTEGER NOT NULL DEFAULT 0, revoked INTEGER NOT NULL DEFAULT 0)"
            )
            with conn:
                yield conn

    def issue(self, staff_id: str, family: str | None = None) -> str:
        """A new refresh token (a new family unless rotating within one)."""
        token = secrets.token_urlsafe(32)
        with self._db() as conn:
            conn.execute(
                "INSERT INTO refresh VALUES (?, ?, ?, ?, 0, 0)",
                (_digest(token), family or secrets.token_hex(8), staff_id,
                 self._clock() + self.ttl_s),
            )
        return token

    def rotate(self, token: str) -> tuple[str, str]:
        """Use a refresh token: ``(staff_id, new refresh token)``; it is spent."""
        with self._db() as conn:
            row = conn.execute(
                "SELECT family, staff_id, expires_at, used, revoked FROM refresh"
                " WHERE digest = ?", (_digest(token),)
            ).fetchone()
            if row is None:
                raise RefreshError("unknown refresh token")
            family, staff_id, expires_at, used, revoked = row
            if used or revoked:
                conn.execute("UPDATE refresh SET revoked = 1 WHERE family = ?", (family,))
                conn.commit()
                raise RefreshError("refresh token reused; the session is revoked")
            if expires_at < self._clock():
                raise RefreshError("refresh token expired")
            conn.execute("UPDATE refresh SET used = 1 WHERE digest = ?", (_digest(token),))
            # The successor in the same transaction: nobody ever sees the family with its old
            # token spent and no new one.
            rotated = secrets.token_urlsafe(32)
            conn.execute("INSERT INTO refresh VALUES (?, ?, ?, ?, 0, 0)",
                         (_digest(rotated), family, staff_id, self._clock() + self.ttl_s))
        return staff_id, rotated

    def revoke(self, token: str) -> None:
        """Log out: the token's whole family stops working."""
        with self._db() as conn:
            conn.execute(
                "UPDATE refresh SET revoked = 1 WHERE family IN"
                " (SELECT family FROM refresh WHERE digest = ?)", (_digest(token),)
            )

    def revoke_staff(self, staff_id: str) -> None:
        """Every session of one staff member (deleted, role changed, password reset)."""
        with self._db() as conn:
            conn.execute("UPDATE refresh SET revoked = 1 WHERE staff_id = ?", (staff_id,))

    def prune(self) -> int:
        """Drop expired tokens; returns how many."""
        with self._db() as conn:
            return conn.execute("DELETE FROM refresh WHERE expires_at < ?",
                                (self._clock(),)).rowcount


# -- headers --------------------------------------------------------------------------------

# The staff app (dashboards/static) loads only its own scripts, styles, icons and manifest,
# talks to /api/v1 and its WebSocket, and registers a service worker: 'self' covers all of
# it. ws:/wss: of the same host are listed because older Safari does not treat them as
# 'self'.
_APP_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' {ws}; worker-src 'self'; manifest-src 'self'; object-src 'none'; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
# The /docs and /redoc pages (Swagger UI, ReDoc) load their scripts from this gateway
# (fastapi-offline's copies, never a CDN) and start them with an inline script; they get a
# CSP that allows that inline script and nothing from elsewhere.
_DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "worker-src 'self' blob:; object-src 'none'; base-uri 'self'; frame-ancestors 'none'"
)
_DOCS_PATHS = ("/docs", "/redoc")

ASGIApp = Callable[..., Any]


class SecurityHeaders:
    """ASGI middleware: security headers on every HTTP response."""

    def __init__(self, app: ASGIApp, *, hsts: bool = False) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Pass through, adding headers to ``http.response.start``."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        host = next((v.decode("latin-1") for k, v in scope.get("headers", ())
                     if k == b"host"), "")
        safe_host = "".join(c for c in host if c.isalnum() or c in ".-:[]")
        ws = f"ws://{safe_host} wss://{safe_host}" if safe_host else ""
        csp = _DOCS_CSP if path.startswith(_DOCS_PATHS) else _APP_CSP.format(ws=ws)
        extra = [
            (b"content-security-policy", csp.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
        ]
        if self.hsts or scope.get("scheme") == "https":
            extra.append((b"strict-transport-security", b"max-age=31536000; includeSubDomains"))
        if path.startswith("/api/"):
            extra.append((b"cache-control", b"no-store"))

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *(h for h in extra if h[0] not in present)]
            await send(message)

        await self.app(scope, receive, send_with_headers)
