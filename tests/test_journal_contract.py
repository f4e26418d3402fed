"""One contract for the Journal port, run against every adapter (cf. eventsourcing).

``JournalContract`` holds the behaviour every journal must have, including exactly-once
device messages (the resend rule of ``alarms.dedupe``); ``TestSqliteJournal`` and
``TestPostgresJournal`` only say how to build one. PostgreSQL-only behaviour (migrations,
partitions, the append-only guard, dedupe across gateways) follows at the end. Each
PostgreSQL test gets a database of its own on 127.0.0.1:5432, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import psycopg
import pytest

from alarms.dedupe import RESEND_WINDOW_S, content_key
from alarms.model import (
    AlarmType,
    DeviceStatus,
    EscalationKind,
    HandoverKind,
    Hop,
    NotificationStatus,
    Position,
    PositionSource,
)
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
    to_json,
)
from gateway.journal import CommitObserver, ConflictError, Journal, JournalError, SqliteJournal
from gateway.journal_memory import MemoryJournal, MemoryStorage
from gateway.journal_pg import (
    MIGRATIONS,
    DuplicateAlarmError,
    PostgresJournal,
    ensure_partitions,
    migrate,
    partition_name,
)

# The server to create throw-away databases on; override for a non-default setup.
PG_ADMIN_DSN = os.environ.get("TRYGG_TEST_PG", "host=127.0.0.1 port=5432 dbname=postgres")


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """A new, empty database for one test; yields its DSN and drops it afterwards."""
    name = f"trygg_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await psycopg.AsyncConnection.connect(PG_ADMIN_DSN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_DSN!r}: {exc}")
    async with admin:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield psycopg.conninfo.make_conninfo(PG_ADMIN_DSN, dbname=name)
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
async def pg_dsn() -> AsyncIterator[str]:
    """The DSN of a fresh PostgreSQL database."""
    async with fresh_database() as dsn:
        yield dsn


class HookedJournal(Journal, Protocol):
    """A journal with the test hook every adapter has."""

    fail_writes: Callable[[], bool] | None


def opened(n: int, *, device: str = "dev-1", ref: str | None = None) -> AlarmOpened:
    """An ``opened`` record with every field set; (device, ref) unique per ``n``."""
    return AlarmOpened(
        alarm_id=f"alarm-{n}",
        device_id=device,
        ref=ref or f"ref-{n}",
        type=AlarmType.FALL,
        priority=2,
        recipient_id="r-a",
        team_id="team-a",
        device_ts_ms=1_700_000_000_123,
        battery=0.42,
        detail="fall detected: impact 3.1 g",
    )


def every_record() -> list[Record]:
    """One of every record type, with optional fields both set and left at defaults."""
    return [
        opened(1),
        AlarmOpened("alarm-2", "dev-2", "ref-2", AlarmType.MANUAL, 1, None, None, 0, None),
        HopAdded("alarm-1", Hop.RAISED, 1_700_000_000.123, "dev-1"),
        HopAdded(
            "alarm-1", Hop.CLOSED, 1_700_000_900.5, "anna",
            targets=("anna", "bo"), cause="fall", note="Hjälpte brukaren upp, ingen skada",
        ),
        Escalated("alarm-1", EscalationKind.TEAM, 1, 1_700_000_300.0),
        Escalated(
            "alarm-1", EscalationKind.CENTRE, 2, 1_700_000_600.0, targets=("centre",), attempt=3
        ),
        CentreConfirmation("alarm-1", 1_700_000_601.0, 3, reference="SOS-123"),
        CentreConfirmation("alarm-1", 1_700_000_602.0, 1),
        OwnerChanged("alarm-1", HandoverKind.FORWARDED, 1_700_000_400.0, "anna", "bo"),
        OwnerChanged("alarm-1", HandoverKind.HANDED_BACK, 1_700_000_500.0, "bo", None),
        RefAttached("alarm-1", "dev-1", "ref-1b", AlarmType.MANUAL, 1_700_000_100.0),
        RefAttached("alarm-1", "dev-1", "ref-1c", AlarmType.FALL, 1_700_000_101.0, "c0ffee"),
        AlarmOpened("alarm-3", "dev-3", "ref-3", AlarmType.SMOKE, 1, None, None, 0, None,
                    content="0123456789abcdef"),
        PositionAdded("alarm-1", 1_700_000_102.0, "dev-1", Position(
            59.3293, 18.0686, 12.5, 1_700_000_101.0, PositionSource.SCAIP_GGA)),
        PositionAdded("alarm-1", 1_700_000_103.0, "dev-1", Position(
            -33.8688, 151.2093, None, None, PositionSource.DEVICE)),
        DeviceNoted("alarm-1", DeviceStatus.RESET, 1_700_000_104.0, "dev-1", "ref-9"),
        DeviceNoted("alarm-1", DeviceStatus.PRESENCE, 1_700_000_105.0, "dev-1", "ref-10",
                    text="närvaro / presence"),
        NotificationRecorded("alarm-1", "sms", "alarm-1.1.anna", "anna",
                             NotificationStatus.QUEUED, 1_700_000_030.0, 1, code="K7Q2"),
        NotificationRecorded("alarm-1", "sms", "alarm-1.1.anna", "anna",
                             NotificationStatus.FAILED, 1_700_000_031.0, 1,
                             detail="DLR 2: undeliverable"),
    ]


def hop(alarm_id: str, actor: str, at: float = 1.0) -> HopAdded:
    """A plain hop record; ``actor`` tells records apart."""
    return HopAdded(alarm_id, Hop.DELIVERED, at, actor)


class JournalContract(ABC):
    """Behaviour every Journal adapter must have."""

    @abstractmethod
    def make_journal(self, on_commit: CommitObserver | None = None) -> HookedJournal:
        """A new journal object over this test's storage (the same storage every call)."""

    async def test_round_trip_of_every_record_type(self) -> None:
        records = every_record()
        async with self.make_journal() as journal:
            await journal.append(records[:3])
            for record in records[3:]:
                await journal.append([record])
            assert await journal.load() == records

    async def test_empty_journal_loads_nothing(self) -> None:
        async with self.make_journal() as journal:
            assert await journal.load() == []

    async def test_order_preserved_across_concurrent_submits(self) -> None:
        submitted: list[Record] = []
        pending: list[asyncio.Future[None]] = []

        async def writer(journal: HookedJournal, w: int) -> None:
            for i in range(25):
                batch = [hop(f"alarm-w{w}", f"w{w}-{i}-a"), hop(f"alarm-w{w}", f"w{w}-{i}-b")]
                submitted.extend(batch)
                future = journal.submit(batch)
                if i % 4 == 0:
                    await future
                else:
                    pending.append(future)
                await asyncio.sleep(0)

        async with self.make_journal() as journal:
            await asyncio.gather(*(writer(journal, w) for w in range(5)))
            await asyncio.gather(*pending)
            assert await journal.load() == submitted

    async def test_group_commit_folds_many_submits_into_fewer_transactions(self) -> None:
        commits: list[int] = []
        async with self.make_journal(lambda _s, n: commits.append(n)) as journal:
            futures = [journal.submit([hop("alarm-g", f"g{i}")]) for i in range(64)]
            await asyncio.gather(*futures)
            assert sum(commits) == 64
            assert len(commits) < 64
            assert len(await journal.load()) == 64

    async def test_durable_across_close_and_reopen(self) -> None:
        async with self.make_journal() as journal:
            await journal.append([opened(1), hop("alarm-1", "x")])
        async with self.make_journal() as journal:
            await journal.append([hop("alarm-1", "y")])
        async with self.make_journal() as journal:
            assert await journal.load() == [opened(1), hop("alarm-1", "x"), hop("alarm-1", "y")]

    async def test_failed_batch_resolves_with_journal_error_and_later_batches_work(
        self,
    ) -> None:
        commits: list[int] = []
        async with self.make_journal(lambda _s, n: commits.append(n)) as journal:
            await journal.append([hop("alarm-f", "before")])
            journal.fail_writes = lambda: True
            with pytest.raises(JournalError):
                await journal.append([hop("alarm-f", "lost")])
            futures = [journal.submit([hop("alarm-f", f"lost-{i}")]) for i in range(3)]
            for outcome in await asyncio.gather(*futures, return_exceptions=True):
                assert isinstance(outcome, JournalError)
            journal.fail_writes = None
            await journal.append([hop("alarm-f", "after")])
            assert await journal.load() == [hop("alarm-f", "before"), hop("alarm-f", "after")]
        assert sum(commits) == 2  # failed commits are not reported as commits

    async def test_submit_when_not_open_fails(self) -> None:
        journal = self.make_journal()
        with pytest.raises(JournalError):
            await journal.submit([hop("alarm-c", "closed")])
        async with journal:
            pass
        with pytest.raises(JournalError):
            await journal.append([hop("alarm-c", "closed")])

    async def test_not_reentrant(self) -> None:
        journal = self.make_journal()
        async with journal:
            with pytest.raises(RuntimeError):
                await journal.__aenter__()
            await journal.append([hop("alarm-r", "still works")])

    async def test_reusable_after_exit(self) -> None:
        journal = self.make_journal()
        async with journal:
            await journal.append([hop("alarm-u", "first")])
        async with journal:
            await journal.append([hop("alarm-u", "second")])
            assert await journal.load() == [hop("alarm-u", "first"), hop("alarm-u", "second")]

    async def test_expectations_that_hold_are_stored(self) -> None:
        async with self.make_journal() as journal:
            await journal.append([opened(1), hop("alarm-1", "a")])
            await journal.submit([hop("alarm-1", "b")], {"alarm-1": 2})
            # A new alarm has no records yet: expecting 0 holds.
            await journal.submit([hop("alarm-new", "c")], {"alarm-new": 0})
            assert [getattr(r, "actor", None) for r in await journal.load()] == [
                None, "a", "b", "c"]

    async def test_a_stale_batch_fails_alone_and_stores_nothing(self) -> None:
        async with self.make_journal() as journal:
            await journal.append([opened(1), hop("alarm-1", "a")])
            # Two decisions on the same view of alarm-1, in one group: the first wins, the
            # second sees the first one's record and is refused; a batch after it commits.
            first = journal.submit([hop("alarm-1", "first")], {"alarm-1": 2})
            second = journal.submit(
                [hop("alarm-1", "second"), hop("alarm-2", "same batch")], {"alarm-1": 2}
            )
            third = journal.submit([hop("alarm-3", "unrelated")])
            await first
            with pytest.raises(ConflictError) as refused:
                await second
            await third
            assert (refused.value.alarm_id, refused.value.expected, refused.value.found) == (
                "alarm-1", 2, 3)
            actors = [getattr(r, "actor", None) for r in await journal.load()]
            assert actors == [None, "a", "first", "unrelated"]

    async def test_expectation_on_every_alarm_of_a_batch(self) -> None:
        async with self.make_journal() as journal:
            await journal.append([hop("alarm-x", "x1"), hop("alarm-y", "y1")])
            with pytest.raises(ConflictError):
                await journal.submit([hop("alarm-x", "x2"), hop("alarm-y", "y2")],
                                     {"alarm-x": 1, "alarm-y": 0})
            await journal.submit([hop("alarm-x", "x2"), hop("alarm-y", "y2")],
                                 {"alarm-x": 1, "alarm-y": 1})
            assert len(await journal.load()) == 4

    # -- exactly once: the resend rule (alarms.dedupe) -----------------------------------

    async def test_a_true_resend_fails_alone_and_names_the_stored_alarm(self) -> None:
        commits: list[int] = []
        async with self.make_journal(lambda _s, n: commits.append(n)) as journal:
            await journal.append(message("first", "r1", "smoke"))
            # A resend decided before the first copy was applied (or on another gateway),
            # between two unrelated batches of the same group commit.
            before = journal.submit([hop("alarm-u", "before")])
            again = journal.submit(message("again", "r1", "smoke"))
            after = journal.submit([hop("alarm-u", "after")])
            outcomes = await asyncio.gather(before, again, after, return_exceptions=True)
            assert outcomes[0] is None and outcomes[2] is None
            error = outcomes[1]
            assert isinstance(error, DuplicateAlarmError)
            assert (error.device_id, error.ref, error.alarm_id) == ("dev-d", "r1", "first")
            stored = await journal.load()
        assert {r.alarm_id for r in stored} == {"first", "alarm-u"}, "nothing of the resend"

    async def test_two_copies_in_one_group_commit_store_one_alarm(self) -> None:
        async with self.make_journal() as journal:
            outcomes = await asyncio.gather(
                journal.submit(message("copy-1", "r1", "fall")),
                journal.submit(message("copy-2", "r1", "fall")),
                return_exceptions=True,
            )
            assert outcomes[0] is None and isinstance(outcomes[1], DuplicateAlarmError)
            assert opened_ids(await journal.load()) == ["copy-1"]

    async def test_a_reused_ref_with_other_content_is_a_new_alarm_at_once(self) -> None:
        """Issue 18.1: a controller restarted its ref counter; the smoke alarm is stored."""
        async with self.make_journal() as journal:
            await journal.append(message("manual", "r1", "manual"))
            await journal.append(close("manual"))
            await journal.append(message("smoke", "r1", "smoke"))
            # ... even while the earlier alarm of that ref is still open.
            await journal.append(message("fall", "r1", "fall"))
            assert opened_ids(await journal.load()) == ["manual", "smoke", "fall"]

    async def test_a_resend_is_refused_while_open_and_within_the_window(self) -> None:
        now = time.time()
        old = now - RESEND_WINDOW_S - 60
        async with self.make_journal() as journal:
            # Older than the window but still open: a resend of a stuck alarm.
            await journal.append(message("old-open", "r2", "manual", stored_at=old))
            with pytest.raises(DuplicateAlarmError):
                await journal.append(message("dup-2", "r2", "manual"))
            # Closed but within the window: still a resend.
            await journal.append(message("recent", "r3", "manual", stored_at=now - 60))
            await journal.append(close("recent"))
            with pytest.raises(DuplicateAlarmError):
                await journal.append(message("dup-3", "r3", "manual"))
            # Closed and past the window: the same message again is a new alarm ...
            await journal.append(message("old-closed", "r1", "manual", stored_at=old))
            await journal.append(close("old-closed"))
            await journal.append(message("reuse-1", "r1", "manual"))
            # ... and that one is open, so its resend is refused once more.
            with pytest.raises(DuplicateAlarmError):
                await journal.append(message("reuse-2", "r1", "manual"))
            assert opened_ids(await journal.load()) == [
                "old-open", "recent", "old-closed", "reuse-1"]

    async def test_an_attached_ref_is_claimed_with_its_own_content_and_time(self) -> None:
        now = time.time()
        async with self.make_journal() as journal:
            await journal.append(message("open", "r1", "fall"))
            attach = RefAttached("open", "dev-d", "r4", AlarmType.MANUAL, now, key("manual"))
            await journal.append([attach])
            with pytest.raises(DuplicateAlarmError):
                await journal.append(message("dup-4", "r4", "manual"))
            await journal.append(message("other-4", "r4", "smoke"))
            assert opened_ids(await journal.load()) == ["open", "other-4"]

    async def test_claims_without_content_never_block_a_message(self) -> None:
        # Records written before content keys existed (and gateway records without one).
        async with self.make_journal() as journal:
            await journal.append([opened(1, device="dev-d", ref="r1")])
            await journal.append(message("new", "r1", "fall"))
            await journal.append([opened(2, device="dev-d", ref="r1")])
            assert opened_ids(await journal.load()) == ["alarm-1", "new", "alarm-2"]

    async def test_claims_survive_close_and_reopen(self) -> None:
        async with self.make_journal() as journal:
            await journal.append(message("first", "r1", "smoke"))
        async with self.make_journal() as journal:
            with pytest.raises(DuplicateAlarmError):
                await journal.append(message("again", "r1", "smoke"))
            assert opened_ids(await journal.load()) == ["first"]


