"""Feeds the tamper-evident audit log (gateway/audit.py) from the running gateway.

Appends are batched on one worker thread (one fsync per batch) so that auditing never
holds up an alarm. The queue is large and bounded; if it ever overflows, that is logged at
ERROR and counted — the gap itself is then visible to ``trygg audit verify`` only as
missing activity, so the counter is exported for monitoring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from alarms.records import AlarmOpened, HopAdded, Record
from gateway.audit import AuditEntry, AuditKind, AuditStore, Head, VerifyResult
from gateway.audit_target import AuditTarget, SqliteAudit, open_audit, verify_audit
from gateway.ratelimit import LogLimiter

_LOGGER = logging.getLogger(__name__)

# Entries waiting for the writer: minutes of a burst of thousands of alarms per second.
MAX_PENDING = 200_000
BATCH = 1000
_STOP = object()


class Auditor:
    """Owns the audit log's writer thread. Reusable, not re-entrant."""

    def __init__(self, target: AuditTarget | Path, *, gateway_id: str = "") -> None:
        # Where the chain lives: this gateway's file, or the cluster's database.
        self.target = SqliteAudit(target) if isinstance(target, Path) else target
        self.gateway_id = gateway_id
        self.dropped = 0
        self.written = 0
        self._queue: queue.Queue[AuditEntry | object] = queue.Queue(MAX_PENDING)
        self._writer: asyncio.Task[None] | None = None
        # A full queue refuses every entry until the writer catches up: one line a minute
        # (with the count) says so; ``dropped`` counts each.
        self._log = LogLimiter(60.0)

    @property
    def path(self) -> Path:
        """The SQLite file of a lone gateway's log."""
        if not isinstance(self.target, SqliteAudit):
            raise AttributeError(  # noqa: TRY004 - what a missing attribute raises
                "this gateway's audit log is the cluster's, in PostgreSQL")
        return self.target.path

    async def verify(self, *, anchor: Head | None = None) -> VerifyResult:
        """Verify the whole chain this gateway writes to (the cluster's, when clustered)."""
        return await asyncio.to_thread(verify_audit, self.target, anchor=anchor)

    async def __aenter__(self) -> Self:
        log = await asyncio.to_thread(open_audit, self.target, gateway_id=self.gateway_id)
        self._writer = asyncio.create_task(
            asyncio.to_thread(self._write_loop, log), name="audit writer"
        )
        return self

    async def wait(self) -> None:
        """Until the writer thread ends (on close, or if it dies)."""
        assert self._writer is not None
        await asyncio.shield(self._writer)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The stop marker is queued last, so everything recorded before it is written.
        await asyncio.to_thread(self._queue.put, _STOP)
        if self._writer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._writer)
            self._writer = None

    def record(
        self, kind: str, *, actor: str, subject: str, detail: Mapping[str, Any] | None = None,
        at: float | None = None,
    ) -> None:
        """Queue one audit entry (never blocks the event loop)."""
        try:
            self._queue.put_nowait(AuditEntry(kind, actor, subject, detail or {}, at))
        except queue.Full:
            self.dropped += 1
            self._log.log(_LOGGER, logging.ERROR, "full",
                          "audit queue full: entry %s %s/%s not recorded", kind, actor, subject)

    def record_journal(self, records: tuple[Record, ...]) -> None:
        """Every hop of the alarm chain, as it became durable."""
        for record in records:
            if isinstance(record, HopAdded):
                detail: dict[str, Any] = {"hop": record.hop.value}
                if record.cause is not None:
                    detail["cause"] = record.cause
                self.record(AuditKind.HOP, actor=record.actor, subject=record.alarm_id,
                            detail=detail, at=record.at)
            elif isinstance(record, AlarmOpened):
                self.record(
                    AuditKind.HOP, actor=record.device_id, subject=record.alarm_id,
                    detail={"opened": record.type.value, "ref": record.ref,
                            "recipient_id": record.recipient_id},
                )

    def _write_loop(self, log: AuditStore) -> None:
        try:
            stop = False
            while not stop:
                batch: list[AuditEntry] = []
                item = self._queue.get()
                while True:
                    if item is _STOP:
                        stop = True
                        break
                    assert isinstance(item, AuditEntry)
                    batch.append(item)
                    if len(batch) >= BATCH:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    log.append_many(batch)
                    self.written += len(batch)
        finally:
            log.close()
