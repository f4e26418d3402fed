"""The audit log: hash chain, head anchor, and detection of each kind of tampering."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.audit import (
    AUDIT_FILENAME,
    GENESIS_HASH,
    AuditEntry,
    AuditError,
    AuditKind,
    AuditLog,
    AuditUnreadable,
    Head,
    Problem,
    record_hash,
    verify,
    verify_main,
)

T0 = 1_700_000_000.0
N = 10


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Where the log lives, as the CLI expects it."""
    return tmp_path / AUDIT_FILENAME


@pytest.fixture
def log(path: Path) -> Path:
    """A closed log of N records (seq 1..N)."""
    with AuditLog.open(path) as audit:
        for i in range(1, N + 1):
            audit.append(
                AuditKind.HOP if i % 2 else AuditKind.LOGIN,
                actor=f"staff-{i}",
                subject=f"alarm-{i}",
                detail={"hop": "accepted", "n": i},
                at=T0 + i,
            )
    return path


def raw(path: Path, *statements: str) -> None:
    """Tamper with the file directly, as an attacker with file access would."""
    conn = sqlite3.connect(path)
    with conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()


def row(path: Path, seq: int) -> tuple[int, int, str, str, str, str, str, str]:
    """One stored row."""
    conn = sqlite3.connect(path)
    found = conn.execute(
        "SELECT seq, time_us, kind, actor, subject, detail, prev_hash, hash FROM audit"
        " WHERE seq = ?",
        (seq,),
    ).fetchone()
    conn.close()
    assert found is not None
    return found  # type: ignore[no-any-return]


def stored_hash(path: Path, seq: int) -> str:
    """The stored hash of record ``seq``."""
    return row(path, seq)[7]


# -- writing ---------------------------------------------------------------------------------


def test_append_chains_records(path: Path) -> None:
    """Each record links to the previous one and hashes its canonical encoding."""
    with AuditLog.open(path) as audit:
        first = audit.append(
            AuditKind.LOGIN, actor="anna", subject="session", detail={"ip": "10.0.0.1"}, at=T0
        )
        second = audit.append(AuditKind.ALARM_VIEW, actor="anna", subject="alarm-1", at=T0 + 0.5)
        assert (first.seq, second.seq) == (1, 2)
        assert first.prev_hash == GENESIS_HASH
        assert second.prev_hash == first.hash
        assert first.hash == record_hash(
            1,
            1_700_000_000_000_000,
            "login",
            "anna",
            "session",
            '{"ip":"10.0.0.1"}',
            GENESIS_HASH,
        )
        assert second.time == T0 + 0.5
        assert first.detail == {"ip": "10.0.0.1"}
        assert second.detail == {}
        assert audit.head() == Head(2, second.hash)
        assert list(audit.records()) == [first, second]
        assert list(audit.records(from_seq=2)) == [second]


def test_record_hash_is_unambiguous() -> None:
    """Moving a character between neighbouring fields changes the hash."""
    a = record_hash(1, 0, "login", "ab", "c", "{}", GENESIS_HASH)
    b = record_hash(1, 0, "login", "a", "bc", "{}", GENESIS_HASH)
    assert a != b


def test_detail_is_canonical(path: Path) -> None:
    """Key order and whitespace do not matter; the stored text is canonical."""
    with AuditLog.open(path) as audit:
        record = audit.append(
            "config_change", actor="admin", subject="team-1", detail={"b": 1, "a": "å"}, at=T0
        )
    assert record.detail_json == '{"a":"å","b":1}'


@pytest.mark.parametrize("detail", [{"x": float("nan")}, {"x": object()}, {"x": {1, 2}}])
def test_non_json_detail_is_refused_before_writing(path: Path, detail: dict[str, object]) -> None:
    """A detail that is not plain JSON fails and leaves the log untouched."""
    with AuditLog.open(path) as audit:
        with pytest.raises(AuditError, match="not plain JSON"):
            audit.append("hop", actor="x", subject="y", detail=detail)
        assert audit.head() == Head(0, GENESIS_HASH)
        assert list(audit.records()) == []


def test_append_many_is_one_batch(path: Path) -> None:
    """A batch gets consecutive seqs and a chained head."""
    with AuditLog.open(path) as audit:
        audit.append("hop", actor="a", subject="s", at=T0)
        batch = audit.append_many(
            AuditEntry("hop", "a", f"s{i}", {"i": i}, T0 + i) for i in range(5)
        )
        assert [r.seq for r in batch] == [2, 3, 4, 5, 6]
        assert audit.head().hash == batch[-1].hash
        assert audit.append_many([]) == []
    assert verify(path).ok


