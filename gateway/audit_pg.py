"""The audit log in PostgreSQL: one hash chain for every gateway of a cluster.

Same records, same hashes and same verification as the SQLite log (``gateway.audit``); only
the storage differs. What makes the chain one chain although several gateways append to it:

- **One order.** Every append transaction first locks the single head row
  (``SELECT ... FROM trygg_audit_head WHERE id = 1 FOR UPDATE``). A second gateway's append
  waits on that row lock until the first commits, then reads the new head, so seq numbers
  are handed out in commit order and every record's ``prev_hash`` is the hash of the record
  committed just before it. Two appends can never both claim seq N (also the primary key),
  so the chain cannot fork. [1]
- **Append-only.** Triggers refuse UPDATE, DELETE and TRUNCATE on ``trygg_audit`` (the
  journal's guard). A database superuser can still get around them (e.g. by disabling
  triggers); that is what ``verify`` and the exported head (``trygg audit head``) catch.
- ``gateway_id`` says which gateway wrote a record. It is bookkeeping, not part of the
  hashed record (the record format is the same as in SQLite, so one verifier serves both).

[1] An advisory lock would serialise as well, but the row lock ties the order to the very
    row that is updated in the same transaction: there is no way to append without it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, Self

import psycopg

from gateway.audit import (
    GENESIS_HASH,
    AuditEntry,
    AuditError,
    AuditRecord,
    AuditUnreadable,
    Head,
    VerifyResult,
    canonical_detail,
    record_hash,
    verify_source,
)
from gateway.journal import JournalError
from gateway.journal_pg import APPEND_ONLY_FUNCTION
from gateway.pg_schema import connect, migrate_sync

__all__ = ["AUDIT_MIGRATIONS", "PostgresAuditLog", "verify_pg"]

_LOGGER = logging.getLogger(__name__)

MIGRATIONS_COMPONENT = "audit"

AUDIT_MIGRATIONS: list[list[str]] = [
    # 1: the records, the head, the append-only guard.
    [
        "CREATE TABLE trygg_audit ("
        " seq bigint PRIMARY KEY,"
        " time_us bigint NOT NULL,"
        " kind text NOT NULL,"
        " actor text NOT NULL,"
        " subject text NOT NULL,"
        " detail text NOT NULL,"
        " prev_hash text NOT NULL,"
        " hash text NOT NULL,"
        " gateway_id text NOT NULL,"
        " written_at timestamptz NOT NULL DEFAULT now())",
        "CREATE TABLE trygg_audit_head ("
        " id integer PRIMARY KEY CHECK (id = 1),"
        " seq bigint NOT NULL,"
        " hash text NOT NULL)",
        f"INSERT INTO trygg_audit_head (id, seq, hash) VALUES (1, 0, '{GENESIS_HASH}')",
        APPEND_ONLY_FUNCTION,  # the journal's guard (CREATE OR REPLACE: one function)
        "CREATE TRIGGER trygg_audit_no_change BEFORE UPDATE OR DELETE ON trygg_audit"
        " FOR EACH ROW EXECUTE FUNCTION trygg_append_only()",
        "CREATE TRIGGER trygg_audit_no_truncate BEFORE TRUNCATE ON trygg_audit"
        " FOR EACH STATEMENT EXECUTE FUNCTION trygg_append_only()",
    ],
]

# A batch that failed on a lost connection is retried on a new one this many times, with
# these pauses: a PostgreSQL restart or fail-over takes seconds, and the writer runs on its
# own thread, so waiting here holds up nothing but auditing.
_RETRY_PAUSES_S = (0.5, 1.0, 2.0, 4.0)

_COLUMNS = "seq, time_us, kind, actor, subject, detail, prev_hash, hash"


def _to_us(at: float) -> int:
    return round(at * 1_000_000)


class PostgresAuditLog:
    """The audit log in a PostgreSQL database shared by the cluster; thread-safe.

    Implements the same port as ``gateway.audit.AuditLog`` (``append``, ``append_many``,
    ``head``, ``records``, ``close``).
    """

    def __init__(self, dsn: str, conn: psycopg.Connection[tuple[Any, ...]], *,
                 gateway_id: str) -> None:
        self.dsn = dsn
        self.gateway_id = gateway_id
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = conn
        self._lock = threading.Lock()

    @classmethod
    def open(cls, dsn: str, *, gateway_id: str = "") -> PostgresAuditLog:
        """Connect, creating the tables if needed."""
        try:
            conn = connect(dsn)
            migrate_sync(conn, MIGRATIONS_COMPONENT, AUDIT_MIGRATIONS, applied_by=gateway_id)
        except (psycopg.Error, JournalError) as exc:
            raise AuditUnreadable(f"cannot open the audit log in PostgreSQL: {exc}") from None
        return cls(dsn, conn, gateway_id=gateway_id)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection. Idempotent."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn)
        return self._conn

    def append(self, kind: str, *, actor: str, subject: str,
               detail: dict[str, Any] | None = None, at: float | None = None) -> AuditRecord:
        """Durably append one record and return it."""
        [record] = self.append_many([AuditEntry(kind, actor, subject, detail or {}, at)])
        return record

    def append_many(self, entries: Iterable[AuditEntry]) -> list[AuditRecord]:
        """Durably append records in order, in one transaction, after every record any
        gateway committed before."""
        prepared = [(e.kind, e.actor, e.subject, canonical_detail(e.detail), e.at)
                    for e in entries]
        if not prepared:
            return []
        with self._lock:
            for attempt, pause in enumerate((*_RETRY_PAUSES_S, None)):
                try:
                    return self._append(prepared)
                except psycopg.OperationalError as exc:
                    # The connection (or the server) went away: the transaction did not
                    # commit, so the batch is retried whole on a new connection.
                    if self._conn is not None:
                        self._conn.close()
                    self._conn = None
                    if pause is None:
                        raise AuditError(f"audit append failed: {exc}") from None
                    _LOGGER.warning("audit append failed (attempt %d), retrying: %s",
                                    attempt + 1, exc)
                    time.sleep(pause)
                except psycopg.Error as exc:
                    raise AuditError(f"audit append failed: {exc}") from None
        raise AssertionError("unreachable")

    def _append(self, prepared: list[tuple[str, str, str, str, float | None]]
                ) -> list[AuditRecord]:
        conn = self._connection()
        with conn.transaction():
            head = conn.execute(
                "SELECT seq, hash FROM trygg_audit_head WHERE id = 1 FOR UPDATE"
            ).fetchone()
            if head is None:
                raise AuditError("audit head is missing; run `trygg audit verify`")
            seq, prev = int(head[0]), str(head[1])
            records: list[AuditRecord] = []
            for kind, actor, subject, detail_json, at in prepared:
                seq += 1
                # Taken under the lock, so times follow the chain's order on one clock.
                time_us = _to_us(time.time() if at is None else at)
                digest = record_hash(seq, time_us, kind, actor, subject, detail_json, prev)
                records.append(
                    AuditRecord(seq, time_us, kind, actor, subject, detail_json, prev, digest))
                prev = digest
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO trygg_audit ({_COLUMNS}, gateway_id)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [(r.seq, r.time_us, r.kind, r.actor, r.subject, r.detail_json,
                      r.prev_hash, r.hash, self.gateway_id) for r in records],
                )
            conn.execute("UPDATE trygg_audit_head SET seq = %s, hash = %s WHERE id = 1",
                         (seq, prev))
        return records

    def head(self) -> Head:
        """The current head of the cluster's chain, to export as an external anchor."""
        with self._lock:
            try:
                found = self._connection().execute(
                    "SELECT seq, hash FROM trygg_audit_head WHERE id = 1").fetchone()
            except psycopg.Error as exc:
                raise AuditError(f"cannot read the audit head: {exc}") from None
        if found is None:
            raise AuditError("audit head is missing; run `trygg audit verify`")
        return Head(int(found[0]), str(found[1]))

    def records(self, *, from_seq: int = 1) -> Iterator[AuditRecord]:
        """Records in seq order, starting at ``from_seq``. Not verified: use ``verify``."""
        batch = 1000
        next_seq = from_seq
        while True:
            with self._lock:
                rows = self._connection().execute(
                    f"SELECT {_COLUMNS} FROM trygg_audit WHERE seq >= %s ORDER BY seq LIMIT %s",
                    (next_seq, batch),
                ).fetchall()
            for row in rows:
                yield AuditRecord(*row)
            if len(rows) < batch:
                return
            next_seq = int(rows[-1][0]) + 1


