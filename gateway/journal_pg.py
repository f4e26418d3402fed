"""The alarm journal in PostgreSQL, for several gateways sharing one database.

``PostgresJournal`` implements the ``Journal`` port of ``gateway.journal`` with psycopg 3
(async) and a small connection pool. It keeps the SQLite adapter's promises:

- **Group commit.** One writer task takes every batch queued since its last commit and
  writes them in one transaction; ``submit`` returns a future that resolves after COMMIT.
- **Commit order.** Every commit first takes a transaction-scoped advisory lock, so commits
  from all gateways are serialised and ``seq`` (a sequence) grows in commit order. ``load``
  returns records by ``seq``. [1]
- **Append-only.** Triggers refuse UPDATE, DELETE and TRUNCATE on the journal tables;
  retention is done by detaching and archiving whole monthly partitions.
- **Partitioned by month** on ``written_at``. Partitions are created ahead (see
  ``PARTITION_MONTHS_AHEAD``) when the journal opens and again by the writer when the last
  partition comes within ``PARTITION_REFRESH_S`` of now. There is no default partition. [2]
- **Dedupe across gateways.** Every (device_id, ref) stored as or attached to an alarm is
  claimed in ``trygg_alarm_refs`` with the primary key (device_id, ref, generation) and the
  message's content key. A claim that is a resend of the latest one by
  ``alarms.dedupe.is_resend`` (same content, and that alarm open or stored within the resend
  window: exactly the core's rule) fails its batch with ``DuplicateAlarmError``, and the
  other batches of the same group still commit; any other claim takes the next generation.
  [3]
- **Optimistic concurrency.** A batch's ``expect`` (records per alarm when it was decided)
  is checked under the commit lock; a stale batch fails alone with ``ConflictError``.
- **Followable.** Every commit notifies ``JOURNAL_CHANNEL``; ``follow`` returns the records
  other gateways committed since the last call (or since ``load``), in commit order, so
  every gateway's in-memory state converges on the shared journal.

[1] With several writers a plain sequence is allocation order, not commit order: a reader
    could see seq 11 before seq 10 commits and skip 10 for good. The lock makes the two
    the same at the price of serialising commits across gateways; group commit keeps the
    number of commits small.
[2] A default partition would catch rows outside every range, but a later CREATE of the
    matching month then fails. Creating months ahead is simpler and fails loudly
    (``JournalError``) rather than silently if maintenance ever lapses for months.
[3] A unique index on a partitioned table must include the partition key, so "one alarm
    per (device, ref)" cannot live on the journal itself; it lives in an unpartitioned,
    equally append-only side table written in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeAlias

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from alarms.dedupe import Claim, is_resend
from alarms.records import (
    AlarmOpened,
    CentreConfirmation,
    DeviceNoted,
    Escalated,
    HopAdded,
    NotificationRecorded,
    OwnerChanged,
    PositionAdded,
    Record,
    RefAttached,
    from_json,
    to_json,
)
from gateway.journal import (
    MAX_GROUP,
    CommitObserver,
    ConflictError,
    DuplicateAlarmError,
    Expectations,
    JournalError,
    claims_in,
    closed_in,
    count_expected,
)

__all__ = [
    "JOURNAL_CHANNEL",
    "MIGRATIONS",
    "DuplicateAlarmError",
    "PostgresJournal",
    "ensure_partitions",
    "migrate",
]

_LOGGER = logging.getLogger(__name__)

# Months of partitions kept ready beyond the current one. Three months means the gateway
# can run a quarter without ever creating a table, and a forgotten maintenance step shows
# up long before inserts fail.
PARTITION_MONTHS_AHEAD = 3
# The writer re-runs partition maintenance when the last partition ends within this long.
PARTITION_REFRESH_S = 40 * 24 * 3600.0

# How long ``__aenter__`` waits for a first connection before giving up.
CONNECT_TIMEOUT_S = 10.0
# Writer plus one concurrent ``load``: the journal needs no more connections than that.
POOL_MAX = 2


def lock_key(name: str) -> int:
    """A stable 63-bit advisory lock key for a name (CRC32 keeps it readable in pg_locks)."""
    return zlib.crc32(f"trygg:{name}".encode())


# Serialises schema changes (migrations, partition creation) across gateways.
MIGRATION_LOCK = lock_key("migrate")
# Serialises journal commits across gateways, so that seq order is commit order.
COMMIT_LOCK = lock_key("journal-commit")
# NOTIFY channel: every commit announces itself (payload: the writing gateway's id).
JOURNAL_CHANNEL = "trygg_journal"

APPEND_ONLY_FUNCTION = """
CREATE OR REPLACE FUNCTION trygg_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'trygg: % on % refused: the table is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""