def key(kind: str) -> str:
    """The content key of a test message of alarm type ``kind``."""
    return content_key("test", kind)


def message(
    alarm_id: str, ref: str, kind: str, *, device: str = "dev-d", stored_at: float | None = None
) -> list[Record]:
    """The records that store an alarm message of device ``device``, as the core writes them."""
    at = time.time() if stored_at is None else stored_at
    return [
        AlarmOpened(alarm_id, device, ref, AlarmType(kind), 2, None, None, 0, None,
                    content=key(kind)),
        HopAdded(alarm_id, Hop.RAISED, at, device),
        HopAdded(alarm_id, Hop.STORED, at, "gateway"),
    ]


def close(alarm_id: str) -> list[Record]:
    """The record that closes an alarm."""
    return [HopAdded(alarm_id, Hop.CLOSED, time.time(), "anna", cause="hjälp given")]


def opened_ids(records: list[Record]) -> list[str]:
    """The ids of the alarms opened, in journal order."""
    return [r.alarm_id for r in records if isinstance(r, AlarmOpened)]


class TestSqliteJournal(JournalContract):
    """The contract against the embedded SQLite journal."""

    @pytest.fixture(autouse=True)
    def _storage(self, tmp_path: Path) -> None:
        self.path = tmp_path / "journal.sqlite3"

    def make_journal(self, on_commit: CommitObserver | None = None) -> HookedJournal:
        return SqliteJournal(self.path, on_commit=on_commit)

    async def test_a_journal_from_before_claims_is_claimed_when_opened(self) -> None:
        import sqlite3

        conn = sqlite3.connect(self.path)
        conn.execute("CREATE TABLE journal (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                     " alarm_id TEXT NOT NULL, written_at REAL NOT NULL, body TEXT NOT NULL)")
        old = [*message("stored", "r1", "smoke"), *message("closed", "r2", "fall"),
               *close("closed")]
        conn.executemany("INSERT INTO journal (alarm_id, written_at, body) VALUES (?, ?, ?)",
                         [(r.alarm_id, time.time(), to_json(r)) for r in old])
        conn.commit()
        conn.close()
        async with self.make_journal() as journal:
            with pytest.raises(DuplicateAlarmError):
                await journal.append(message("again", "r1", "smoke"))
            with pytest.raises(DuplicateAlarmError):
                await journal.append(message("again-2", "r2", "fall"))  # closed, in window
            await journal.append(message("new", "r2", "smoke"))
            assert opened_ids(await journal.load()) == ["stored", "closed", "new"]