def test_reopen_continues_the_chain(log: Path) -> None:
    """A restarted gateway appends after the stored head."""
    with AuditLog.open(log) as audit:
        record = audit.append("login", actor="bo", subject="session")
    assert record.seq == N + 1
    assert record.prev_hash == stored_hash(log, N)
    assert verify(log).ok


def test_two_writers_on_one_file_never_share_a_seq(path: Path) -> None:
    """The head is read inside the write transaction, so connections interleave safely."""
    with AuditLog.open(path) as one, AuditLog.open(path) as two:
        for i in range(10):
            (one if i % 2 else two).append("hop", actor="a", subject=str(i), at=T0 + i)
    result = verify(path)
    assert result.ok
    assert result.records == 10


def test_file_is_wal_and_full_sync(path: Path) -> None:
    """WAL journal mode is persistent in the file."""
    with AuditLog.open(path):
        pass
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


# -- verification: intact ------------------------------------------------------------------------


def test_clean_log_verifies(log: Path) -> None:
    """An untouched log passes, with its head."""
    result = verify(log)
    assert result.ok
    assert result.records == N
    assert result.head == Head(N, stored_hash(log, N))
    assert result.seq is None
    assert result.problem is None


def test_empty_log_verifies(path: Path) -> None:
    """A fresh log is intact."""
    with AuditLog.open(path):
        pass
    result = verify(path)
    assert result.ok
    assert result.head == Head(0, GENESIS_HASH)


def test_verify_while_open_for_writing(log: Path) -> None:
    """Verification reads a consistent snapshot next to a live writer."""
    with AuditLog.open(log) as audit:
        audit.append("hop", actor="a", subject="s")
        assert verify(log).ok


def test_verify_does_not_modify_the_file(log: Path) -> None:
    """Read-only: the bytes are unchanged after verification."""
    before = log.read_bytes()
    verify(log)
    assert log.read_bytes() == before


# -- verification: tampering --------------------------------------------------------------------


def test_edited_record(log: Path) -> None:
    """Changing any field of a record breaks its own hash."""
    raw(log, """UPDATE audit SET detail = '{"hop":"closed","n":5}' WHERE seq = 5""")
    result = verify(log)
    assert not result.ok
    assert (result.seq, result.problem) == (5, Problem.EDITED)
    assert "record 5 was edited" in result.reason
    assert result.records == 4


@pytest.mark.parametrize(
    "column", ["time_us = time_us + 1", "kind = 'login'", "actor = 'mallory'", "subject = 'x'"]
)
def test_any_field_edit_is_caught(log: Path, column: str) -> None:
    """Every field is covered by the hash."""
    raw(log, f"UPDATE audit SET {column} WHERE seq = 3")
    result = verify(log)
    assert (result.seq, result.problem) == (3, Problem.EDITED)


def test_edited_record_with_recomputed_hash(log: Path) -> None:
    """A rewritten record with a valid hash of its own is caught by the next record's link."""
    _, time_us, kind, _, subject, detail, prev, _ = row(log, 5)
    forged = record_hash(5, time_us, kind, "mallory", subject, detail, prev)
    raw(log, f"UPDATE audit SET actor = 'mallory', hash = '{forged}' WHERE seq = 5")
    result = verify(log)
    assert (result.seq, result.problem) == (5, Problem.EDITED)
    assert "recomputed hash" in result.reason


def test_removed_record(log: Path) -> None:
    """A deleted record leaves a seq gap."""
    raw(log, "DELETE FROM audit WHERE seq = 5")
    result = verify(log)
    assert (result.seq, result.problem) == (5, Problem.REMOVED)
    assert "record 5 missing" in result.reason


def test_removed_records_range(log: Path) -> None:
    """Several deleted records are named as a range."""
    raw(log, "DELETE FROM audit WHERE seq BETWEEN 3 AND 6")
    result = verify(log)
    assert (result.seq, result.problem) == (3, Problem.REMOVED)
    assert "records 3..6 missing" in result.reason


def test_removed_record_and_renumbered(log: Path) -> None:
    """Deleting and closing the gap shows as records written for a later seq."""
    raw(
        log,
        "DELETE FROM audit WHERE seq = 5",
        "UPDATE audit SET seq = seq - 1 WHERE seq > 5",
        f"UPDATE audit_head SET seq = {N - 1}",
    )
    result = verify(log)
    assert (result.seq, result.problem) == (5, Problem.REMOVED)
    assert "renumbered" in result.reason


