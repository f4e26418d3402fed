"""Refresh-token sessions: the port, and its PostgreSQL adapter for a cluster.

A session is a family of refresh tokens: each use (``rotate``) spends the token and issues
its successor in the same transaction. Presenting a spent token revokes the whole family
(somebody copied it). The SQLite adapter is ``gateway.security.RefreshStore``
(``sessions.sqlite3``); ``PgSessionStore`` keeps the same rows in PostgreSQL so that a token
issued by one gateway rotates on any other (no sticky sessions).

Two gateways racing to rotate the same token: the row is read ``FOR UPDATE``, so the second
waits for the first to commit, then sees the token spent and revokes the family, the first
one's successor included. Exactly what a replay on one gateway does.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from gateway.security import SESSIONS_FILENAME, RefreshError, RefreshStore, _digest
from gateway.stores import pg

__all__ = ["PgSessionStore", "SessionStore", "session_store"]


class SessionStore(Protocol):
    """Rotating, revocable refresh tokens (only their SHA-256 is stored)."""

    ttl_s: int

    def issue(self, staff_id: str, family: str | None = None) -> str:
        """A new refresh token (a new family unless rotating within one)."""

    def rotate(self, token: str) -> tuple[str, str]:
        """Spend a token: ``(staff_id, successor)``; ``RefreshError`` if it is not usable
        (a spent or revoked one revokes its family first)."""

    def revoke(self, token: str) -> None:
        """Log out: the token's whole family stops working."""

    def revoke_staff(self, staff_id: str) -> None:
        """Every session of one staff member."""

    def prune(self) -> int:
        """Drop expired tokens; returns how many."""


MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE trygg_refresh ("
        " digest text PRIMARY KEY,"
        " family text NOT NULL,"
        " staff_id text NOT NULL,"
        " expires_at double precision NOT NULL,"
        " used boolean NOT NULL DEFAULT false,"
        " revoked boolean NOT NULL DEFAULT false)",
        "CREATE INDEX trygg_refresh_family ON trygg_refresh (family)",
        "CREATE INDEX trygg_refresh_staff ON trygg_refresh (staff_id)",
    ],
]

_INSERT = ("INSERT INTO trygg_refresh (digest, family, staff_id, expires_at)"
           " VALUES (%s, %s, %s, %s)")


class PgSessionStore:
    """Refresh-token families in PostgreSQL, shared by every gateway on ``dsn``."""

    def __init__(self, dsn: str, ttl_s: int, clock: Callable[[], float] = time.time) -> None:
        self.dsn = dsn
        self.ttl_s = ttl_s
        self._clock = clock
        # The tables are made on first use, in the caller's worker thread: the web app is
        # built on the event loop, which must not wait for the database.
        self._ready = False
        self._ready_lock = threading.Lock()

    def _migrated(self) -> str:
        """The DSN, once the tables exist."""
        if not self._ready:
            with self._ready_lock:
                if not self._ready:
                    pg.migrate(self.dsn, "sessions", MIGRATIONS)
                    self._ready = True
        return self.dsn

    @pg.translated
    def issue(self, staff_id: str, family: str | None = None) -> str:
        """A new refresh token (a new family unless rotating within one)."""
        token = secrets.token_urlsafe(32)
        with pg.connection(self._migrated()) as conn:
            conn.execute(_INSERT, (_digest(token), family or secrets.token_hex(8), staff_id,
                                   self._clock() + self.ttl_s))
        return token

    @pg.translated
    def rotate(self, token: str) -> tuple[str, str]:
        """Spend a token and issue its successor, in one transaction."""
        reused = False
        with pg.connection(self._migrated()) as conn, conn.transaction():
            row = conn.execute(
                "SELECT family, staff_id, expires_at, used, revoked FROM trygg_refresh"
                " WHERE digest = %s FOR UPDATE", (_digest(token),)
            ).fetchone()
            if row is None:
                raise RefreshError("unknown refresh token")
            family, staff_id, expires_at, used, revoked = row
            if used or revoked:
                # Committed before the refusal: the revocation must stick.
                conn.execute("UPDATE trygg_refresh SET revoked = true WHERE family = %s",
                             (family,))
                reused = True
            elif expires_at < self._clock():
                raise RefreshError("refresh token expired")
            else:
                conn.execute("UPDATE trygg_refresh SET used = true WHERE digest = %s",
                             (_digest(token),))
                rotated = secrets.token_urlsafe(32)
                conn.execute(_INSERT, (_digest(rotated), family, staff_id,
                                       self._clock() + self.ttl_s))
        if reused:
            raise RefreshError("refresh token reused; the session is revoked")
        return str(staff_id), rotated

    @pg.translated
    def revoke(self, token: str) -> None:
        """Log out: the token's whole family stops working."""
        with pg.connection(self._migrated()) as conn:
            conn.execute(
                "UPDATE trygg_refresh SET revoked = true WHERE family IN"
                " (SELECT family FROM trygg_refresh WHERE digest = %s)", (_digest(token),)
            )

    @pg.translated
    def revoke_staff(self, staff_id: str) -> None:
        """Every session of one staff member (deleted, role changed, password reset)."""
        with pg.connection(self._migrated()) as conn:
            conn.execute("UPDATE trygg_refresh SET revoked = true WHERE staff_id = %s",
                         (staff_id,))

    @pg.translated
    def prune(self) -> int:
        """Drop expired tokens; returns how many."""
        with pg.connection(self._migrated()) as conn:
            return conn.execute("DELETE FROM trygg_refresh WHERE expires_at < %s",
                                (self._clock(),)).rowcount


def session_store(journal_dsn: str | None, data_dir: Path, ttl_s: int) -> SessionStore:
    """The gateway's sessions: shared in PostgreSQL with the journal, else SQLite."""
    if journal_dsn is not None:
        return PgSessionStore(journal_dsn, ttl_s)
    return RefreshStore(data_dir / SESSIONS_FILENAME, ttl_s)
