"""The tamper-evident audit log: every chain hop and security-relevant action, hash-chained.

Each record carries ``seq``, ``time``, ``kind``, ``actor``, ``subject``, a JSON ``detail``,
the previous record's hash and its own hash: SHA-256 over a canonical encoding of all of
those (``record_hash``). Changing, removing, inserting or reordering a record breaks the chain
at that record; ``verify`` walks the whole log and names the first bad record and why.

The head (last seq and hash) is kept in the ``audit_head`` table, updated in the same
transaction as every append, so cutting records off the end is detected too. Someone who can
rewrite the file can rewrite the head as well: only a head exported off the machine
(``AuditLog.head``, checked with ``verify(path, anchor=...)``) catches that. docs/audit.md
spells out what is and is not detected.

Storage is its own SQLite file (WAL, ``synchronous=FULL``), apart from the journal, so that it
can be shipped, archived and verified on its own. Appends are synchronous: the gateway batches
them (``append_many``) and runs them off the event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from gateway.sqlrows import insert_rows

# Where the CLI looks for the log: ``trygg audit verify --data-dir DIR``.
AUDIT_FILENAME = "audit.sqlite3"

# The hash of the record before the first one.
GENESIS_HASH = "0" * 64

# Domain separation: a hash of this format can never be mistaken for one of another format,
# and a later format change gets a new tag instead of silently different hashes.
_HASH_TAG = b"trygg-audit-v1\n"

# Reordering and renumbering are recognised by finding the seq a record's hash was written
# for. Searched only on the failure path, within this distance of where the record is now.
_RENUMBER_SEARCH = 64

_SCHEMA = (
    # seq is the rowid: records are stored and read in seq order, and seqs are unique.
    "CREATE TABLE IF NOT EXISTS audit ("
    " seq INTEGER PRIMARY KEY,"
    " time_us INTEGER NOT NULL,"
    " kind TEXT NOT NULL,"
    " actor TEXT NOT NULL,"
    " subject TEXT NOT NULL,"
    " detail TEXT NOT NULL,"
    " prev_hash TEXT NOT NULL,"
    " hash TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_head ("
    " id INTEGER PRIMARY KEY CHECK (id = 1),"
    " seq INTEGER NOT NULL,"
    " hash TEXT NOT NULL)",
    # The empty head is created only for an empty log: a head that went missing from a log
    # with records is damage for ``verify`` to report, not something to paper over.
    "INSERT INTO audit_head (id, seq, hash) SELECT 1, 0, '" + GENESIS_HASH + "'"
    " WHERE NOT EXISTS (SELECT 1 FROM audit_head) AND NOT EXISTS (SELECT 1 FROM audit)",
)


class AuditKind(StrEnum):
    """What was audited. ``kind`` is free text in the log; these are the ones the gateway uses."""

    HOP = "hop"
    LOGIN = "login"
    LOGIN_FAILED = "login_failed"
    ALARM_VIEW = "alarm_view"
    CAMERA_VIEW = "camera_view"
    PROVISIONING = "provisioning"
    CONFIG_CHANGE = "config_change"
    BULK_READ = "bulk_read"


class AuditError(Exception):
    """The audit log could not be written or read."""


class AuditUnreadable(AuditError):
    """The audit log is missing or is not a readable audit log."""


@dataclass(frozen=True, slots=True)
class Head:
    """The last record's seq and hash (seq 0 and ``GENESIS_HASH`` for an empty log).

    Exported periodically off the machine, it is the anchor that proves nothing was rewritten
    up to that point.
    """

    seq: int
    hash: str

    def to_json(self) -> str:
        """``{"seq": ..., "hash": ...}``, for export."""
        return json.dumps({"seq": self.seq, "hash": self.hash})

    @classmethod
    def from_json(cls, text: str) -> Head:
        """Parse what ``to_json`` wrote."""
        data = json.loads(text)
        return cls(int(data["seq"]), str(data["hash"]))


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """Something to append: what happened, who did it, to what. ``at`` defaults to now."""

    kind: str
    actor: str
    subject: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    at: float | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One stored record. ``detail_json`` is canonical JSON, exactly as hashed."""

    seq: int
    time_us: int
    kind: str
    actor: str
    subject: str
    detail_json: str
    prev_hash: str
    hash: str

    @property
    def time(self) -> float:
        """Epoch seconds."""
        return self.time_us / 1_000_000

    @property
    def detail(self) -> dict[str, Any]:
        """The detail, parsed."""
        parsed: dict[str, Any] = json.loads(self.detail_json)
        return parsed


