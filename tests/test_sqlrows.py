"""Multi-row inserts (``gateway.sqlrows``): every row, in order, across chunk boundaries."""

from __future__ import annotations

import sqlite3

import pytest

from gateway import sqlrows
from gateway.sqlrows import insert_rows


@pytest.fixture
def conn() -> sqlite3.Connection:
    c = sqlite3.connect(":memory:")
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, k TEXT UNIQUE, v REAL)")
    return c


@pytest.mark.parametrize("per_statement", [1, 3, 500])
def test_every_row_lands_in_the_order_given(conn: sqlite3.Connection, per_statement: int,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlrows, "MAX_ROWS", per_statement)
    rows = [(f"k{n:03d}", n / 2) for n in range(10)]
    insert_rows(conn, "INSERT INTO t (k, v)", rows)
    assert conn.execute("SELECT k, v FROM t ORDER BY id").fetchall() == rows


def test_the_parameter_limit_splits_the_statements(conn: sqlite3.Connection) -> None:
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 5)  # two rows of two per statement
    rows = [(f"k{n}", float(n)) for n in range(7)]
    insert_rows(conn, "INSERT INTO t (k, v)", rows)
    assert conn.execute("SELECT k, v FROM t ORDER BY id").fetchall() == rows


def test_a_tail_clause_applies_to_every_row(conn: sqlite3.Connection) -> None:
    insert_rows(conn, "INSERT INTO t (k, v)", [("a", 1.0), ("b", 1.0)])
    insert_rows(conn, "INSERT INTO t (k, v)", [("a", 5.0), ("b", 0.5), ("c", 2.0)],
                "ON CONFLICT(k) DO UPDATE SET v = max(v, excluded.v)")
    assert conn.execute("SELECT k, v FROM t ORDER BY k").fetchall() == [
        ("a", 5.0), ("b", 1.0), ("c", 2.0)]


def test_no_rows_is_no_statement(conn: sqlite3.Connection) -> None:
    insert_rows(conn, "INSERT INTO nowhere (x)", [])  # the table does not even exist


def test_a_refused_row_fails_its_statement(conn: sqlite3.Connection) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        insert_rows(conn, "INSERT INTO t (k, v)", [("x", 1.0), ("x", 2.0)])
