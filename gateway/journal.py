"""The alarm journal: the append-only source of truth.

``Journal`` is the port; ``SqliteJournal`` the embedded adapter. Appends are group-committed:
a single writer thread takes every batch queued since its last commit and writes them in one
transaction, so one fsync covers many alarms under load while a lone alarm still commits at
once. ``append`` returns only after the commit is durable (WAL with ``synchronous=FULL``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, TypeAlias

from alarms.records import Record, from_json, to_json

_LOGGER = logging.getLogger(__name__)

# Upper bound of batches folded into one transaction: large enough to amortise the fsync at
# tens of thousands of alarms per second, small enough that one commit stays in milliseconds.
MAX_GROUP = 512


class JournalError(Exception):
    """The journal could not durably store a batch. Nothing of that batch may be acked."""


class DuplicateAlarmError(JournalError):
    """The batch claims a (device, ref) that another alarm already holds: nothing stored.

    Raised when another gateway (or an earlier batch) stored the same device message first.
    The device's alarm *is* stored, as ``alarm_id``: the caller acks it as stored.
    """

    def __init__(self, device_id: str, ref: str, alarm_id: str | None) -> None:
        super().__init__(
            f"({device_id!r}, {ref!r}) is already stored as alarm {alarm_id or '?'}"
        )
        self.device_id = device_id
        self.ref = ref
        self.alarm_id = alarm_id


class ConflictError(JournalError):
    """The batch was decided on a stale view of an alarm: nothing of it was stored.

    Optimistic concurrency (cf. eventsourcing): a batch may say how many records each
    existing alarm it touches had when it was decided (``expect``). When another writer
    (another gateway, or an earlier batch) added records to that alarm meanwhile, the batch
    is refused as a whole; the caller catches up and decides again on fresh state.
    """

    def __init__(self, alarm_id: str, expected: int, found: int) -> None:
        super().__init__(
            f"alarm {alarm_id} has {found} journal records, the decision expected {expected}"
        )
        self.alarm_id = alarm_id
        self.expected = expected
        self.found = found


# Alarm id -> number of journal records the alarm had when the batch was decided.
Expectations: TypeAlias = Mapping[str, int]


class Journal(Protocol):
    """The journal port (SQLite here; PostgreSQL implements the same contract)."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def submit(
        self, records: Sequence[Record], expect: Expectations | None = None
    ) -> asyncio.Future[None]:
        """Queue records for the next group commit; the future resolves once durable.

        With ``expect``, the batch is stored only if every alarm named there has exactly
        that many records at commit time; else the future fails with ``ConflictError``
        and nothing of the batch is stored (other batches of the group are unaffected).
        """
        ...

    async def append(self, records: Sequence[Record]) -> None:
        """Durably append records, in order, as one unit."""
        ...

    async def load(self) -> list[Record]:
        """Every record, in journal order (for replay)."""
        ...

    async def wait(self) -> None:
        """Until the journal's writer ends (on close; if it dies, the gateway must stop)."""
        ...


# Called by the writer thread after each commit with (seconds taken, batches folded in).
CommitObserver: TypeAlias = Callable[[float, int], None]

_Item = tuple[
    Sequence[Record], Expectations | None, asyncio.Future[None], asyncio.AbstractEventLoop
]
_STOP = object()


