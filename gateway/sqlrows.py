"""Many rows into SQLite in a few statements, for the writer threads.

Why not ``executemany``: Python's sqlite3 releases the GIL around every row it steps and must
take it back before the next one. A writer thread (journal, audit, telemetry sink, device
watch) does so while the event loop thread keeps the GIL busy, and each take-back can wait a
whole switch interval (5 ms). Measured here: 1,000 rows took 1,638 ms with ``executemany``
beside a busy thread and 0.7 ms as multi-row ``INSERT … VALUES (…), (…)`` statements; under
ingest load the telemetry sink fell so far behind that it shed samples. One statement per
chunk releases the GIL once per chunk instead of once per row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

# SQLite's default host-parameter limit since 3.32 is 32,766; older builds have 999. The
# connection says which (Connection.getlimit); chunks stay below it.
_FALLBACK_LIMIT = 999
# Rows per statement at most: long enough to amortise the GIL, short enough that the SQL
# text (cached per distinct length by sqlite3) stays small.
MAX_ROWS = 500


def insert_rows(conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[object]],
                tail: str = "") -> None:
    """``{head} VALUES (?, …), … {tail}`` for every row, in order, in as few statements as
    the parameter limit allows. ``head``: ``INSERT INTO t (a, b)``; ``tail``: an
    ``ON CONFLICT`` clause, say. Rows are inserted in the order given (row ids follow it)."""
    if not rows:
        return
    width = len(rows[0])
    try:
        limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    except (AttributeError, sqlite3.Error):
        limit = _FALLBACK_LIMIT
    per = max(1, min(MAX_ROWS, limit // width))
    group = "(" + ", ".join("?" * width) + ")"
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        sql = f"{head} VALUES {', '.join([group] * len(chunk))}{(' ' + tail) if tail else ''}"
        conn.execute(sql, [value for row in chunk for value in row])
