"""Throw-away PostgreSQL databases for the store contract tests (synchronous stores)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

# The server to create throw-away databases on (as tests/test_journal_contract.py).
PG_ADMIN_DSN = os.environ.get("TRYGG_TEST_PG", "host=127.0.0.1 port=5432 dbname=postgres")


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty database for one test; yields its DSN and drops it afterwards."""
    name = f"trygg_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.Connection.connect(PG_ADMIN_DSN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_DSN!r}: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield psycopg.conninfo.make_conninfo(PG_ADMIN_DSN, dbname=name)
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