def _append_only(table: str) -> list[str]:
    return [
        f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table}"
        " FOR EACH ROW EXECUTE FUNCTION trygg_append_only()",
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}"
        " FOR EACH STATEMENT EXECUTE FUNCTION trygg_append_only()",
    ]


# Versioned, forward-only migrations per component. Never edit a released version: append.
MIGRATIONS: dict[str, list[list[str]]] = {
    "journal": [
        # 1: the partitioned journal, the dedupe claims, closed alarms, append-only guards.
        [
            "CREATE SEQUENCE trygg_journal_seq AS bigint",
            "CREATE TABLE trygg_journal ("
            " seq bigint NOT NULL DEFAULT nextval('trygg_journal_seq'),"
            " written_at timestamptz NOT NULL DEFAULT now(),"
            " gateway_id text NOT NULL,"
            " alarm_id text NOT NULL,"
            " kind text NOT NULL,"
            " body text NOT NULL,"
            " PRIMARY KEY (seq, written_at)"
            ") PARTITION BY RANGE (written_at)",
            "ALTER SEQUENCE trygg_journal_seq OWNED BY trygg_journal.seq",
            "CREATE INDEX trygg_journal_alarm ON trygg_journal (alarm_id)",
            "CREATE TABLE trygg_alarm_refs ("
            " device_id text NOT NULL,"
            " ref text NOT NULL,"
            " generation integer NOT NULL CHECK (generation >= 0),"
            " alarm_id text NOT NULL,"
            " kind text NOT NULL CHECK (kind IN ('opened', 'attached')),"
            " alarm_opened_at double precision NOT NULL,"
            " gateway_id text NOT NULL,"
            " written_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (device_id, ref, generation)"
            ")",
            "CREATE INDEX trygg_alarm_refs_alarm ON trygg_alarm_refs (alarm_id)",
            "CREATE TABLE trygg_alarm_closed ("
            " alarm_id text PRIMARY KEY,"
            " closed_at double precision NOT NULL,"
            " written_at timestamptz NOT NULL DEFAULT now()"
            ")",
            APPEND_ONLY_FUNCTION,
            *_append_only("trygg_journal"),
            *_append_only("trygg_alarm_refs"),
            *_append_only("trygg_alarm_closed"),
        ],
        # 2: claims carry the message's content key and when it was stored, for the resend
        # rule of alarms.dedupe (NULL on older claims: they never count as a resend).
        [
            "ALTER TABLE trygg_alarm_refs ADD COLUMN content text",
            "ALTER TABLE trygg_alarm_refs ADD COLUMN stored_at double precision",
        ],
    ],
    "leases": [
        # 1: one row per lease name; rows are updated in place (leases are not an audit log).
        [
            "CREATE TABLE trygg_leases ("
            " name text PRIMARY KEY,"
            " owner text,"
            " token bigint NOT NULL DEFAULT 0,"
            " acquired_at timestamptz,"
            " expires_at timestamptz NOT NULL DEFAULT '-infinity'"
            ")",
        ],
    ],
    "cluster": [
        # 1: which staff have a client connected to which gateway (gateway.cluster).
        [
            "CREATE TABLE trygg_presence ("
            " gateway_id text PRIMARY KEY,"
            " staff text[] NOT NULL,"
            " expires_at timestamptz NOT NULL"
            ")",
            # The organisation as the gateways changed it: the latest state per entity
            # (a deletion keeps its row with a NULL body), numbered in change order. One
            # row per entity, overwritten in place: erasing a recipient's personal data
            # leaves no older copy here.
            "CREATE SEQUENCE trygg_org_seq AS bigint",
            "CREATE TABLE trygg_org ("
            " kind text NOT NULL,"
            " id text NOT NULL,"
            " seq bigint NOT NULL,"
            " gateway_id text NOT NULL,"
            " body text,"
            " changed_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (kind, id)"
            ")",
            "CREATE INDEX trygg_org_by_seq ON trygg_org (seq)",
        ],
    ],
}


