"""One contract for the night-camera store, on SQLite (one gateway) and PostgreSQL (a cluster).

Two stores opened on the same database stand for two gateways: what one writes, the other
reads, and the database (not the caller) keeps one look per recipient in progress and each
window's reminder and escalation to one gateway.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from alarms.nattillsyn import (
    Consent,
    ConsentScope,
    EndedBy,
    Look,
    LookState,
    Outcome,
    Schedule,
)
from gateway.stores.cameras import (
    CameraStore,
    PostgresCameraStore,
    SqliteCameraStore,
    StoredLook,
    WindowMark,
    token_hash,
)
from tests.pgdb import store_opener

Opener = Callable[[], CameraStore]


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens another store on the same storage (another gateway, or the same after a
    restart); every store opened is closed at the end."""
    with store_opener(request.param,
                      lambda: SqliteCameraStore(tmp_path / "nattillsyn.sqlite3"),
                      lambda dsn, gw: PostgresCameraStore(dsn, gateway_id=gw)) as open_store:
        yield open_store


def consent(recipient: str, at: float = 100.0) -> Consent:
    return Consent(recipient, "Astrid", at, frozenset({ConsentScope.SCHEDULED}), "lena", at)


def look(look_id: str, recipient: str = "r-a", at: float = 1000.0) -> Look:
    return Look(id=look_id, recipient_id=recipient, device_id="cam-a", viewer_id="bo",
                requested_at=at, max_s=60.0, window_key=f"{recipient}@{at}")


def test_consents_keep_history_and_withdrawal_is_once(opener: Opener) -> None:
    one, two = opener(), opener()
    one.add_consent(consent("r-a", 100.0))
    one.add_consent(consent("r-a", 200.0))
    one.add_consent(consent("r-b", 150.0))
    assert [(c.recipient_id, c.consented_at) for c in two.consents()] == [
        ("r-a", 100.0), ("r-a", 200.0), ("r-b", 150.0)]
    withdrawn = two.withdraw_consent("r-a", by="lena", now=300.0)
    assert withdrawn is not None
    assert withdrawn.consented_at == 200.0
    assert withdrawn.withdrawn_at == 300.0
    assert withdrawn.withdrawn_by == "lena"
    assert one.withdraw_consent("r-a", by="bo", now=301.0) is None
    assert one.withdraw_consent("r-x", by="bo", now=301.0) is None
    latest = [c for c in one.consents() if c.recipient_id == "r-a"][-1]
    assert latest == withdrawn


def test_schedules_are_shared_and_removable(opener: Opener) -> None:
    one, two = opener(), opener()
    schedule = Schedule("r-a", "team-a", (dt.time(23, 0), dt.time(2, 0)), 900.0)
    one.put_schedule(schedule)
    one.put_schedule(Schedule("r-b", "team-b", (dt.time(1, 0),)))
    changed = Schedule("r-a", "team-a", (dt.time(3, 0),), 600.0)
    two.put_schedule(changed)
    assert one.schedules()["r-a"] == changed
    assert set(one.schedules()) == {"r-a", "r-b"}
    assert two.remove_schedule("r-b")
    assert not one.remove_schedule("r-b")
    assert set(one.schedules()) == {"r-a"}


def test_a_look_begun_on_one_is_continued_and_ended_on_the_other(opener: Opener) -> None:
    one, two = opener(), opener()
    started = look("l1")
    assert one.begin_look(StoredLook(started, token_hash("secret")))
    woken = started.woken(1001.0)
    assert one.save_look(StoredLook(woken, token_hash("secret"), "http://10.0.0.5:8080/s"))
    seen = two.look("l1")
    assert seen is not None
    assert seen.look == woken
    assert seen.in_progress
    assert seen.token_hash == token_hash("secret")
    assert seen.stream_url == "http://10.0.0.5:8080/s"
    assert [s.look.id for s in two.looks(in_progress=True)] == ["l1"]
    ended = woken.ended(1010.0, EndedBy.VIEWER, Outcome.ASLEEP)
    assert two.save_look(StoredLook(ended, seen.token_hash, seen.stream_url), unless_ended=True)
    # The first gateway, late, must not end it a second time.
    late = woken.ended(1061.0, EndedBy.TIMEOUT)
    assert not one.save_look(StoredLook(late, seen.token_hash), unless_ended=True)
    final = one.look("l1")
    assert final is not None
    assert final.look == ended
    assert final.look.state is LookState.ENDED
    assert one.looks(in_progress=True) == []
    assert [s.look for s in one.looks()] == [ended]
    assert one.look("nope") is None


def test_one_look_in_progress_per_recipient(opener: Opener) -> None:
    one, two = opener(), opener()
    assert one.begin_look(StoredLook(look("l1", "r-a"), "h"))
    assert not two.begin_look(StoredLook(look("l2", "r-a", 1001.0), "h"))
    assert two.begin_look(StoredLook(look("l3", "r-b", 1002.0), "h"))
    ended = look("l1", "r-a").ended(1005.0, EndedBy.CAMERA_FAILED, Outcome.COULD_NOT_SEE)
    assert one.save_look(StoredLook(ended, "h"))
    assert two.begin_look(StoredLook(look("l4", "r-a", 1006.0), "h"))
    assert [s.look.id for s in one.looks()] == ["l1", "l3", "l4"]


def test_each_window_mark_is_claimed_once(opener: Opener) -> None:
    one, two = opener(), opener()
    assert one.claim_window("r-a@1000.0", WindowMark.REMINDED, 1000.0)
    assert not two.claim_window("r-a@1000.0", WindowMark.REMINDED, 1001.0)
    assert two.claim_window("r-a@1000.0", WindowMark.ESCALATED, 2000.0)
    assert two.claim_window("r-a@5000.0", WindowMark.DONE, 5000.0)
    assert one.windows(WindowMark.REMINDED) == {"r-a@1000.0"}
    assert one.windows(WindowMark.DONE) == {"r-a@5000.0"}
    one.prune_windows(1500.0)
    assert two.windows(WindowMark.REMINDED) == frozenset()
    assert two.windows(WindowMark.ESCALATED) == {"r-a@1000.0"}


def test_state_survives_a_restart(opener: Opener) -> None:
    first = opener()
    assert first.since(500.0) == 500.0
    first.add_consent(consent("r-a"))
    first.begin_look(StoredLook(look("l1"), "h"))
    first.close()
    again = opener()
    assert again.since(900.0) == 500.0
    assert len(again.consents()) == 1
    stored = again.look("l1")
    assert stored is not None
    assert stored.in_progress


def test_sqlite_takes_over_the_json_file_once(tmp_path: Path) -> None:
    schedule = Schedule("r-a", "team-a", (dt.time(2, 0),))
    (tmp_path / "nattillsyn.json").write_text(json.dumps({
        "consents": [consent("r-a").to_json()], "schedules": [schedule.to_json()]}))
    with SqliteCameraStore(tmp_path / "nattillsyn.sqlite3") as store:
        assert store.consents() == [consent("r-a")]
        assert store.schedules() == {"r-a": schedule}
        store.withdraw_consent("r-a", by="lena", now=200.0)
    with SqliteCameraStore(tmp_path / "nattillsyn.sqlite3") as store:
        # Not imported again: the withdrawal stands, no second copy.
        [only] = store.consents()
        assert only.withdrawn_at == 200.0
