"""Where the audit log lives, and the operator's commands on it (``trygg audit ...``).

A lone gateway keeps its chain in ``DATA_DIR/audit.sqlite3``; gateways with ``[cluster]``
share one chain in the PostgreSQL database of ``journal_dsn`` (``gateway.audit_pg``). The
functions here take a target and work the same on both, so the CLI, the gateway and tests
(``verify_audit(target)`` returns a ``VerifyResult``) need not care which it is.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from gateway.audit import (
    AUDIT_FILENAME,
    AuditLog,
    AuditStore,
    AuditUnreadable,
    Head,
    VerifyResult,
    verify,
)

if TYPE_CHECKING:
    from gateway.config import Settings

__all__ = [
    "AuditTarget",
    "PostgresAudit",
    "SqliteAudit",
    "audit_head",
    "audit_target",
    "head_main",
    "open_audit",
    "parse_anchor",
    "verify_audit",
    "verify_main",
]


@dataclass(frozen=True, slots=True)
class SqliteAudit:
    """One gateway's chain in a SQLite file."""

    path: Path

    def describe(self) -> str:
        """For messages."""
        return str(self.path)


@dataclass(frozen=True, slots=True)
class PostgresAudit:
    """The cluster's one chain in PostgreSQL."""

    dsn: str

    def describe(self) -> str:
        """For messages (the DSN may hold a password: only say where)."""
        return "the cluster's PostgreSQL database"


AuditTarget: TypeAlias = SqliteAudit | PostgresAudit


def audit_target(settings: Settings) -> AuditTarget:
    """The chain these settings write: shared when clustered, else the data directory's."""
    if settings.cluster is not None and settings.journal_dsn is not None:
        return PostgresAudit(settings.journal_dsn)
    return SqliteAudit(settings.data_dir / AUDIT_FILENAME)


def open_audit(target: AuditTarget, *, gateway_id: str = "") -> AuditStore:
    """Open the log for appending (creating it if needed). Blocking."""
    if isinstance(target, PostgresAudit):
        from gateway.audit_pg import PostgresAuditLog  # psycopg only in a cluster

        return PostgresAuditLog.open(target.dsn, gateway_id=gateway_id)
    return AuditLog.open(target.path)


def verify_audit(target: AuditTarget, *, anchor: Head | None = None) -> VerifyResult:
    """Walk the whole chain; ``AuditUnreadable`` if there is no log. Never writes."""
    if isinstance(target, PostgresAudit):
        from gateway.audit_pg import verify_pg

        return verify_pg(target.dsn, anchor=anchor)
    return verify(target.path, anchor=anchor)


def audit_head(target: AuditTarget) -> Head:
    """The stored head, read without writing. It is only as trustworthy as the log:
    export it, then check later logs against it with ``verify_audit(anchor=...)``."""
    if isinstance(target, PostgresAudit):
        import psycopg

        try:
            with psycopg.connect(target.dsn, connect_timeout=10) as conn:
                found = conn.execute(
                    "SELECT seq, hash FROM trygg_audit_head WHERE id = 1").fetchone()
        except psycopg.Error as exc:
            raise AuditUnreadable(f"cannot read the audit head: {exc}") from None
    else:
        if not target.path.is_file():
            raise AuditUnreadable(f"no audit log at {target.path}")
        try:
            lite = sqlite3.connect(f"{target.path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                found = lite.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
            finally:
                lite.close()
        except sqlite3.Error as exc:
            raise AuditUnreadable(f"cannot read the audit head: {exc}") from None
    if found is None:
        raise AuditUnreadable("the audit head is missing; run `trygg audit verify`")
    return Head(int(found[0]), str(found[1]))


def parse_anchor(text: str) -> Head:
    """An exported head: the JSON ``trygg audit head`` prints, ``SEQ:HASH``, or a file
    holding either. ValueError if it is none of those."""
    candidate = Path(text)
    if not text.lstrip().startswith("{") and ":" not in text and candidate.is_file():
        text = candidate.read_text(encoding="utf-8")
    text = text.strip()
    try:
        if text.startswith("{"):
            head = Head.from_json(text)
        else:
            seq, _, digest = text.partition(":")
            head = Head(int(seq), digest)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not an audit head: {text[:80]!r} ({exc})") from None
    if head.seq < 0 or len(head.hash) != 64 or any(c not in "0123456789abcdef"
                                                     for c in head.hash):
        raise ValueError(f"not an audit head: {text[:80]!r}")
    return head


def verify_main(target: AuditTarget, *, anchor: Head | None = None) -> int:
    """Verify and print a human result. Exit code: 0 intact, 1 tampered, 2 missing/unreadable."""
    try:
        result = verify_audit(target, anchor=anchor)
    except AuditUnreadable as exc:
        print(f"audit log unreadable: {exc}")
        return 2
    if result.ok:
        anchored = f", matches anchor at seq {anchor.seq}" if anchor is not None else ""
        print(
            f"audit log OK: {result.records} records, head seq {result.head.seq}"
            f" hash {result.head.hash}{anchored}"
        )
        return 0
    print(f"audit log TAMPERED at record {result.seq} ({result.problem}): {result.reason}")
    print(f"{result.records} records before it verified intact.")
    return 1


def head_main(target: AuditTarget) -> int:
    """Print the head as one JSON line (to store off the machine). Exit code 0, or 2."""
    try:
        head = audit_head(target)
    except AuditUnreadable as exc:
        print(f"audit log unreadable: {exc}")
        return 2
    print(json.dumps({"seq": head.seq, "hash": head.hash}))
    return 0
