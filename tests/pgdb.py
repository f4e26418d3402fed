"""Throw-away PostgreSQL databases for the blocking stores' contract suites."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

import psycopg
import pytest

from tests.test_journal_contract import PG_ADMIN_DSN


@contextmanager
def fresh_database_sync() -> Iterator[str]:
    """A new, empty database; yields its DSN and drops it afterwards."""
    name = f"trygg_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_DSN!r}: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield psycopg.conninfo.make_conninfo(PG_ADMIN_DSN, dbname=name)
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


class _Closable(Protocol):
    def close(self) -> None: ...


S = TypeVar("S", bound=_Closable)


@contextmanager
def store_opener(backend: str, sqlite: Callable[[], S],
                 postgres: Callable[[str, str], S]) -> Iterator[Callable[[], S]]:
    """Opens another store on the same storage each call (another gateway, or the same
    after a restart): ``sqlite()`` on a file, or ``postgres(dsn, gateway_id)`` on a fresh
    database. Every store opened is closed at the end, before the database is dropped."""
    opened: list[S] = []

    def track(store: S) -> S:
        opened.append(store)
        return store

    try:
        if backend == "sqlite":
            yield lambda: track(sqlite())
        else:
            with fresh_database_sync() as dsn:
                try:
                    yield lambda: track(postgres(dsn, f"gw{len(opened)}"))
                finally:
                    for store in opened:
                        store.close()
                    opened.clear()
    finally:
        for store in opened:
            store.close()