def test_removed_first_record(log: Path) -> None:
    """Removing record 1 is a gap at the start."""
    raw(log, "DELETE FROM audit WHERE seq = 1")
    result = verify(log)
    assert (result.seq, result.problem) == (1, Problem.REMOVED)


def _make_room_at(path: Path, seq: int) -> None:
    # Shift seq..N up by one in two steps, since seq is a unique key.
    raw(
        path,
        f"UPDATE audit SET seq = seq + 1000 WHERE seq >= {seq}",
        f"UPDATE audit SET seq = seq - 999 WHERE seq >= {seq + 1000}",
    )


def test_inserted_record_with_valid_hash(log: Path) -> None:
    """A forged record that chains correctly is exposed by the record it displaced."""
    _make_room_at(log, 5)
    prev = stored_hash(log, 4)
    forged = record_hash(5, int(T0 * 1e6), "login", "mallory", "session", "{}", prev)
    raw(
        log,
        "INSERT INTO audit VALUES"
        f" (5, {int(T0 * 1e6)}, 'login', 'mallory', 'session', '{{}}', '{prev}', '{forged}')",
        f"UPDATE audit_head SET seq = {N + 1}",
    )
    result = verify(log)
    assert (result.seq, result.problem) == (5, Problem.INSERTED)
    assert result.records == 4


def test_inserted_record_with_bogus_hash(log: Path) -> None:
    """A forged record with a made-up hash is named as inserted, not merely edited."""
    _make_room_at(log, 5)
    raw(
        log,
        "INSERT INTO audit VALUES"
        f" (5, {int(T0 * 1e6)}, 'login', 'mallory', 'session', '{{}}', 'x', 'y')",
    )
    result = verify(log)
    assert (result.seq, result.problem) == (5, Problem.INSERTED)


def test_inserted_record_with_valid_hash_and_rechained_successor(log: Path) -> None:
    """A forged record whose successor was renumbered and re-hashed (but not re-linked)."""
    _make_room_at(log, 5)
    prev = stored_hash(log, 4)
    forged = record_hash(5, int(T0 * 1e6), "login", "mallory", "session", "{}", prev)
    _, time_us, kind, actor, subject, detail, old_prev, _ = row(log, 6)
    rehashed = record_hash(6, time_us, kind, actor, subject, detail, old_prev)
    raw(
        log,
        "INSERT INTO audit VALUES"
        f" (5, {int(T0 * 1e6)}, 'login', 'mallory', 'session', '{{}}', '{prev}', '{forged}')",
        f"UPDATE audit SET hash = '{rehashed}' WHERE seq = 6",
    )
    result = verify(log)
    assert (result.seq, result.problem) == (5, Problem.INSERTED)


def test_appended_record_outside_the_log(log: Path) -> None:
    """A forged record added at the end, chained correctly, disagrees with the head."""
    prev = stored_hash(log, N)
    seq = N + 1
    forged = record_hash(seq, int(T0 * 1e6), "login", "mallory", "session", "{}", prev)
    raw(
        log,
        "INSERT INTO audit VALUES"
        f" ({seq}, {int(T0 * 1e6)}, 'login', 'mallory', 'session', '{{}}', '{prev}', '{forged}')",
    )
    result = verify(log)
    assert (result.seq, result.problem) == (N + 1, Problem.APPENDED)


def test_reordered_records(log: Path) -> None:
    """Swapping two records' positions is named as a reorder."""
    raw(
        log,
        "UPDATE audit SET seq = 1005 WHERE seq = 5",
        "UPDATE audit SET seq = 5 WHERE seq = 6",
        "UPDATE audit SET seq = 6 WHERE seq = 1005",
    )
    result = verify(log)
    assert (result.seq, result.problem) == (5, Problem.REORDERED)
    assert "written as seq 6" in result.reason


def test_record_moved_later(log: Path) -> None:
    """Moving record 3 to the end of a run is a reorder at seq 3."""
    raw(
        log,
        "UPDATE audit SET seq = 1003 WHERE seq = 3",
        "UPDATE audit SET seq = seq - 1 WHERE seq BETWEEN 4 AND 7",
        "UPDATE audit SET seq = 7 WHERE seq = 1003",
    )
    result = verify(log)
    assert (result.seq, result.problem) == (3, Problem.REORDERED)


def test_truncated_tail(log: Path) -> None:
    """Cutting records off the end is caught by the head."""
    raw(log, "DELETE FROM audit WHERE seq > 7")
    result = verify(log)
    assert (result.seq, result.problem) == (8, Problem.TRUNCATED)
    assert "records 8..10 removed" in result.reason
    assert result.records == 7


