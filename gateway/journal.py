"""The alarm journal: the append-only source of truth.

``Journal`` is the port; ``SqliteJournal`` the embedded adapter. Appends are group-committed:
a single writer thread takes every batch queued since its last commit and writes them in one
transaction, so one fsync covers many alarms under load while a lone alarm still commits at
once. ``append`` returns only after the commit is durable (WAL with ``synchronous=FULL``).

Every journal also keeps device messages exactly once: each (device, ref) a batch stores as
or attaches to an alarm is *claimed*, and a batch whose claim is a resend of a stored message
by ``alarms.dedupe.is_resend`` fails alone with ``DuplicateAlarmError`` (the contract suite,
tests/test_journal_contract.py, holds both adapters to it). The core applies the same rule
before it decides, so this is the backstop for what the core could not see: a resend decided
while its first copy was still on its way here, or (PostgreSQL) stored by another gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypeAlias

from alarms.dedupe import Claim, is_resend
from alarms.model import Hop
from alarms.records import AlarmOpened, HopAdded, Record, RefAttached, from_json, to_json
from gateway.sqlrows import insert_rows

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


@dataclass(frozen=True, slots=True)
class NewClaim:
    """A (device, ref) a batch stores: as an opened alarm or attached to one."""

    device_id: str
    ref: str
    alarm_id: str
    content: str | None
    stored_at: float


def claims_in(records: Sequence[Record], now: float) -> list[NewClaim]:
    """The claims of a batch, with the time the core compares against (``alarms.dedupe``):
    an opened alarm's ``stored`` hop, an attached ref's own time."""
    stored = {
        r.alarm_id: r.at for r in records if isinstance(r, HopAdded) and r.hop is Hop.STORED
    }
    claims: list[NewClaim] = []
    for record in records:
        if isinstance(record, AlarmOpened):
            claims.append(NewClaim(record.device_id, record.ref, record.alarm_id,
                                   record.content, stored.get(record.alarm_id, now)))
        elif isinstance(record, RefAttached):
            claims.append(NewClaim(record.device_id, record.ref, record.alarm_id,
                                   record.content, record.at))
    return claims


def closed_in(records: Sequence[Record]) -> list[tuple[str, float]]:
    """(alarm id, time) of every alarm a batch closes."""
    return [
        (r.alarm_id, r.at) for r in records if isinstance(r, HopAdded) and r.hop is Hop.CLOSED
    ]


def count_expected(counts: Counter[str], expected: Collection[str],
                   records: Sequence[Record]) -> None:
    """Count a batch's records into ``counts``, only for the alarms in ``expected``.

    A group commit compares record counts only for alarms some batch has expectations on;
    counting every record of a storm cost 3 % of its CPU.
    """
    if expected:
        for record in records:
            if record.alarm_id in expected:
                counts[record.alarm_id] += 1


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
        fresh = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'claims'"
        ).fetchone() is None
        conn.execute(
            "CREATE TABLE IF NOT EXISTS claims ("
            " device_id TEXT NOT NULL,"
            " ref TEXT NOT NULL,"
            " generation INTEGER NOT NULL,"
            " alarm_id TEXT NOT NULL,"
            " content TEXT,"
            " stored_at REAL NOT NULL,"
            " PRIMARY KEY (device_id, ref, generation))"
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS closed (alarm_id TEXT PRIMARY KEY, closed_at REAL)"
        )
        if fresh:
            # A journal written before claims existed: claim what it holds, once, so that
            # its device messages stay exactly-once across the upgrade.
            _backfill_claims(conn)
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
        conflicts: dict[int, JournalError] = {}
        try:
            if self.fail_writes is not None and self.fail_writes():
                raise sqlite3.OperationalError("database or disk is full (simulated)")
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            # The whole group in one pass: what the database holds is read once (the latest
            # claim of every (device, ref) the group claims, the record count of every alarm
            # a batch has expectations on), each batch is checked against that plus what the
            # earlier batches of this group add, and the rows, claims and closes are written
            # with one executemany each. A refused batch adds nothing.
            view = _GroupView(conn, group, now)
            rows: list[tuple[str, float, str]] = []
            for index, (records, expect, _, _) in enumerate(group):
                refusal = view.take(records, expect, now)
                if refusal is not None:
                    conflicts[index] = refusal
                    continue
                rows.extend((r.alarm_id, now, to_json(r)) for r in records)
            self._insert(conn, rows)
            view.write(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            _LOGGER.error("journal commit of %d batch(es) failed: %s", len(group), exc)
            error = exc
        elapsed = time.perf_counter() - started
        if error is None and self._on_commit is not None:
            self._on_commit(elapsed, len(group))
        # One wake-up of each event loop for the whole group, not one per batch.
        outcomes: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None],
                                                             BaseException | None]]] = {}
        for index, (_, _, future, loop) in enumerate(group):
            outcomes.setdefault(loop, []).append((future, conflicts.get(index, error)))
        for loop, settled in outcomes.items():
            loop.call_soon_threadsafe(_settle_all, settled)

    @staticmethod
    def _insert(conn: sqlite3.Connection, rows: list[tuple[str, float, str]]) -> None:
        # In the order given: the row ids are the journal's order.
        insert_rows(conn, "INSERT INTO journal (alarm_id, written_at, body)", rows)


class _GroupView:
    """What one group commit may see: the database before it, plus its accepted batches."""

    def __init__(self, conn: sqlite3.Connection, group: list[_Item], now: float) -> None:
        keys = {(c.device_id, c.ref) for records, _, _, _ in group
                for c in claims_in(records, now)}
        expected = {alarm_id for _, expect, _, _ in group if expect for alarm_id in expect}
        # (device, ref) -> (generation, claim, whether its alarm is open)
        self.latest: dict[tuple[str, str], tuple[int, Claim, bool]] = {}
        for chunk in _chunks(sorted(keys), 400):
            marks = ",".join("(?, ?)" for _ in chunk)
            found = conn.execute(
                "SELECT c.device_id, c.ref, c.generation, c.alarm_id, c.content, c.stored_at,"
                " d.alarm_id IS NULL FROM claims c LEFT JOIN closed d ON d.alarm_id = c.alarm_id"
                f" WHERE (c.device_id, c.ref) IN (VALUES {marks})",
                [part for key in chunk for part in key],
            ).fetchall()
            for device_id, ref, generation, holder, content, stored_at, is_open in found:
                key = (device_id, ref)
                if key not in self.latest or generation > self.latest[key][0]:
                    self.latest[key] = (int(generation),
                                        Claim(str(holder), content, float(stored_at)),
                                        bool(is_open))
        self.expected = expected  # only these alarms' records are counted (count_expected)
        self.counts: Counter[str] = Counter()
        for chunk in _chunks(sorted(expected), 400):
            marks = ",".join("?" * len(chunk))
            self.counts.update(dict(conn.execute(
                f"SELECT alarm_id, count(*) FROM journal WHERE alarm_id IN ({marks})"
                " GROUP BY alarm_id", chunk).fetchall()))
        self.claims: list[tuple[str, str, int, str, str | None, float]] = []
        self.closed: list[tuple[str, float]] = []

    def take(self, records: Sequence[Record], expect: Expectations | None, now: float
             ) -> JournalError | None:
        """Check one batch; if it holds, count it in (its claims, records and closes)."""
        for alarm_id, expected in (expect or {}).items():
            if self.counts[alarm_id] != expected:
                return ConflictError(alarm_id, expected, self.counts[alarm_id])
        claims = claims_in(records, now)
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
            self.latest[(claim.device_id, claim.ref)] = (
                generation, Claim(claim.alarm_id, claim.content, claim.stored_at), True)
            self.claims.append((claim.device_id, claim.ref, generation, claim.alarm_id,
                                claim.content, claim.stored_at))
        count_expected(self.counts, self.expected, records)
        self.closed.extend(closed_in(records))
        return None

    def write(self, conn: sqlite3.Connection) -> None:
        """The accepted claims and closes (the rows are the caller's)."""
        insert_rows(conn, "INSERT INTO claims (device_id, ref, generation, alarm_id, content,"
                    " stored_at)", self.claims)
        insert_rows(conn, "INSERT OR IGNORE INTO closed (alarm_id, closed_at)", self.closed)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _backfill_claims(conn: sqlite3.Connection) -> None:
    generation: Counter[tuple[str, str]] = Counter()
    rows = conn.execute("SELECT written_at, body FROM journal ORDER BY seq")
    records = [(float(at), from_json(body)) for at, body in rows]
    stored = {
        r.alarm_id: r.at for _, r in records if isinstance(r, HopAdded) and r.hop is Hop.STORED
    }
    claims: list[tuple[str, str, int, str, str | None, float]] = []
    closed: list[tuple[str, float]] = []
    for written_at, record in records:
        found = claims_in([record], stored.get(record.alarm_id, written_at))
        for claim in found:
            key = (claim.device_id, claim.ref)
            claims.append((*key, generation[key], claim.alarm_id, claim.content,
                           claim.stored_at))
            generation[key] += 1
        closed.extend(closed_in([record]))
    conn.executemany(
        "INSERT INTO claims (device_id, ref, generation, alarm_id, content, stored_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        claims,
    )
    conn.executemany("INSERT OR IGNORE INTO closed (alarm_id, closed_at) VALUES (?, ?)", closed)


def _settle_all(settled: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for future, error in settled:
        _settle(future, error)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    elif isinstance(error, JournalError):
        future.set_exception(error)
    else:
        future.set_exception(JournalError(f"journal write failed: {error}"))
