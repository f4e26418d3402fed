"""One contract for the audit log port, on SQLite (one gateway) and PostgreSQL (a cluster).

Every backend must keep one chain however many writers append at once, and ``verify``
must catch an edited record, records cut off the end, and a rewrite that only an exported
head (``--anchor``) can reveal. The CLI (``trygg audit head`` / ``verify --anchor``) is
exercised on both.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from gateway.audit import GENESIS_HASH, AuditEntry, AuditStore, Head, Problem
from gateway.audit_target import (
    AuditTarget,
    PostgresAudit,
    SqliteAudit,
    audit_head,
    open_audit,
    parse_anchor,
    verify_audit,
)
from gateway.cli import main
from tests.pgdb import fresh_database_sync


@dataclass
class Backend:
    """A store and a way to tamper with it behind the log's back."""

    name: str
    target: AuditTarget

    def open(self, gateway_id: str = "gw") -> AuditStore:
        """A new writer (a connection of its own, as another gateway would have)."""
        return open_audit(self.target, gateway_id=gateway_id)

    def tamper(self, statement: str, params: tuple[object, ...] = ()) -> None:
        """Run ``statement`` (``{audit}``/``{head}`` tables, ``?`` params) as an attacker
        with direct database access."""
        if isinstance(self.target, SqliteAudit):
            lite = sqlite3.connect(self.target.path)
            with lite:
                lite.execute(statement.format(audit="audit", head="audit_head"), params)
            lite.close()
            return
        text = statement.format(audit="trygg_audit", head="trygg_audit_head").replace("?", "%s")
        with psycopg.connect(self.target.dsn) as conn:
            # A superuser can switch the append-only triggers off: the chain is what remains.
            conn.execute("SET session_replication_role = replica")
            conn.execute(text.encode(), params)

    def cli(self) -> list[str]:
        """The CLI arguments that select this store."""
        if isinstance(self.target, SqliteAudit):
            return ["--data-dir", str(self.target.path.parent)]
        return ["--dsn", self.target.dsn]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", SqliteAudit(tmp_path / "audit.sqlite3"))
        return
    with fresh_database_sync() as dsn:
        yield Backend("postgres", PostgresAudit(dsn))


def _entries(writer: str, n: int) -> list[AuditEntry]:
    return [AuditEntry("login", writer, f"s{i}", {"i": i, "writer": writer}) for i in range(n)]


def _fill(backend: Backend, n: int) -> None:
    with backend.open() as log:
        log.append_many(_entries("a", n))


def test_an_empty_log_verifies(backend: Backend) -> None:
    with backend.open():
        pass
    result = verify_audit(backend.target)
    assert result.ok
    assert result.records == 0
    assert audit_head(backend.target) == Head(0, GENESIS_HASH)


def test_appends_chain_and_head_follows(backend: Backend) -> None:
    with backend.open() as log:
        first = log.append_many(_entries("a", 3))
        second = log.append_many(_entries("b", 2))
        stored = list(log.records())
        head = log.head()
    assert [r.seq for r in stored] == [1, 2, 3, 4, 5]
    assert stored == first + second
    assert second[0].prev_hash == first[-1].hash
    assert head == Head(5, second[-1].hash)
    assert audit_head(backend.target) == head
    result = verify_audit(backend.target)
    assert result.ok
    assert result.records == 5


def test_concurrent_writers_make_one_chain(backend: Backend) -> None:
    """Two gateways appending at once: no seq twice, no fork, every entry once."""
    writers, batches, per_batch = 2, 25, 4
    logs = [backend.open(f"gw{w}") for w in range(writers)]
    start = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            start.wait()
            for b in range(batches):
                logs[w].append_many(_entries(f"gw{w}-{b}", per_batch))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        stored = list(logs[0].records())
    finally:
        for log in logs:
            log.close()
    total = writers * batches * per_batch
    assert [r.seq for r in stored] == list(range(1, total + 1))
    assert len({(r.actor, r.subject) for r in stored}) == total
    # Each batch is contiguous: a batch is one transaction.
    for r in stored:
        if r.subject != "s0":
            continue
        batch = stored[r.seq - 1:r.seq - 1 + per_batch]
        assert {x.actor for x in batch} == {r.actor}
    result = verify_audit(backend.target)
    assert result.ok, result.reason
    assert result.records == total


