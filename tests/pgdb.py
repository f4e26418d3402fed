"""Throw-away PostgreSQL databases for the blocking stores' contract suites."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

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
