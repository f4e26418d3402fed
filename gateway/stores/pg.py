"""Synchronous PostgreSQL plumbing for the shared stores: connections and migrations.

The stores are called from worker threads (their callers use ``asyncio.to_thread``), so a
plain ``psycopg.Connection`` per operation is enough: operations are rare (a login, a
refresh every ten minutes per phone, a claim code per installation) and short. Migrations
use the journal's ``trygg_schema`` table and its advisory lock, so every gateway of a
cluster brings the schema up once, whichever starts first.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import psycopg

from gateway.journal_pg import MIGRATION_LOCK, SchemaError
from gateway.stores.base import StoreError

CONNECT_TIMEOUT_S = 10

P = ParamSpec("P")
R = TypeVar("R")

_SCHEMA_TABLE = (
    "CREATE TABLE IF NOT EXISTS trygg_schema ("
    " component text NOT NULL,"
    " version integer NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),"
    " applied_by text NOT NULL DEFAULT '',"
    " PRIMARY KEY (component, version))"
)


@contextmanager
def connection(dsn: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """A connection for one operation; ``with conn.transaction()`` inside for atomicity."""
    with psycopg.Connection.connect(dsn, autocommit=True,
                                    connect_timeout=CONNECT_TIMEOUT_S) as conn:
        yield conn


def migrate(dsn: str, component: str, steps: Sequence[Sequence[str]]) -> list[int]:
    """Bring ``component``'s tables up to date (idempotent, safe when gateways race)."""
    applied: list[int] = []
    with connection(dsn) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(_SCHEMA_TABLE)
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
            conn.execute("INSERT INTO trygg_schema (component, version) VALUES (%s, %s)",
                         (component, version))
            applied.append(version)
    return applied


def translated(method: Callable[P, R]) -> Callable[P, R]:
    """psycopg's errors leave an adapter as ``StoreError`` (the callers' one type)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except psycopg.Error as exc:
            raise StoreError(str(exc)) from exc

    return wrapper