class TestMemoryJournal(JournalContract):
    """The contract against the in-memory journal (tests and benchmarks)."""

    @pytest.fixture(autouse=True)
    def _storage(self) -> None:
        self.storage = MemoryStorage()

    def make_journal(self, on_commit: CommitObserver | None = None) -> HookedJournal:
        return MemoryJournal(self.storage, on_commit=on_commit)


@pytest.mark.network
class TestPostgresJournal(JournalContract):
    """The contract against PostgreSQL."""

    @pytest.fixture(autouse=True)
    def _storage(self, pg_dsn: str) -> None:
        self.dsn = pg_dsn

    def make_journal(self, on_commit: CommitObserver | None = None) -> HookedJournal:
        return PostgresJournal(self.dsn, gateway_id="gw-test", on_commit=on_commit)


# -- PostgreSQL only ---------------------------------------------------------------------

pg = pytest.mark.network


async def _rows(dsn: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return await (await conn.execute(query.encode(), params or None)).fetchall()


@pg
async def test_migrations_are_idempotent(pg_dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        assert await migrate(conn, "journal") == [1, 2]
        assert await migrate(conn, "journal") == []
        assert await migrate(conn, "leases") == [1]
    async with PostgresJournal(pg_dsn, gateway_id="gw-a"):
        pass
    assert await _rows(pg_dsn, "SELECT component, version FROM trygg_schema ORDER BY 1, 2") == [
        ("journal", 1),
        ("journal", 2),
        ("leases", 1),
    ]


@pg
async def test_migrations_are_safe_when_gateways_start_at_once(pg_dsn: str) -> None:
    conns = [await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) for _ in range(6)]
    try:
        applied = await asyncio.gather(*(migrate(c, "journal") for c in conns))
    finally:
        for conn in conns:
            await conn.close()
    assert sorted(applied) == [[], [], [], [], [], [1, 2]]
    journals = [PostgresJournal(pg_dsn, gateway_id=f"gw-{i}") for i in range(4)]
    await asyncio.gather(*(j.__aenter__() for j in journals))
    for journal in journals:
        await journal.__aexit__(None, None, None)
    assert await _rows(pg_dsn, "SELECT count(*) FROM trygg_schema") == [(2,)]


@pg
async def test_newer_schema_is_refused(pg_dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await migrate(conn, "journal")
        await conn.execute("INSERT INTO trygg_schema (component, version) VALUES ('journal', 9)")
    with pytest.raises(JournalError, match="newer"):
        async with PostgresJournal(pg_dsn, gateway_id="gw-old"):
            pass


@pg
async def test_monthly_partitions_are_created_ahead(pg_dsn: str) -> None:
    async with PostgresJournal(pg_dsn, gateway_id="gw-a") as journal:
        await journal.append([hop("alarm-p", "x")])
    partitions = {
        name
        for (name,) in await _rows(
            pg_dsn,
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'trygg_journal'::regclass",
        )
    }
    now = datetime.now(UTC)
    months = [divmod(now.year * 12 + now.month - 1 + k, 12) for k in range(4)]
    expected = {partition_name(datetime(y, m + 1, 1, tzinfo=UTC)) for y, m in months}
    assert expected <= partitions
    [(where,)] = await _rows(pg_dsn, "SELECT tableoid::regclass::text FROM trygg_journal")
    assert where == partition_name(datetime(now.year, now.month, 1, tzinfo=UTC))

    # The maintenance step is idempotent and safe concurrently; it crosses year ends.
    conns = [await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) for _ in range(3)]
    try:
        ends = await asyncio.gather(
            *(ensure_partitions(c, at=datetime(2031, 11, 20, tzinfo=UTC), months_ahead=2) for c in conns)
        )
    finally:
        for conn in conns:
            await conn.close()
    assert set(ends) == {datetime(2032, 2, 1, tzinfo=UTC)}
    names = {n for (n,) in await _rows(pg_dsn, "SELECT relname FROM pg_class WHERE relname LIKE 'trygg_journal_20%%'")}
    assert {"trygg_journal_203111", "trygg_journal_203112", "trygg_journal_203201"} <= names


@pg
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE trygg_journal SET body = '{}'",
        "DELETE FROM trygg_journal",
        "TRUNCATE trygg_journal",
        "DELETE FROM trygg_alarm_refs",
        "UPDATE trygg_alarm_closed SET closed_at = 0",
    ],
)
async def test_journal_tables_are_append_only(pg_dsn: str, statement: str) -> None:
    async with PostgresJournal(pg_dsn, gateway_id="gw-a") as journal:
        await journal.append([opened(1), HopAdded("alarm-1", Hop.CLOSED, 2.0, "anna", cause="x")])
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            await conn.execute(statement.encode())


