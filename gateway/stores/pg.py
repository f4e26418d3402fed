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

from gateway.pg_schema import connect, migrate_sync
from gateway.stores.base import StoreError

P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def connection(dsn: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """A connection for one operation; ``with conn.transaction()`` inside for atomicity."""
    with connect(dsn) as conn:
        yield conn


def migrate(dsn: str, component: str, steps: Sequence[Sequence[str]]) -> list[int]:
    """Bring ``component``'s tables up to date (idempotent, safe when gateways race)."""
    with connection(dsn) as conn:
        return migrate_sync(conn, component, steps)


def translated(method: Callable[P, R]) -> Callable[P, R]:
    """psycopg's errors leave an adapter as ``StoreError`` (the callers' one type)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except psycopg.Error as exc:
            raise StoreError(str(exc)) from exc

    return wrapper