def test_last_record_rewritten(log: Path) -> None:
    """The last record has no successor: the head hash catches its rewrite."""
    _, time_us, kind, _, subject, detail, prev, _ = row(log, N)
    forged = record_hash(N, time_us, kind, "mallory", subject, detail, prev)
    raw(log, f"UPDATE audit SET actor = 'mallory', hash = '{forged}' WHERE seq = {N}")
    result = verify(log)
    assert (result.seq, result.problem) == (N, Problem.HEAD_MISMATCH)


def test_head_table_removed(log: Path) -> None:
    """Dropping the head is itself tampering."""
    raw(log, "DROP TABLE audit_head")
    result = verify(log)
    assert result.problem is Problem.HEAD_MISMATCH


def test_malformed_field(log: Path) -> None:
    """A field of the wrong type is reported, not crashed on."""
    raw(log, "UPDATE audit SET time_us = 'yesterday' WHERE seq = 2")
    result = verify(log)
    assert (result.seq, result.problem) == (2, Problem.MALFORMED)


def test_consistent_truncation_needs_the_external_anchor(log: Path) -> None:
    """Truncating and rewriting the head is invisible, except against an exported anchor."""
    with AuditLog.open(log) as audit:
        anchor = audit.head()
    assert Head.from_json(anchor.to_json()) == anchor
    assert verify(log, anchor=anchor).ok
    raw(
        log,
        "DELETE FROM audit WHERE seq > 7",
        f"UPDATE audit_head SET seq = 7, hash = '{stored_hash(log, 7)}'",
    )
    assert verify(log).ok  # The file alone cannot tell.
    result = verify(log, anchor=anchor)
    assert (result.seq, result.problem) == (8, Problem.ANCHOR_MISMATCH)


def test_whole_chain_rewritten_is_caught_by_anchor(log: Path) -> None:
    """An attacker who re-hashes everything consistently still differs from the anchor."""
    anchor = Head(5, stored_hash(log, 5))
    conn = sqlite3.connect(log)
    with conn:
        prev = GENESIS_HASH
        rows = conn.execute(
            "SELECT seq, time_us, kind, actor, subject, detail FROM audit ORDER BY seq"
        ).fetchall()
        for seq, time_us, kind, actor, subject, detail in rows:
            actor = "mallory" if seq == 2 else actor
            digest = record_hash(seq, time_us, kind, actor, subject, detail, prev)
            conn.execute(
                "UPDATE audit SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (actor, prev, digest, seq),
            )
            prev = digest
        conn.execute("UPDATE audit_head SET hash = ?", (prev,))
    conn.close()
    assert verify(log).ok
    result = verify(log, anchor=anchor)
    assert (result.seq, result.problem) == (5, Problem.ANCHOR_MISMATCH)


# -- verify_main -------------------------------------------------------------------------------


def test_verify_main_ok(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 0 and a one-line summary."""
    assert verify_main(log) == 0
    out = capsys.readouterr().out
    assert "audit log OK: 10 records" in out


def test_verify_main_tampered(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 1, naming the record and the reason."""
    raw(log, "DELETE FROM audit WHERE seq = 4")
    assert verify_main(log) == 1
    out = capsys.readouterr().out
    assert "TAMPERED at record 4 (removed)" in out


def test_verify_main_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 2 for a missing file, which is not created."""
    missing = tmp_path / AUDIT_FILENAME
    assert verify_main(missing) == 2
    assert not missing.exists()
    assert "unreadable" in capsys.readouterr().out


def test_verify_main_not_sqlite(tmp_path: Path) -> None:
    """Exit 2 for a file that is not SQLite."""
    junk = tmp_path / AUDIT_FILENAME
    junk.write_bytes(b"this is not a database" * 100)
    assert verify_main(junk) == 2


def test_verify_main_not_an_audit_log(tmp_path: Path) -> None:
    """Exit 2 for a SQLite file without an audit table."""
    other = tmp_path / AUDIT_FILENAME
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE journal (x)")
    conn.close()
    with pytest.raises(AuditUnreadable, match="no audit table"):
        verify(other)
    assert verify_main(other) == 2


def test_append_refuses_without_a_head(log: Path) -> None:
    """A log whose head was deleted is not appended to blindly, nor silently re-headed."""
    raw(log, "DELETE FROM audit_head")
    with AuditLog.open(log) as audit:
        with pytest.raises(AuditError, match="head is missing"):
            audit.append("hop", actor="a", subject="s")
        with pytest.raises(AuditError, match="head is missing"):
            audit.head()
    result = verify(log)
    assert (result.seq, result.problem) == (N + 1, Problem.HEAD_MISMATCH)