@pg
async def test_second_gateway_storing_the_same_message_gets_duplicate_error(
    pg_dsn: str,
) -> None:
    async with (
        PostgresJournal(pg_dsn, gateway_id="gw-a") as a,
        PostgresJournal(pg_dsn, gateway_id="gw-b") as b,
    ):
        for k in range(10):
            ref = f"race-{k}"
            batches = {name: message(f"{name}-{k}", ref, "manual", device="dev-r")
                       for name in ("a", "b")}
            # Alternate who submits first; both are queued before either writer runs.
            order = [(a, "a"), (b, "b")] if k % 2 else [(b, "b"), (a, "a")]
            futures = {name: journal.submit(batches[name]) for journal, name in order}
            outcomes = dict(
                zip(futures, await asyncio.gather(*futures.values(), return_exceptions=True), strict=True)
            )
            winners = [name for name, outcome in outcomes.items() if outcome is None]
            assert len(winners) == 1, outcomes
            [loser] = {"a", "b"} - set(winners)
            error = outcomes[loser]
            assert isinstance(error, DuplicateAlarmError)
            assert (error.device_id, error.ref, error.alarm_id) == ("dev-r", ref, f"{winners[0]}-{k}")
        records = await a.load()
    opened_refs = [r.ref for r in records if isinstance(r, AlarmOpened)]
    assert sorted(opened_refs) == sorted(f"race-{k}" for k in range(10))
    stored_ids = {r.alarm_id for r in records if isinstance(r, AlarmOpened)}
    # Nothing of a refused batch is stored, not even its hops.
    assert {r.alarm_id for r in records} == stored_ids