class SchemaError(JournalError):
    """The database schema is newer than this code, or a migration failed."""


async def migrate(
    conn: psycopg.AsyncConnection[Any], component: str, *, applied_by: str = ""
) -> list[int]:
    """Bring ``component``'s schema up to date; returns the versions applied now.

    Idempotent and safe when several gateways start at once: everything runs in one
    transaction under a transaction-scoped advisory lock, so a second migrator waits and
    then finds nothing to do. ``conn`` must be in autocommit mode (no open transaction).
    """
    steps = MIGRATIONS[component]
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS trygg_schema ("
            " component text NOT NULL,"
            " version integer NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),"
            " applied_by text NOT NULL DEFAULT '',"
            " PRIMARY KEY (component, version))"
        )
        cur = await conn.execute(
            "SELECT coalesce(max(version), 0) FROM trygg_schema WHERE component = %s",
            (component,),
        )
        row = await cur.fetchone()
        current = int(row[0]) if row is not None else 0
        if current > len(steps):
            raise SchemaError(
                f"database schema {component!r} is at version {current}, newer than this "
                f"gateway's {len(steps)}: upgrade the gateway"
            )
        for version in range(current + 1, len(steps) + 1):
            for statement in steps[version - 1]:
                await conn.execute(statement.encode())
            await conn.execute(
                "INSERT INTO trygg_schema (component, version, applied_by) VALUES (%s, %s, %s)",
                (component, version, applied_by),
            )
            applied.append(version)
    if applied:
        _LOGGER.info("migrated %s schema to version %d", component, applied[-1])
    return applied


def _month_start(year: int, month: int) -> datetime:
    year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    return datetime(year, month, 1, tzinfo=UTC)


def partition_name(start: datetime) -> str:
    """The partition holding the month that begins at ``start``: ``trygg_journal_YYYYMM``."""
    return f"trygg_journal_{start.year:04d}{start.month:02d}"


