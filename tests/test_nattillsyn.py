"""The pure night-camera rules: consent, windows across DST, access, looks, missed looks."""

from __future__ import annotations

import datetime as dt

import pytest

from alarms.nattillsyn import (
    DEFAULT_MAX_LOOK_S,
    AdHoc,
    Allowed,
    Consent,
    ConsentBook,
    ConsentScope,
    EndedBy,
    EscalateVisit,
    Look,
    LookError,
    LookState,
    MissedLooks,
    Outcome,
    RefusalCode,
    Refused,
    Remind,
    Schedule,
    Viewer,
    decide_access,
    parse_hhmm,
)

UTC = dt.UTC
TIMES = (dt.time(23, 0), dt.time(2, 0), dt.time(5, 0))
SCHEDULE = Schedule("r-a", "team-a", TIMES)
ANNA = Viewer("anna", frozenset({"team-a"}))
CLEO = Viewer("cleo", frozenset({"team-b"}))


def utc(year: int, month: int, day: int, hour: int, minute: int = 0) -> float:
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


def consent(at: float = 0.0, scope: frozenset[ConsentScope] | None = None) -> Consent:
    return Consent("r-a", "Astrid A", at, scope or frozenset({ConsentScope.SCHEDULED}),
                   "adam", at)


# -- windows across DST -----------------------------------------------------------------------


def test_windows_on_an_ordinary_winter_night() -> None:
    windows = SCHEDULE.windows_for_night(dt.date(2024, 1, 15))
    assert [w.planned_at for w in windows] == [
        utc(2024, 1, 15, 22), utc(2024, 1, 16, 1), utc(2024, 1, 16, 4)]
    assert [w.local for w in windows] == [
        "2024-01-15T23:00", "2024-01-16T02:00", "2024-01-16T05:00"]
    assert all(w.closes_at - w.opens_at == 30 * 60 for w in windows)


def test_windows_on_the_spring_forward_night() -> None:
    # 2024-03-31 02:00 CET does not exist (clocks jump to 03:00 CEST): one look, at the jump.
    windows = SCHEDULE.windows_for_night(dt.date(2024, 3, 30))
    assert [w.planned_at for w in windows] == [
        utc(2024, 3, 30, 22), utc(2024, 3, 31, 1), utc(2024, 3, 31, 3)]
    # 23:00 CET to 05:00 CEST is six hours on the wall clock, five in real time.
    assert windows[2].planned_at - windows[0].planned_at == 5 * 3600


def test_windows_on_the_fall_back_night() -> None:
    # 2024-10-27 02:00 occurs twice: the look is at the first one (CEST), once only.
    windows = SCHEDULE.windows_for_night(dt.date(2024, 10, 26))
    assert [w.planned_at for w in windows] == [
        utc(2024, 10, 26, 21), utc(2024, 10, 27, 0), utc(2024, 10, 27, 4)]
    assert windows[2].planned_at - windows[0].planned_at == 7 * 3600


def test_window_at_and_between() -> None:
    inside = utc(2024, 1, 16, 1, 10)
    window = SCHEDULE.window_at(inside)
    assert window is not None
    assert window.local == "2024-01-16T02:00"
    assert SCHEDULE.window_at(utc(2024, 1, 16, 1, 16)) is None
    between = SCHEDULE.windows_between(utc(2024, 1, 15, 12), utc(2024, 1, 16, 12))
    assert len(between) == 3


def test_parse_hhmm() -> None:
    assert parse_hhmm("02:30") == dt.time(2, 30)
    for bad in ("2:30", "0230", "25:00", "ab:cd"):
        with pytest.raises(ValueError):
            parse_hhmm(bad)


def test_schedule_round_trips_through_json() -> None:
    assert Schedule.from_json(SCHEDULE.to_json()) == SCHEDULE


# -- consent ----------------------------------------------------------------------------------