# One encoder for every detail: ``json.dumps`` with options builds a new one per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False)


def canonical_detail(detail: Mapping[str, Any]) -> str:
    """The one JSON text for a detail: sorted keys, no whitespace, no NaN."""
    try:
        return _CANONICAL.encode(dict(detail))
    except (TypeError, ValueError) as exc:
        raise AuditError(f"audit detail is not plain JSON: {exc}") from None


def record_hash(
    seq: int, time_us: int, kind: str, actor: str, subject: str, detail_json: str, prev_hash: str
) -> str:
    """SHA-256 (hex) over the canonical encoding of a record.

    The encoding is the tag ``trygg-audit-v1\\n`` followed by each field as a netstring
    (``<byte length>:<UTF-8 bytes>,``), integers in decimal. Length prefixes make it
    unambiguous (no field can absorb its neighbour), and it is easy to re-implement in any
    language without a JSON library that might format numbers differently.
    """
    digest = hashlib.sha256(_HASH_TAG)
    for value in (str(seq), str(time_us), kind, actor, subject, detail_json, prev_hash):
        raw = value.encode("utf-8")
        digest.update(b"%d:%s," % (len(raw), raw))
    return digest.hexdigest()


def _to_us(at: float) -> int:
    # Microseconds as an integer: the hash must not depend on how a float is printed.
    return round(at * 1_000_000)


class AuditStore(Protocol):
    """The audit log port: ``AuditLog`` (SQLite, one gateway) and
    ``gateway.audit_pg.PostgresAuditLog`` (one chain for a cluster). Blocking, thread-safe:
    the gateway calls it from its audit writer thread."""

    def append_many(self, entries: Iterable[AuditEntry]) -> list[AuditRecord]:
        """Durably append records in order, in one transaction."""

    def head(self) -> Head:
        """The current head."""

    def records(self, *, from_seq: int = 1) -> Iterator[AuditRecord]:
        """Records in seq order, unverified."""

    def close(self) -> None:
        """Release the storage. Idempotent."""

    def __enter__(self) -> Self:
        """``with`` closes it."""

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Close."""


class AuditLog:
    """The audit log in one SQLite file. Open with ``AuditLog.open(path)``; thread-safe."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> AuditLog:
        """Open (creating if needed) the log at ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE in ``append``).
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise AuditUnreadable(f"cannot open audit log {path}: {exc}") from None
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is fsynced at every commit; an audit record that vanishes on a
            # power cut is indistinguishable from one an attacker removed.
            conn.execute("PRAGMA synchronous=FULL")
            for statement in _SCHEMA:
                conn.execute(statement)
        except sqlite3.Error as exc:
            conn.close()
            raise AuditUnreadable(f"{path} is not a usable audit log: {exc}") from None
        return cls(path, conn)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the file. Idempotent."""
        with self._lock:
            self._conn.close()

    def append(
        self,
        kind: str,
        *,
        actor: str,
        subject: str,
        detail: Mapping[str, Any] | None = None,
        at: float | None = None,
    ) -> AuditRecord:
        """Durably append one record and return it."""
        [record] = self.append_many([AuditEntry(kind, actor, subject, detail or {}, at)])
        return record

    def append_many(self, entries: Iterable[AuditEntry]) -> list[AuditRecord]:
        """Durably append records in order, in one transaction (one fsync for the batch)."""
        # Encode before taking the lock, so a bad detail fails without touching the file.
        prepared = [(e.kind, e.actor, e.subject, canonical_detail(e.detail), e.at) for e in entries]
        if not prepared:
            return []
        with self._lock:
            conn = self._conn
            try:
                # IMMEDIATE takes the write lock before the head is read, so two processes
                # appending to one file can never both claim the same seq.
                conn.execute("BEGIN IMMEDIATE")
                head = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
                if head is None:
                    # Never guess where the chain ends: appending after a damaged head would
                    # bury the damage under valid-looking records.
                    conn.execute("ROLLBACK")
                    raise AuditError("audit head is missing; run `trygg audit verify`")
                seq, prev = head
                records: list[AuditRecord] = []
                for kind, actor, subject, detail_json, at in prepared:
                    seq += 1
                    time_us = _to_us(time.time() if at is None else at)
                    digest = record_hash(seq, time_us, kind, actor, subject, detail_json, prev)
                    records.append(
                        AuditRecord(seq, time_us, kind, actor, subject, detail_json, prev, digest)
                    )
                    prev = digest
                insert_rows(
                    conn,
                    "INSERT INTO audit (seq, time_us, kind, actor, subject, detail, prev_hash,"
                    " hash)",
                    [
                        (
                            r.seq,
                            r.time_us,
                            r.kind,
                            r.actor,
                            r.subject,
                            r.detail_json,
                            r.prev_hash,
                            r.hash,
                        )
                        for r in records
                    ],
                )
                conn.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, prev))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise AuditError(f"audit append failed: {exc}") from None
        return records

    def head(self) -> Head:
        """The current head, to export as an external anchor."""
        with self._lock:
            found = self._conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        if found is None:
            raise AuditError("audit head is missing; run `trygg audit verify`")
        return Head(int(found[0]), str(found[1]))

    def records(self, *, from_seq: int = 1) -> Iterator[AuditRecord]:
        """Records in seq order, starting at ``from_seq``. Not verified: use ``verify``."""
        batch = 1000
        next_seq = from_seq
        while True:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT seq, time_us, kind, actor, subject, detail, prev_hash, hash"
                    " FROM audit WHERE seq >= ? ORDER BY seq LIMIT ?",
                    (next_seq, batch),
                ).fetchall()
            for row in rows:
                yield AuditRecord(*row)
            if len(rows) < batch:
                return
            next_seq = rows[-1][0] + 1