async def ensure_partitions(
    conn: psycopg.AsyncConnection[Any],
    *,
    at: datetime | None = None,
    months_ahead: int = PARTITION_MONTHS_AHEAD,
) -> datetime:
    """Create the monthly partitions from ``at``'s month (default: the server's now) on.

    Idempotent and safe concurrently (same advisory lock as migrations). Returns the end of
    the last partition, i.e. the first instant no partition covers yet.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        if at is None:
            cur = await conn.execute("SELECT now()")
            row = await cur.fetchone()
            assert row is not None
            at = row[0]
        assert at is not None
        at = at.astimezone(UTC)
        end = _month_start(at.year, at.month)
        for offset in range(months_ahead + 1):
            start = _month_start(at.year, at.month + offset)
            end = _month_start(at.year, at.month + offset + 1)
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} PARTITION OF trygg_journal"
                    " FOR VALUES FROM ({}) TO ({})"
                ).format(sql.Identifier(partition_name(start)), start, end)
            )
    return end


# The ``kind`` column: the same names as the JSON codec's, for queries and partition stats.
_KIND: dict[type[Any], str] = {
    AlarmOpened: "opened",
    HopAdded: "hop",
    Escalated: "escalated",
    CentreConfirmation: "centre_confirmed",
    OwnerChanged: "owner",
    RefAttached: "attached",
    PositionAdded: "position",
    DeviceNoted: "device_noted",
    NotificationRecorded: "notification",
}

_INSERT_RECORD = (
    "INSERT INTO trygg_journal (gateway_id, alarm_id, kind, body) VALUES (%s, %s, %s, %s)"
    " RETURNING seq"
)
_COUNT_RECORDS = (
    "SELECT alarm_id, count(*) FROM trygg_journal WHERE alarm_id = ANY(%s::text[])"
    " GROUP BY alarm_id"
)
_FOLLOW = "SELECT seq, gateway_id, body FROM trygg_journal WHERE seq > %s ORDER BY seq LIMIT %s"
# Rows fetched per ``follow`` query; ``follow`` loops until it has read everything.
FOLLOW_BATCH = 5000
_OPENED_AT_ANY = (
    "SELECT alarm_id, alarm_opened_at FROM trygg_alarm_refs"
    " WHERE alarm_id = ANY(%s::text[]) AND kind = 'opened'"
)
# The latest claim of each (device, ref) given as two parallel arrays.
_LATEST_CLAIMS = (
    "SELECT DISTINCT ON (r.device_id, r.ref) r.device_id, r.ref, r.generation, r.alarm_id,"
    " r.content, coalesce(r.stored_at, r.alarm_opened_at), c.alarm_id IS NULL"
    " FROM trygg_alarm_refs r"
    " JOIN unnest(%s::text[], %s::text[]) AS k(device_id, ref)"
    " ON r.device_id = k.device_id AND r.ref = k.ref"
    " LEFT JOIN trygg_alarm_closed c ON c.alarm_id = r.alarm_id"
    " ORDER BY r.device_id, r.ref, r.generation DESC"
)
_INSERT_CLAIM = (
    "INSERT INTO trygg_alarm_refs"
    " (device_id, ref, generation, alarm_id, kind, alarm_opened_at, gateway_id, content,"
    " stored_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_INSERT_CLOSED = (
    "INSERT INTO trygg_alarm_closed (alarm_id, closed_at) VALUES (%s, %s)"
    " ON CONFLICT (alarm_id) DO NOTHING"
)

PgConnection: TypeAlias = psycopg.AsyncConnection[tuple[Any, ...]]


@dataclass(slots=True)
class _Item:
    records: Sequence[Record]
    future: asyncio.Future[None]
    expect: Expectations | None = None


_STOP = object()


class PostgresJournal:
    """The journal in PostgreSQL, shared by gateways. Reusable, not re-entrant.

    ``gateway_id`` is written on every row (who stored it). ``on_commit`` is called on the
    event loop after each commit with (seconds taken, batches folded in).
    """

    def __init__(
        self,
        dsn: str,
        *,
        gateway_id: str,
        on_commit: CommitObserver | None = None,
    ) -> None:
        self.dsn = dsn
        self.gateway_id = gateway_id
        self._on_commit = on_commit
        self._queue: asyncio.Queue[_Item | object] = asyncio.Queue()
        self._pool: AsyncConnectionPool[PgConnection] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # Epoch seconds up to which partitions exist (as far as this process knows).
        self._partitions_until = 0.0
        # The highest seq this process has read (``load``/``follow``), and the seqs it wrote
        # itself and has not yet passed while following: those are applied by the caller
        # from the commit futures, so ``follow`` skips them. Held during a commit and while
        # ``follow`` sorts rows, so a row is never seen as foreign just before its writer
        # records it as its own.
        self.head = 0
        self._own: set[int] = set()
        self._committing = asyncio.Lock()
        # Set by tests: simulate a database that refuses writes (full disk, read-only
        # standby) without touching the server.
        self.fail_writes: Callable[[], bool] | None = None

    async def __aenter__(self) -> Self:
        if self._lock.locked():
            raise RuntimeError("PostgresJournal is not re-entrant")
        await self._lock.acquire()
        try:
            pool: AsyncConnectionPool[PgConnection] = AsyncConnectionPool(
                self.dsn,
                min_size=1,
                max_size=POOL_MAX,
                open=False,
                kwargs={"autocommit": True},
                name=f"journal {self.gateway_id}",
                timeout=CONNECT_TIMEOUT_S,
            )
            try:
                await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
                async with pool.connection() as conn:
                    await migrate(conn, "journal", applied_by=self.gateway_id)
                    until = await ensure_partitions(conn)
            except BaseException:
                await pool.close()
                raise
        except (psycopg.Error, PoolTimeout) as exc:
            self._lock.release()
            raise JournalError(f"cannot open the PostgreSQL journal: {exc}") from exc
        except BaseException:
            self._lock.release()
            raise
        self._pool = pool
        self._partitions_until = until.timestamp()
        self._queue = asyncio.Queue()
        self._writer = asyncio.create_task(
            self._write_loop(pool), name=f"journal writer {self.gateway_id}"
        )
        return self

    async def wait(self) -> None:
        """Until the writer ends (on close; if it dies, the gateway must stop)."""
        assert self._writer is not None
        await asyncio.shield(self._writer)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._writer is not None:
                self._queue.put_nowait(_STOP)
                # The writer drains what was queued before the stop marker, then ends.
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(self._writer)
                self._writer = None
            # Submitted after the stop marker: never written, so refused, never left hanging.
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if isinstance(item, _Item):
                    _settle(item.future, JournalError("journal closed before the commit"))
            if self._pool is not None:
                await self._pool.close()
                self._pool = None
        finally:
            self._lock.release()

    def submit(
        self, records: Sequence[Record], expect: Expectations | None = None
    ) -> asyncio.Future[None]:
        """Queue records for the next group commit; the future resolves once durable.

        It fails with ``DuplicateAlarmError`` when the batch opens or attaches a
        (device, ref) already stored, with ``ConflictError`` when ``expect`` no longer
        holds, and with ``JournalError`` when the commit failed.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._writer is None or self._writer.done():
            future.set_exception(JournalError("journal is not open"))
            return future
        self._queue.put_nowait(_Item(records, future, expect or None))
        return future

    async def append(self, records: Sequence[Record]) -> None:
        """Durably append records, in order, as one unit."""
        await self.submit(records)

    async def load(self) -> list[Record]:
        """Every record, in commit order (``seq``), from every gateway.

        Also sets ``head``: ``follow`` continues from here.
        """
        query = "SELECT seq, body FROM trygg_journal ORDER BY seq"
        try:
            if self._pool is not None:
                async with self._pool.connection() as conn:
                    rows = await (await conn.execute(query)).fetchall()
            else:
                async with await psycopg.AsyncConnection.connect(
                    self.dsn, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_S)
                ) as conn:
                    rows = await (await conn.execute(query)).fetchall()
        except (psycopg.Error, PoolTimeout) as exc:
            raise JournalError(f"cannot read the PostgreSQL journal: {exc}") from exc
        if rows:
            self.head = max(self.head, int(rows[-1][0]))
        return [from_json(body) for (_, body) in rows]

    async def follow(self) -> list[Record]:
        """The records other writers committed since ``load`` or the last ``follow``.

        In commit order. Rows this journal object wrote itself are skipped: their records
        reach the caller through the commit futures. A row of ours whose commit reported a
        failure (the connection broke during COMMIT, yet the server committed) is *not*
        ours in that sense and is returned, so that nothing committed is ever missed.
        Not safe to call concurrently with itself.
        """
        if self._pool is None:
            raise JournalError("journal is not open")
        found: list[Record] = []
        while True:
            try:
                async with self._pool.connection() as conn:
                    cur = await conn.execute(_FOLLOW, (self.head, FOLLOW_BATCH))
                    rows = await cur.fetchall()
            except (psycopg.Error, PoolTimeout) as exc:
                raise JournalError(f"cannot follow the PostgreSQL journal: {exc}") from exc
            if not rows:
                return found
            async with self._committing:
                for seq, _, body in rows:
                    if seq in self._own:
                        self._own.discard(seq)
                    else:
                        found.append(from_json(body))
                self.head = max(self.head, int(rows[-1][0]))
            if len(rows) < FOLLOW_BATCH:
                return found

    # -- the writer ------------------------------------------------------------------------

    async def _write_loop(self, pool: AsyncConnectionPool[PgConnection]) -> None:
        while True:
            first = await self._queue.get()
            if first is _STOP:
                return
            assert isinstance(first, _Item)
            group = [first]
            stop = False
            while len(group) < MAX_GROUP:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if item is _STOP:
                    stop = True
                    break
                assert isinstance(item, _Item)
                group.append(item)
            try:
                await self._commit(pool, group)
            except asyncio.CancelledError:
                for item in group:
                    _settle(item.future, JournalError("journal closed during commit"))
                raise
            if stop:
                return

    async def _commit(
        self, pool: AsyncConnectionPool[PgConnection], group: list[_Item]
    ) -> None:
        started = time.perf_counter()
        outcomes: list[JournalError | None] = [None] * len(group)
        try:
            async with pool.connection() as conn, self._committing:
                if time.time() > self._partitions_until - PARTITION_REFRESH_S:
                    until = await ensure_partitions(conn)
                    self._partitions_until = until.timestamp()
                written: list[int] = []
                async with conn.transaction():
                    if self.fail_writes is not None and self.fail_writes():
                        raise psycopg.errors.DiskFull(
                            "could not extend file: No space left on device (simulated)"
                        )
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (COMMIT_LOCK,))
                    now = time.time()
                    # The whole group in one pass under the lock (as in the SQLite journal):
                    # the claims and record counts it depends on are read once, every batch
                    # is checked against them plus this group's earlier batches, and what
                    # holds is written with one statement per table.
                    view = await _GroupView.read(conn, group, now)
                    rows: list[tuple[str, str, str, str]] = []
                    for index, item in enumerate(group):
                        outcomes[index] = view.take(item.records, item.expect, now,
                                                    self.gateway_id)
                        if outcomes[index] is None:
                            rows.extend((self.gateway_id, r.alarm_id, _KIND[type(r)],
                                         to_json(r)) for r in item.records)
                    written.extend(await view.write(conn, rows))
                    if written:
                        # Delivered to listeners when (and only if) the transaction commits.
                        await conn.execute(
                            "SELECT pg_notify(%s, %s)", (JOURNAL_CHANNEL, self.gateway_id)
                        )
                # Committed: these rows are ours; ``follow`` skips them.
                self._own.update(seq for seq in written if seq > self.head)
        except (psycopg.Error, PoolTimeout) as exc:
            _LOGGER.error("journal commit of %d batch(es) failed: %s", len(group), exc)
            error = JournalError(f"journal write failed: {exc}")
            for item in group:
                _settle(item.future, error)
            return
        if self._on_commit is not None:
            try:
                self._on_commit(time.perf_counter() - started, len(group))
            except Exception:  # a metrics hook must not stop the writer
                _LOGGER.exception("journal commit observer failed")
        for item, outcome in zip(group, outcomes, strict=True):
            _settle(item.future, outcome)