def test_withdrawal_takes_effect_at_once_and_history_is_kept() -> None:
    book = ConsentBook()
    book.register(consent(100.0))
    assert book.withdraw("r-b", by="anna", now=150.0) is None
    withdrawn = book.withdraw("r-a", by="anna", now=200.0)
    assert withdrawn is not None
    assert withdrawn.valid_at(199.9)
    assert not withdrawn.valid_at(200.0)
    assert book.withdraw("r-a", by="anna", now=201.0) is None  # nothing left in force
    book.register(consent(300.0))
    assert [c.withdrawn_by for c in book.history("r-a")] == ["anna", None]
    assert Consent.from_json(withdrawn.to_json()) == withdrawn


# -- access -----------------------------------------------------------------------------------

IN_WINDOW = utc(2024, 1, 16, 1, 5)
OUTSIDE = utc(2024, 1, 16, 2, 30)


def decide(**overrides: object) -> Allowed | Refused:
    args: dict[str, object] = {
        "viewer": ANNA, "recipient_id": "r-a", "recipient_team_id": "team-a",
        "consent": consent(), "schedule": SCHEDULE, "now": IN_WINDOW,
    }
    args.update(overrides)
    return decide_access(**args)  # type: ignore[arg-type]


def refused(**overrides: object) -> RefusalCode:
    decision = decide(**overrides)
    assert isinstance(decision, Refused), decision
    assert decision.reason
    return decision.code


def test_scheduled_look_in_window_is_allowed() -> None:
    decision = decide()
    assert isinstance(decision, Allowed)
    assert decision.window is not None
    assert decision.window.local == "2024-01-16T02:00"
    assert decision.duration_s == DEFAULT_MAX_LOOK_S
    assert not decision.flagged


def test_access_matrix() -> None:
    withdrawn = Consent("r-a", "Astrid A", 0.0, frozenset({ConsentScope.SCHEDULED}), "adam",
                        0.0, withdrawn_at=IN_WINDOW - 1, withdrawn_by="anna")
    window_key = SCHEDULE.window_at(IN_WINDOW).key  # type: ignore[union-attr]
    assert refused(consent=None) is RefusalCode.NO_CONSENT
    assert refused(consent=consent(IN_WINDOW + 10)) is RefusalCode.NO_CONSENT
    assert refused(consent=withdrawn) is RefusalCode.CONSENT_WITHDRAWN
    assert refused(now=OUTSIDE) is RefusalCode.OUTSIDE_WINDOW
    assert refused(viewer=CLEO) is RefusalCode.WRONG_TEAM
    assert refused(schedule=None) is RefusalCode.NO_SCHEDULE
    assert refused(duration_s=61.0) is RefusalCode.TOO_LONG
    assert refused(duration_s=0.0) is RefusalCode.TOO_LONG
    assert refused(look_active=True) is RefusalCode.LOOK_ACTIVE
    assert refused(done_windows=frozenset({window_key})) is RefusalCode.ALREADY_LOOKED
    assert refused(consent=consent(scope=frozenset({ConsentScope.AD_HOC}))) is (
        RefusalCode.OUT_OF_SCOPE)


def test_ad_hoc_needs_scope_reason_and_open_alarm_and_is_flagged() -> None:
    both = consent(scope=frozenset({ConsentScope.SCHEDULED, ConsentScope.AD_HOC}))
    ad_hoc = AdHoc("larm från brukaren", "alarm-1")
    assert refused(now=OUTSIDE, ad_hoc=ad_hoc, open_alarm_ids=frozenset({"alarm-1"})) is (
        RefusalCode.OUT_OF_SCOPE)
    assert refused(now=OUTSIDE, consent=both, ad_hoc=AdHoc(" ", "alarm-1"),
                   open_alarm_ids=frozenset({"alarm-1"})) is RefusalCode.NO_REASON
    assert refused(now=OUTSIDE, consent=both, ad_hoc=ad_hoc) is RefusalCode.NO_OPEN_ALARM
    assert refused(now=OUTSIDE, consent=both, ad_hoc=ad_hoc, viewer=CLEO,
                   open_alarm_ids=frozenset({"alarm-1"})) is RefusalCode.WRONG_TEAM
    decision = decide(now=OUTSIDE, consent=both, ad_hoc=ad_hoc,
                      open_alarm_ids=frozenset({"alarm-1"}))
    assert isinstance(decision, Allowed)
    assert decision.ad_hoc
    assert decision.flagged
    assert decision.reason == "larm från brukaren"