def test_an_edited_record_is_detected(backend: Backend) -> None:
    _fill(backend, 6)
    backend.tamper("UPDATE {audit} SET actor = ? WHERE seq = ?", ("mallory", 4))
    result = verify_audit(backend.target)
    assert not result.ok
    assert result.problem is Problem.EDITED
    assert result.seq == 4
    assert result.records == 3


def test_records_cut_off_the_end_are_detected(backend: Backend) -> None:
    _fill(backend, 6)
    backend.tamper("DELETE FROM {audit} WHERE seq > ?", (4,))
    result = verify_audit(backend.target)
    assert not result.ok
    assert result.problem is Problem.TRUNCATED
    assert result.seq == 5


def test_a_rewrite_with_the_head_is_caught_only_by_the_anchor(backend: Backend) -> None:
    _fill(backend, 6)
    exported = audit_head(backend.target)
    assert verify_audit(backend.target, anchor=exported).ok
    # Cut two records and make the head agree: the stored log is consistent again.
    kept = verify_audit(backend.target)
    assert kept.ok
    with backend.open() as log:
        fourth = next(r for r in log.records() if r.seq == 4)
    backend.tamper("DELETE FROM {audit} WHERE seq > ?", (4,))
    backend.tamper("UPDATE {head} SET seq = ?, hash = ? WHERE id = 1", (4, fourth.hash))
    assert verify_audit(backend.target).ok
    result = verify_audit(backend.target, anchor=exported)
    assert not result.ok
    assert result.problem is Problem.ANCHOR_MISMATCH


def test_a_wrong_anchor_is_detected(backend: Backend) -> None:
    _fill(backend, 5)
    head = audit_head(backend.target)
    older = Head(3, "f" * 64)
    result = verify_audit(backend.target, anchor=older)
    assert not result.ok
    assert result.problem is Problem.ANCHOR_MISMATCH
    assert result.seq == 3
    # An anchor from a chain that went on growing is still fine.
    _fill(backend, 2)
    assert verify_audit(backend.target, anchor=head).ok


def test_cli_head_and_anchor(backend: Backend, capsys: pytest.CaptureFixture[str],
                             tmp_path: Path) -> None:
    _fill(backend, 3)
    assert main(["audit", "head", *backend.cli()]) == 0
    exported = capsys.readouterr().out.strip()
    assert parse_anchor(exported) == audit_head(backend.target)
    anchor_file = tmp_path / "anchor.json"
    anchor_file.write_text(exported + "\n")
    _fill(backend, 2)
    assert main(["audit", "verify", *backend.cli(), "--anchor", str(anchor_file)]) == 0
    assert "matches anchor at seq 3" in capsys.readouterr().out
    wrong = f"3:{'0' * 64}"
    assert main(["audit", "verify", *backend.cli(), "--anchor", wrong]) == 1
    assert "anchor_mismatch" in capsys.readouterr().out
    assert main(["audit", "verify", *backend.cli(), "--anchor", "nonsense"]) == 2


def test_verify_of_a_missing_log_says_so(tmp_path: Path) -> None:
    assert main(["audit", "verify", "--data-dir", str(tmp_path / "none")]) == 2
    with fresh_database_sync() as dsn:
        assert main(["audit", "verify", "--dsn", dsn]) == 2


def test_postgres_refuses_changes_to_records(tmp_path: Path) -> None:
    with fresh_database_sync() as dsn:
        with open_audit(PostgresAudit(dsn)) as log:
            log.append_many(_entries("a", 2))
        with psycopg.connect(dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE trygg_audit SET actor = 'x'")


def test_a_subject_access_export_reads_the_chain_wherever_it_is(
    backend: Backend, tmp_path: Path
) -> None:
    from gateway.privacy import audit_entries

    with backend.open() as log:
        log.append_many([AuditEntry("alarm_view", "anna", "a-1", {}),
                         AuditEntry("camera_view", "bo", "r-a", {"event": "allowed"}),
                         AuditEntry("login", "anna", "session", {}),
                         AuditEntry("hop", "dev-a", "a-2", {"recipient_id": "r-a"})])
    found = audit_entries(tmp_path / "elsewhere", "r-a", {"a-1"}, set(), backend.target)
    assert [(e["seq"], e["subject"]) for e in found] == [(1, "a-1"), (2, "r-a"), (4, "a-2")]