class _GroupView:
    """What one group commit may see: the database before it, plus its accepted batches."""

    def __init__(self) -> None:
        # (device, ref) -> (generation, claim, whether its alarm is open)
        self.latest: dict[tuple[str, str], tuple[int, Claim, bool]] = {}
        # Only these alarms' records are counted (count_expected).
        self.expected: frozenset[str] = frozenset()
        self.counts: Counter[str] = Counter()
        # alarm id -> when it was opened (for claims attached to it)
        self.opened_at: dict[str, float] = {}
        self.claims: list[tuple[Any, ...]] = []
        self.closed: list[tuple[str, float]] = []

    @classmethod
    async def read(cls, conn: PgConnection, group: list[_Item], now: float) -> _GroupView:
        view = cls()
        devices, refs, attached_to = [], [], set()
        for item in group:
            opened = {r.alarm_id for r in item.records if isinstance(r, AlarmOpened)}
            for claim in claims_in(item.records, now):
                devices.append(claim.device_id)
                refs.append(claim.ref)
                if claim.alarm_id not in opened:
                    attached_to.add(claim.alarm_id)
        if devices:
            cur = await conn.execute(_LATEST_CLAIMS, (devices, refs))
            for device_id, ref, generation, holder, content, stored_at, is_open in (
                await cur.fetchall()
            ):
                view.latest[(device_id, ref)] = (
                    int(generation), Claim(str(holder), content, float(stored_at)),
                    bool(is_open))
        if attached_to:
            cur = await conn.execute(_OPENED_AT_ANY, (sorted(attached_to),))
            view.opened_at.update({str(a): float(t) for a, t in await cur.fetchall()})
        view.expected = frozenset(a for item in group if item.expect for a in item.expect)
        expected = sorted(view.expected)
        if expected:
            cur = await conn.execute(_COUNT_RECORDS, (expected,))
            view.counts.update({str(a): int(n) for a, n in await cur.fetchall()})
        return view

    def take(self, records: Sequence[Record], expect: Expectations | None, now: float,
             gateway_id: str) -> JournalError | None:
        """Check one batch; if it holds, count it in (its claims, records and closes)."""
        for alarm_id, expected in (expect or {}).items():
            if self.counts[alarm_id] != expected:
                return ConflictError(alarm_id, expected, self.counts[alarm_id])
        claims = claims_in(records, now)
        opened = {r.alarm_id: r for r in records if isinstance(r, AlarmOpened)}
        generations: list[int] = []
        for claim in claims:
            held = self.latest.get((claim.device_id, claim.ref))
            if held is None:
                generations.append(0)
                continue
            generation, previous, is_open = held
            if claim.content is not None and is_resend(
                previous, claim.content, alarm_open=is_open, now=now
            ):
                return DuplicateAlarmError(claim.device_id, claim.ref, previous.alarm_id)
            generations.append(generation + 1)
        for claim, generation in zip(claims, generations, strict=True):
            kind = "opened" if claim.alarm_id in opened else "attached"
            if kind == "opened":
                self.opened_at[claim.alarm_id] = claim.stored_at
            opened_at = self.opened_at.get(claim.alarm_id, claim.stored_at)
            self.latest[(claim.device_id, claim.ref)] = (
                generation, Claim(claim.alarm_id, claim.content, claim.stored_at), True)
            self.claims.append((claim.device_id, claim.ref, generation, claim.alarm_id, kind,
                                opened_at, gateway_id, claim.content, claim.stored_at))
        count_expected(self.counts, self.expected, records)
        self.closed.extend(closed_in(records))
        return None

    async def write(self, conn: PgConnection, rows: list[tuple[str, str, str, str]]
                    ) -> list[int]:
        """The claims, closes and records of the accepted batches; the records' seqs."""
        async with conn.cursor() as cur:
            if self.claims:
                await cur.executemany(_INSERT_CLAIM, self.claims)
            if self.closed:
                await cur.executemany(_INSERT_CLOSED, self.closed)
            seqs: list[int] = []
            if rows:
                await cur.executemany(_INSERT_RECORD, rows, returning=True)
                while True:
                    row = await cur.fetchone()
                    if row is not None:
                        seqs.append(int(row[0]))
                    if not cur.nextset():
                        break
        return seqs


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