# -- the look ---------------------------------------------------------------------------------


def test_look_lifecycle() -> None:
    look = Look("l1", "r-a", "cam-a", "anna", 100.0, 60.0, window_key="r-a@1")
    with pytest.raises(LookError):
        look.streaming(101.0)
    look = look.woken(102.0)
    assert look.expires_at == 162.0
    look = look.streaming(103.0).streaming(104.0)
    assert look.streaming_at == 103.0
    ended = look.ended(130.0, EndedBy.VIEWER, Outcome.ASLEEP)
    assert ended.state is LookState.ENDED
    assert ended.duration_s == 28.0
    assert ended.audit_detail()["outcome"] == "sover"
    assert "frame" not in str(ended.audit_detail())
    with pytest.raises(LookError):
        ended.ended(131.0, EndedBy.TIMEOUT)
    with pytest.raises(LookError):
        ended.with_outcome(131.0, Outcome.AWAKE_OK)
    timed_out = look.ended(162.0, EndedBy.TIMEOUT)
    assert timed_out.outcome is None
    assert timed_out.with_outcome(170.0, Outcome.NEEDS_VISIT).outcome is Outcome.NEEDS_VISIT
    assert Outcome.NEEDS_VISIT.needs_visit
    assert Outcome.COULD_NOT_SEE.needs_visit
    assert not Outcome.AWAKE_OK.needs_visit


# -- missed looks -----------------------------------------------------------------------------


def test_missed_window_reminds_then_escalates_once() -> None:
    start = utc(2024, 1, 16, 0, 30)
    planner = MissedLooks(start=start, retry_s=15 * 60)
    schedules = [Schedule("r-a", "team-a", (dt.time(2, 0),))]
    closes = utc(2024, 1, 16, 1, 15)
    assert planner.next_deadline(schedules, start) == closes
    assert planner.tick(schedules, closes - 1) == []
    actions = planner.tick(schedules, closes)
    assert [type(a) for a in actions] == [Remind]
    assert planner.tick(schedules, closes + 60) == []
    assert planner.next_deadline(schedules, closes + 60) == closes + 15 * 60
    actions = planner.tick(schedules, closes + 15 * 60)
    assert [type(a) for a in actions] == [EscalateVisit]
    assert actions[0].window.local == "2024-01-16T02:00"
    assert planner.tick(schedules, closes + 30 * 60) == []


def test_done_window_is_not_reminded() -> None:
    start = utc(2024, 1, 16, 0, 30)
    planner = MissedLooks(start=start, retry_s=20 * 60)
    schedules = [SCHEDULE]
    window = SCHEDULE.window_at(utc(2024, 1, 16, 1, 0))
    assert window is not None
    planner.done(window.key)
    assert planner.tick(schedules, utc(2024, 1, 16, 2, 0)) == []


def test_windows_before_start_are_not_judged_and_retry_is_bounded() -> None:
    planner = MissedLooks(start=utc(2024, 1, 16, 3, 0))
    assert planner.tick([SCHEDULE], utc(2024, 1, 16, 3, 1)) == []
    with pytest.raises(ValueError):
        MissedLooks(start=0.0, retry_s=1.0)


def test_a_late_tick_still_escalates() -> None:
    planner = MissedLooks(start=utc(2024, 1, 16, 0, 30), retry_s=15 * 60)
    schedules = [Schedule("r-a", "team-a", (dt.time(2, 0),))]
    actions = planner.tick(schedules, utc(2024, 1, 16, 1, 15) + 16 * 60)
    assert [type(a) for a in actions] == [EscalateVisit]