@pg
async def test_claims_carry_generation_content_and_time(pg_dsn: str) -> None:
    async with PostgresJournal(pg_dsn, gateway_id="gw-a") as journal:
        await journal.append(message("first", "r1", "manual", stored_at=1_700_000_000.0))
        await journal.append(close("first"))
        await journal.append(message("second", "r1", "smoke"))
    claims = await _rows(pg_dsn, "SELECT ref, generation, alarm_id, content, stored_at"
                                 " FROM trygg_alarm_refs ORDER BY generation")
    assert [c[:4] for c in claims] == [
        ("r1", 0, "first", key("manual")), ("r1", 1, "second", key("smoke"))]
    assert claims[0][4] == 1_700_000_000.0


@pg
async def test_claims_from_schema_version_1_never_block_a_message(pg_dsn: str) -> None:
    """An upgrade over a journal whose claims have no content: a reused ref is stored."""
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        steps = MIGRATIONS["journal"]
        await conn.execute("CREATE TABLE trygg_schema (component text NOT NULL, version integer"
                           " NOT NULL, applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),"
                           " applied_by text NOT NULL DEFAULT '', PRIMARY KEY (component, version))")
        for statement in steps[0]:
            await conn.execute(statement.encode())
        await conn.execute("INSERT INTO trygg_schema (component, version) VALUES ('journal', 1)")
        await conn.execute(
            "INSERT INTO trygg_alarm_refs (device_id, ref, generation, alarm_id, kind,"
            " alarm_opened_at, gateway_id) VALUES ('dev-d', 'r1', 0, 'v1-alarm', 'opened', %s,"
            " 'gw-old')", (time.time(),))
    async with PostgresJournal(pg_dsn, gateway_id="gw-a") as journal:
        await journal.append(message("after-upgrade", "r1", "manual"))
        with pytest.raises(DuplicateAlarmError):
            await journal.append(message("resend", "r1", "manual"))
    assert await _rows(pg_dsn, "SELECT alarm_id FROM trygg_alarm_refs ORDER BY generation") == [
        ("v1-alarm",), ("after-upgrade",)]


