"""Schema migrations for the blocking (psycopg, non-async) PostgreSQL stores.

The audit log, the roster store and the camera store are used from worker threads and
from the CLI, so they use psycopg's blocking API. Their schemas are versioned in the same
``trygg_schema`` table and under the same advisory lock as the journal's
(``gateway.journal_pg.migrate``), so several gateways starting at once never race, and a
database that is newer than the code is refused the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from gateway.journal_pg import MIGRATION_LOCK, SchemaError

__all__ = ["CONNECT_TIMEOUT_S", "connect", "migrate_sync"]

# How long a blocking store waits for a connection before the operation fails.
CONNECT_TIMEOUT_S = 10


def connect(dsn: str) -> psycopg.Connection[tuple[Any, ...]]:
    """An autocommit connection: transactions are explicit (``conn.transaction()``)."""
    return psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)


def migrate_sync(
    conn: psycopg.Connection[Any],
    component: str,
    steps: Sequence[Sequence[str]],
    *,
    applied_by: str = "",
) -> list[int]:
    """Bring ``component``'s schema to ``len(steps)``; returns the versions applied now.

    Forward-only: never edit a released step, append a new one.
    """
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS trygg_schema ("
            " component text NOT NULL,"
            " version integer NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),"
            " applied_by text NOT NULL DEFAULT '',"
            " PRIMARY KEY (component, version))"
        )
        row = conn.execute(
            "SELECT coalesce(max(version), 0) FROM trygg_schema WHERE component = %s",
            (component,),
        ).fetchone()
        current = int(row[0]) if row is not None else 0
        if current > len(steps):
            raise SchemaError(
                f"database schema {component!r} is at version {current}, newer than this "
                f"gateway's {len(steps)}: upgrade the gateway"
            )
        for version in range(current + 1, len(steps) + 1):
            for statement in steps[version - 1]:
                conn.execute(statement.encode())
            conn.execute(
                "INSERT INTO trygg_schema (component, version, applied_by) VALUES (%s, %s, %s)",
                (component, version, applied_by),
            )
            applied.append(version)
    return applied