# -- verification ----------------------------------------------------------------------------


class Problem(StrEnum):
    """The kind of tampering (or damage) found."""

    EDITED = "edited"
    REMOVED = "removed"
    INSERTED = "inserted"
    REORDERED = "reordered"
    TRUNCATED = "truncated"
    APPENDED = "appended"
    HEAD_MISMATCH = "head_mismatch"
    ANCHOR_MISMATCH = "anchor_mismatch"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of ``verify``. When not ``ok``, ``seq`` is the first bad record."""

    ok: bool
    records: int
    head: Head
    seq: int | None = None
    problem: Problem | None = None
    reason: str = ""


_Row = tuple[Any, ...]


def _hash_of(row: _Row, seq: int | None = None) -> str:
    _, time_us, kind, actor, subject, detail, prev_hash, _ = row
    return record_hash(
        row[0] if seq is None else seq, time_us, kind, actor, subject, detail, prev_hash
    )


def _well_formed(row: _Row) -> bool:
    seq, time_us, kind, actor, subject, detail, prev_hash, digest = row
    return (
        isinstance(seq, int)
        and isinstance(time_us, int)
        and all(isinstance(v, str) for v in (kind, actor, subject, detail, prev_hash, digest))
    )


def _written_as(row: _Row) -> int | None:
    """The seq this record's hash was computed for, if it was not its current seq."""
    if _hash_of(row) == row[7]:
        return None
    here: int = row[0]
    for distance in range(1, _RENUMBER_SEARCH + 1):
        for seq in (here - distance, here + distance):
            if seq >= 1 and _hash_of(row, seq) == row[7]:
                return seq
    return None


@dataclass(frozen=True, slots=True)
class _Finding:
    seq: int
    problem: Problem
    reason: str


class AuditSource(Protocol):
    """Read access to one stored log, for ``verify_source`` (one per storage backend).

    Rows are ``(seq, time_us, kind, actor, subject, detail, prev_hash, hash)``. All reads
    must come from one consistent snapshot (one read transaction).
    """

    def head_row(self) -> tuple[Any, ...] | None:
        """The stored head ``(seq, hash)``; None if the head table is missing or empty."""

    def rows(self) -> Iterator[_Row]:
        """Every record in seq order."""

    def seq_with_hash(self, digest: str) -> int | None:
        """The seq of a record whose hash is ``digest`` (failure path only)."""

    def row_after(self, seq: int) -> _Row | None:
        """The first record after ``seq``."""

    def hash_at(self, seq: int) -> str | None:
        """The hash of record ``seq``, if there is one."""


