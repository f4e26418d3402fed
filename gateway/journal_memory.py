"""The journal in memory: the third adapter of the journal port, for tests and benchmarks.

It keeps the whole contract (``tests/test_journal_contract.py`` runs it like SQLite and
PostgreSQL): group commit of everything submitted since the last commit, optimistic
concurrency per alarm, exactly-once claims of (device, ref) by the resend rule of
``alarms.dedupe``, a simulated failure switch. Only durability is missing — which is why the
gateway never uses it unless a test hands it one. ``MemoryStorage`` outlives a journal
object, like a file, so "close and reopen" means something.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from alarms.dedupe import Claim, is_resend
from alarms.records import Record
from gateway.journal import (
    MAX_GROUP,
    CommitObserver,
    ConflictError,
    DuplicateAlarmError,
    Expectations,
    JournalError,
    claims_in,
    closed_in,
)

_Batch = tuple[Sequence[Record], Expectations | None, asyncio.Future[None]]


@dataclass
class MemoryStorage:
    """What a memory journal holds: the records, and the indexes its checks read."""

    records: list[Record] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    # (device, ref) -> every claim in order (the last one decides a resend)
    claims: dict[tuple[str, str], list[Claim]] = field(default_factory=dict)
    closed: set[str] = field(default_factory=set)


class MemoryJournal:
    """A journal in a ``MemoryStorage``. Reusable, not re-entrant."""

    def __init__(self, storage: MemoryStorage | None = None, *,
                 on_commit: CommitObserver | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.storage = storage if storage is not None else MemoryStorage()
        self._on_commit = on_commit
        self._clock = clock
        self._queue: asyncio.Queue[_Batch | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # The contract's failure switch: every commit fails while it says so.
        self.fail_writes: Callable[[], bool] | None = None

    async def __aenter__(self) -> Self:
        if self._lock.locked():
            raise RuntimeError("MemoryJournal is not re-entrant")
        await self._lock.acquire()
        self._queue = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_loop(), name="journal writer (memory)")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        writer, self._writer = self._writer, None
        try:
            if writer is not None:
                # The writer commits what was queued before the stop marker, then ends.
                self._queue.put_nowait(None)
                await asyncio.shield(writer)
        finally:
            self._lock.release()

    async def wait(self) -> None:
        """Until the writer ends (on close)."""
        assert self._writer is not None
        await asyncio.shield(self._writer)

    def submit(self, records: Sequence[Record], expect: Expectations | None = None
               ) -> asyncio.Future[None]:
        """Queue records for the next group commit; the future resolves once committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._writer is None or self._writer.done():
            future.set_exception(JournalError("journal is not open"))
            return future
        self._queue.put_nowait((records, expect or None, future))
        return future

    async def append(self, records: Sequence[Record]) -> None:
        """Append records, in order, as one unit."""
        await self.submit(records)

    async def load(self) -> list[Record]:
        """Every record, in journal order."""
        return list(self.storage.records)

    async def _write_loop(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            group = [first]
            stop = False
            # Everything queued meanwhile goes into the same commit (group commit).
            while len(group) < MAX_GROUP and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stop = True
                    break
                group.append(item)
            self._commit(group)
            if stop:
                return

    def _commit(self, group: list[_Batch]) -> None:
        started = time.perf_counter()
        if self.fail_writes is not None and self.fail_writes():
            for _, _, future in group:
                _settle(future, JournalError("journal write failed (simulated)"))
            return
        storage, now = self.storage, self._clock()
        outcomes: list[JournalError | None] = []
        for records, expect, _ in group:
            refusal: JournalError | None = self._check(expect) if expect else None
            if refusal is None:
                refusal = self._claim(records, now)
            if refusal is None:
                storage.records.extend(records)
                storage.counts.update(r.alarm_id for r in records)
                storage.closed.update(alarm_id for alarm_id, _ in closed_in(records))
            outcomes.append(refusal)
        if self._on_commit is not None:
            self._on_commit(time.perf_counter() - started, len(group))
        for (_, _, future), outcome in zip(group, outcomes, strict=True):
            _settle(future, outcome)

    def _check(self, expect: Expectations) -> ConflictError | None:
        for alarm_id, expected in expect.items():
            found = self.storage.counts[alarm_id]
            if found != expected:
                return ConflictError(alarm_id, expected, found)
        return None

    def _claim(self, records: Sequence[Record], now: float) -> DuplicateAlarmError | None:
        """Claim every (device, ref) of a batch, or none and name the resend."""
        claims = claims_in(records, now)
        for claim in claims:
            held = self.storage.claims.get((claim.device_id, claim.ref))
            if held and claim.content is not None and is_resend(
                held[-1], claim.content, alarm_open=held[-1].alarm_id not in self.storage.closed,
                now=now,
            ):
                return DuplicateAlarmError(claim.device_id, claim.ref, held[-1].alarm_id)
        for claim in claims:
            self.storage.claims.setdefault((claim.device_id, claim.ref), []).append(
                Claim(claim.alarm_id, claim.content, claim.stored_at))
        return None


def _settle(future: asyncio.Future[None], error: JournalError | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