class _PgSource:
    """``gateway.audit.AuditSource`` inside one repeatable-read transaction."""

    def __init__(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        self.conn = conn

    def head_row(self) -> tuple[Any, ...] | None:
        table = self.conn.execute("SELECT to_regclass('trygg_audit_head')").fetchone()
        if table is None or table[0] is None:
            return None  # reported as a head mismatch
        found = self.conn.execute("SELECT seq, hash FROM trygg_audit_head WHERE id = 1"
                                  ).fetchone()
        return None if found is None else (int(found[0]), str(found[1]))

    def rows(self) -> Iterator[tuple[Any, ...]]:
        # A server-side cursor: a log of millions of records streams, it is not loaded.
        with self.conn.cursor(name="trygg_audit_verify") as cur:
            cur.itersize = 2000
            cur.execute(f"SELECT {_COLUMNS} FROM trygg_audit ORDER BY seq")
            for row in cur:
                yield (int(row[0]), int(row[1]), *row[2:])

    def seq_with_hash(self, digest: str) -> int | None:
        found = self.conn.execute("SELECT seq FROM trygg_audit WHERE hash = %s LIMIT 1",
                                  (digest,)).fetchone()
        return None if found is None else int(found[0])

    def row_after(self, seq: int) -> tuple[Any, ...] | None:
        found = self.conn.execute(
            f"SELECT {_COLUMNS} FROM trygg_audit WHERE seq > %s ORDER BY seq LIMIT 1", (seq,)
        ).fetchone()
        return None if found is None else (int(found[0]), int(found[1]), *found[2:])

    def hash_at(self, seq: int) -> str | None:
        found = self.conn.execute("SELECT hash FROM trygg_audit WHERE seq = %s",
                                  (seq,)).fetchone()
        return None if found is None else str(found[0])


def verify_pg(dsn: str, *, anchor: Head | None = None) -> VerifyResult:
    """Verify the cluster's chain in the database; raises ``AuditUnreadable`` if there is
    none. Reads one snapshot (repeatable read), so gateways may append meanwhile."""
    try:
        conn = psycopg.connect(dsn, connect_timeout=10)
    except psycopg.Error as exc:
        raise AuditUnreadable(f"cannot connect to the audit database: {exc}") from None
    try:
        with conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            table = conn.execute("SELECT to_regclass('trygg_audit')").fetchone()
            if table is None or table[0] is None:
                raise AuditUnreadable("the database has no audit log (table trygg_audit)")
            return verify_source(_PgSource(conn), anchor)
    except psycopg.Error as exc:
        raise AuditUnreadable(f"the audit log could not be read: {exc}") from None
    finally:
        conn.close()