class _SqliteSource:
    """``AuditSource`` over a read-only SQLite connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def head_row(self) -> tuple[Any, ...] | None:
        found: tuple[Any, ...] | None = None
        # No head table: reported by ``verify`` as a head mismatch.
        with contextlib.suppress(sqlite3.OperationalError):
            found = self.conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        return found

    def rows(self) -> Iterator[_Row]:
        yield from self.conn.execute(
            "SELECT seq, time_us, kind, actor, subject, detail, prev_hash, hash FROM audit"
            " ORDER BY seq"
        )

    def seq_with_hash(self, digest: str) -> int | None:
        # A full scan, only ever run on the failure path.
        row = self.conn.execute("SELECT seq FROM audit WHERE hash = ? LIMIT 1", (digest,))
        found = row.fetchone()
        return None if found is None else int(found[0])

    def row_after(self, seq: int) -> _Row | None:
        found: _Row | None = self.conn.execute(
            "SELECT seq, time_us, kind, actor, subject, detail, prev_hash, hash FROM audit"
            " WHERE seq > ? ORDER BY seq LIMIT 1",
            (seq,),
        ).fetchone()
        return found

    def hash_at(self, seq: int) -> str | None:
        found = self.conn.execute("SELECT hash FROM audit WHERE seq = ?", (seq,)).fetchone()
        return None if found is None else str(found[0])


class _Walk:
    """Diagnosis of the first anomaly, with access to the whole log through ``source``."""

    def __init__(self, source: AuditSource) -> None:
        self.source = source

    def seq_with_hash(self, digest: str) -> int | None:
        return self.source.seq_with_hash(digest)

    def row_after(self, seq: int) -> _Row | None:
        return self.source.row_after(seq)

    def diagnose(self, row: _Row, expected: int, prev: str) -> _Finding:
        """Why ``row`` (where record ``expected`` linking to ``prev`` belongs) is bad."""
        seq: int = row[0]
        if seq > expected:
            missing = (
                f"records {expected}..{seq - 1}" if seq > expected + 1 else f"record {seq - 1}"
            )
            return _Finding(
                expected,
                Problem.REMOVED,
                f"{missing} missing: seq jumps from {expected - 1} to {seq}",
            )
        if seq < expected:
            return _Finding(
                seq, Problem.INSERTED, f"seq {seq} appears again after seq {expected - 1}"
            )
        if _hash_of(row) != row[7]:
            return self._diagnose_own_hash(row, prev)
        # Its own hash is right but it does not link to the record before it.
        if seq > 1 and row[6] == self._hash_at(seq - 2):
            return _Finding(
                seq - 1,
                Problem.INSERTED,
                f"record {seq - 1} was inserted: record {seq} links to record {seq - 2}",
            )
        predecessor = self.seq_with_hash(row[6])
        if predecessor is not None and predecessor > seq:
            return _Finding(
                seq,
                Problem.REORDERED,
                f"record {seq} was reordered: the record it follows is now at seq {predecessor}",
            )
        if seq == 1:
            return _Finding(
                seq, Problem.EDITED, "record 1 does not start the chain (prev_hash altered)"
            )
        return _Finding(
            seq - 1,
            Problem.EDITED,
            f"record {seq - 1} was rewritten with a recomputed hash: record {seq} links to a"
            " different hash (or record(s) between them were removed and the chain re-hashed)",
        )

    def _diagnose_own_hash(self, row: _Row, prev: str) -> _Finding:
        """``row`` is where it belongs but its hash does not match its content."""
        seq: int = row[0]
        written_as = _written_as(row)
        if written_as is not None:
            # Content intact, seq changed: the record was moved or the log renumbered.
            predecessor = self.seq_with_hash(row[6])
            if predecessor is not None and predecessor > seq:
                return _Finding(
                    seq,
                    Problem.REORDERED,
                    f"record {seq} was reordered: it was written as seq {written_as}, and the"
                    f" record it follows is now at seq {predecessor}",
                )
            if written_as > seq:
                return _Finding(
                    seq,
                    Problem.REMOVED,
                    f"record(s) {seq}..{written_as - 1} removed: the record now at seq {seq}"
                    f" was written as seq {written_as} and the log was renumbered",
                )
            return _Finding(
                written_as,
                Problem.INSERTED,
                f"record(s) {written_as}..{seq - 1} inserted: the record now at seq {seq} was"
                f" written as seq {written_as} and the log was renumbered",
            )
        nxt = self.row_after(seq)
        if nxt is not None and nxt[6] == prev and _written_as(nxt) == seq:
            return _Finding(
                seq,
                Problem.INSERTED,
                f"record {seq} was inserted: the next record was written as seq {seq} and"
                f" links to record {seq - 1}",
            )
        return _Finding(
            seq, Problem.EDITED, f"record {seq} was edited: its content does not match its hash"
        )

    def _hash_at(self, seq: int) -> str | None:
        if seq < 1:
            return GENESIS_HASH
        return self.source.hash_at(seq)


def _open_readonly(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise AuditUnreadable(f"no audit log at {path}")
    try:
        # Read-only, so verifying never creates or changes the file it is judging.
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise AuditUnreadable(f"{path} could not be opened: {exc}") from None
    try:
        tables = {
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    except sqlite3.Error as exc:
        conn.close()
        raise AuditUnreadable(f"{path} is not a readable SQLite file: {exc}") from None
    if "audit" not in tables:
        conn.close()
        raise AuditUnreadable(f"{path} has no audit table")
    return conn


def verify(path: Path, *, anchor: Head | None = None) -> VerifyResult:
    """Walk the whole log and report the first bad record, if any.

    Raises ``AuditUnreadable`` if the file is missing or not an audit log. ``anchor`` is a
    head exported earlier: the record at ``anchor.seq`` must still have ``anchor.hash``.
    Runs in one read transaction, so it sees a consistent snapshot while the gateway appends.
    """
    conn = _open_readonly(path)
    try:
        conn.execute("BEGIN")
        return verify_source(_SqliteSource(conn), anchor)
    except sqlite3.Error as exc:
        raise AuditUnreadable(f"{path} could not be read: {exc}") from None
    finally:
        conn.close()


def verify_source(source: AuditSource, anchor: Head | None = None) -> VerifyResult:
    """Walk a stored log (any backend) and report the first bad record, if any."""
    head_row = source.head_row()
    head = Head(int(head_row[0]), str(head_row[1])) if head_row else Head(-1, "")
    walk = _Walk(source)
    expected = 1
    prev = GENESIS_HASH
    anchor_hash: str | None = None

    def bad(seq: int, problem: Problem, reason: str) -> VerifyResult:
        # Everything before the first bad record was verified intact.
        return VerifyResult(False, max(0, seq - 1), head, seq, problem, reason)

    for row in source.rows():
        if not _well_formed(row):
            return bad(expected, Problem.MALFORMED, f"record {row[0]!r} has malformed fields")
        if row[0] != expected or row[6] != prev or _hash_of(row) != row[7]:
            found = walk.diagnose(row, expected, prev)
            return bad(found.seq, found.problem, found.reason)
        if anchor is not None and row[0] == anchor.seq:
            anchor_hash = row[7]
        prev = row[7]
        expected += 1
    last = expected - 1
    if head_row is None:
        return bad(last + 1, Problem.HEAD_MISMATCH, "the audit_head table is missing or empty")
    if last < head.seq:
        return bad(
            last + 1,
            Problem.TRUNCATED,
            f"records {last + 1}..{head.seq} removed: the log ends at seq {last} but its head"
            f" records seq {head.seq} (cut from the end, or removed and the chain rebuilt)",
        )
    if last > head.seq:
        return bad(
            head.seq + 1,
            Problem.APPENDED,
            f"records {head.seq + 1}..{last} were added outside the audit log: its head"
            f" records seq {head.seq}",
        )
    if head.hash != prev:
        return bad(
            last,
            Problem.HEAD_MISMATCH,
            f"record {last} does not match the head hash (rewritten, or the head was edited)",
        )
    if anchor is not None:
        if anchor.seq > last:
            return bad(
                last + 1,
                Problem.ANCHOR_MISMATCH,
                f"the anchor names seq {anchor.seq} but the log ends at seq {last}: records"
                " were removed and the head rewritten",
            )
        if anchor.seq > 0 and anchor_hash != anchor.hash:
            return bad(
                anchor.seq,
                Problem.ANCHOR_MISMATCH,
                f"record {anchor.seq} differs from the exported anchor: the log was rewritten"
                " up to or beyond it",
            )
    return VerifyResult(True, last, head)


def verify_main(path: Path, *, anchor: Head | None = None) -> int:
    """Verify and print a human result. Exit code: 0 intact, 1 tampered, 2 missing/unreadable."""
    from gateway.audit_target import SqliteAudit
    from gateway.audit_target import verify_main as verify_target_main

    return verify_target_main(SqliteAudit(path), anchor=anchor)