@pg
async def test_commit_order_across_gateways(pg_dsn: str) -> None:
    async with (
        PostgresJournal(pg_dsn, gateway_id="gw-a") as a,
        PostgresJournal(pg_dsn, gateway_id="gw-b") as b,
    ):

        async def write(journal: PostgresJournal, name: str) -> None:
            for i in range(30):
                await journal.append([hop(name, f"{name}-{i}")])

        await asyncio.gather(write(a, "a"), write(b, "b"))
        records = await b.load()
    for name in ("a", "b"):
        mine = [r for r in records if r.alarm_id == name]
        assert mine == [hop(name, f"{name}-{i}") for i in range(30)]
    rows = await _rows(pg_dsn, "SELECT gateway_id, seq FROM trygg_journal ORDER BY seq")
    assert {g for g, _ in rows} == {"gw-a", "gw-b"}


@pg
async def test_lost_connection_fails_one_commit_then_recovers(pg_dsn: str) -> None:
    async with PostgresJournal(pg_dsn, gateway_id="gw-a") as journal:
        await journal.append([hop("alarm-l", "before")])
        # A database restart or failover, as the gateway sees it: its sessions are cut.
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        outcomes = []
        for i in range(3):
            try:
                await journal.append([hop("alarm-l", f"after-{i}")])
            except JournalError:
                outcomes.append("failed")
            else:
                outcomes.append("stored")
        # At most the first commit after the cut fails; nothing is half-written.
        assert outcomes[1:] == ["stored", "stored"]
        stored = [h.actor for h in await journal.load() if isinstance(h, HopAdded)]
        assert stored == ["before"] + [f"after-{i}" for i, o in enumerate(outcomes) if o == "stored"]