class SqliteJournal:
    """The journal in one SQLite file. Reusable, not re-entrant."""

    def __init__(
        self, path: Path, *, on_commit: CommitObserver | None = None
    ) -> None:
        self.path = path
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[_Item | object] = queue.SimpleQueue()
        self._writer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # Set by tests (and by operators through nothing else): simulate a journal that
        # refuses writes, e.g. a full disk, without touching file permissions as root.
        self.fail_writes: Callable[[], bool] | None = None

    async def __aenter__(self) -> Self:
        if self._lock.locked():
            raise RuntimeError("SqliteJournal is not re-entrant")
        await self._lock.acquire()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = await asyncio.to_thread(self._connect)
        except BaseException:
            self._lock.release()
            raise
        self._writer = asyncio.create_task(
            asyncio.to_thread(self._write_loop, conn), name=f"journal writer {self.path.name}"
        )
        return self

    async def wait(self) -> None:
        """Until the writer thread ends (on close; if it dies, the gateway must stop)."""
        assert self._writer is not None
        await asyncio.shield(self._writer)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._queue.put(_STOP)
        if self._writer is not None:
            # The writer drains what was queued before the stop marker, then closes.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._writer)
            self._writer = None
        self._lock.release()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit. An ack promises the alarm survives a
        # power cut, not just a process crash.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS journal ("
            " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " alarm_id TEXT NOT NULL,"
            " written_at REAL NOT NULL,"
            " body TEXT NOT NULL)"
        )
        conn.execute("CREATE INDEX IF NOT EXISTS journal_alarm ON journal(alarm_id)")
        return conn

    def submit(
        self, records: Sequence[Record], expect: Expectations | None = None
    ) -> asyncio.Future[None]:
        """Queue records for the next group commit; the future resolves once durable."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if self._writer is None or self._writer.done():
            future.set_exception(JournalError("journal is not open"))
            return future
        self._queue.put((records, expect or None, future, loop))
        return future

    async def append(self, records: Sequence[Record]) -> None:
        """Durably append records, in order, as one unit."""
        await self.submit(records)

    async def load(self) -> list[Record]:
        """Every record, in journal order."""
        return await asyncio.to_thread(self._load)

    def _load(self) -> list[Record]:
        conn = sqlite3.connect(self.path)
        try:
            rows = conn.execute("SELECT body FROM journal ORDER BY seq").fetchall()
        finally:
            conn.close()
        return [from_json(body) for (body,) in rows]

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        try:
            stop = False
            while not stop:
                first = self._queue.get()
                if first is _STOP:
                    break
                group: list[_Item] = [first]  # type: ignore[list-item]
                while len(group) < MAX_GROUP:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    group.append(item)  # type: ignore[arg-type]
                self._commit(conn, group)
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, group: list[_Item]) -> None:
        started = time.perf_counter()
        error: BaseException | None = None
        conflicts: dict[int, ConflictError] = {}
        try:
            if self.fail_writes is not None and self.fail_writes():
                raise sqlite3.OperationalError("database or disk is full (simulated)")
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            # Runs of batches without expectations go in one executemany; a batch with
            # expectations is checked against what the transaction holds so far (earlier
            # batches of this group included) and written alone.
            rows: list[tuple[str, float, str]] = []
            for index, (records, expect, _, _) in enumerate(group):
                if expect:
                    self._insert(conn, rows)
                    rows = []
                    conflict = _check(conn, expect)
                    if conflict is not None:
                        conflicts[index] = conflict
                        continue
                rows.extend((r.alarm_id, now, to_json(r)) for r in records)
            self._insert(conn, rows)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            _LOGGER.error("journal commit of %d batch(es) failed: %s", len(group), exc)
            error = exc
        elapsed = time.perf_counter() - started
        if error is None and self._on_commit is not None:
            self._on_commit(elapsed, len(group))
        for index, (_, _, future, loop) in enumerate(group):
            outcome = conflicts.get(index, error)
            loop.call_soon_threadsafe(_settle, future, outcome)

    @staticmethod
    def _insert(conn: sqlite3.Connection, rows: list[tuple[str, float, str]]) -> None:
        if rows:
            conn.executemany(
                "INSERT INTO journal (alarm_id, written_at, body) VALUES (?, ?, ?)", rows
            )


def _check(conn: sqlite3.Connection, expect: Expectations) -> ConflictError | None:
    ids = list(expect)
    marks = ",".join("?" * len(ids))
    found: Counter[str] = Counter(
        dict(conn.execute(
            f"SELECT alarm_id, count(*) FROM journal WHERE alarm_id IN ({marks})"
            " GROUP BY alarm_id",
            ids,
        ).fetchall())
    )
    for alarm_id, expected in expect.items():
        if found[alarm_id] != expected:
            return ConflictError(alarm_id, expected, found[alarm_id])
    return None


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    elif isinstance(error, JournalError):
        future.set_exception(error)
    else:
        future.set_exception(JournalError(f"journal write failed: {error}"))