@pg
async def test_follow_returns_what_other_gateways_committed_in_order(pg_dsn: str) -> None:
    async with (
        PostgresJournal(pg_dsn, gateway_id="gw-a") as a,
        PostgresJournal(pg_dsn, gateway_id="gw-b") as b,
    ):
        await a.append([hop("alarm-0", "a-before")])
        assert await b.load() == [hop("alarm-0", "a-before")]
        assert await b.follow() == []
        for i in range(3):
            await a.append([hop("alarm-1", f"a-{i}")])
            await b.append([hop("alarm-1", f"b-{i}")])
        # b sees a's records, in commit order, and never its own (it applied those itself).
        assert await b.follow() == [hop("alarm-1", f"a-{i}") for i in range(3)]
        assert await b.follow() == []
        assert await a.follow() == [hop("alarm-1", f"b-{i}") for i in range(3)]


@pg
async def test_follow_pages_through_a_long_backlog(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.journal_pg.FOLLOW_BATCH", 7)
    async with (
        PostgresJournal(pg_dsn, gateway_id="gw-a") as a,
        PostgresJournal(pg_dsn, gateway_id="gw-b") as b,
    ):
        await b.load()
        await asyncio.gather(*(a.append([hop("alarm-p", f"p-{i}")]) for i in range(30)))
        assert [r.actor for r in await b.follow() if isinstance(r, HopAdded)] == [
            f"p-{i}" for i in range(30)]


@pg
async def test_every_commit_is_announced(pg_dsn: str) -> None:
    async with (
        await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as listener,
        PostgresJournal(pg_dsn, gateway_id="gw-a") as a,
    ):
        await listener.execute("LISTEN trygg_journal")
        await a.append([hop("alarm-n", "n")])
        payloads = [n.payload async for n in listener.notifies(timeout=5, stop_after=1)]
    assert payloads == ["gw-a"]


@pg
async def test_a_conflict_between_gateways_refuses_the_stale_one(pg_dsn: str) -> None:
    async with (
        PostgresJournal(pg_dsn, gateway_id="gw-a") as a,
        PostgresJournal(pg_dsn, gateway_id="gw-b") as b,
    ):
        await a.append([opened(1)])
        results = await asyncio.gather(
            a.submit([hop("alarm-1", "accepted-on-a")], {"alarm-1": 1}),
            b.submit([hop("alarm-1", "accepted-on-b")], {"alarm-1": 1}),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["ConflictError", "NoneType"]
        hops = [r.actor for r in await a.load() if isinstance(r, HopAdded)]
        assert len(hops) == 1
