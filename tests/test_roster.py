"""Shifts and rosters in Europe/Stockholm time, across both DST transitions."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

import pytest

from alarms import AlarmCore, AlarmReceived, AlarmType, Directory, Notify, Recipient, Staff
from alarms.roster import Roster, Shift, ShiftSlot, ShiftTimes, every_day

TIMES = ShiftTimes()


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


def test_shift_boundaries_in_winter_and_summer() -> None:
    # 06:59 / 07:00 local is 05:59 / 06:00 UTC in winter (CET) ...
    assert TIMES.slot_at(utc(2026, 1, 14, 5, 59)) == ShiftSlot(Shift.NIGHT, date(2026, 1, 13))
    assert TIMES.slot_at(utc(2026, 1, 14, 6, 0)) == ShiftSlot(Shift.DAY, date(2026, 1, 14))
    # ... and 04:59 / 05:00 UTC in summer (CEST).
    assert TIMES.slot_at(utc(2026, 7, 1, 4, 59)) == ShiftSlot(Shift.NIGHT, date(2026, 6, 30))
    assert TIMES.slot_at(utc(2026, 7, 1, 5, 0)) == ShiftSlot(Shift.DAY, date(2026, 7, 1))
    assert TIMES.slot_at(utc(2026, 7, 1, 14, 0)) == ShiftSlot(Shift.EVENING, date(2026, 7, 1))
    assert TIMES.slot_at(utc(2026, 7, 1, 20, 0)) == ShiftSlot(Shift.NIGHT, date(2026, 7, 1))


def test_spring_forward_night_is_eight_hours() -> None:
    # 2026-03-29: clocks go from 02:00 CET to 03:00 CEST.
    night = ShiftSlot(Shift.NIGHT, date(2026, 3, 28))
    start, end = TIMES.start_of(night), TIMES.end_of(night)
    assert start == utc(2026, 3, 28, 21, 0)  # 22:00 CET
    assert end == utc(2026, 3, 29, 5, 0)  # 07:00 CEST
    assert end - start == 8 * 3600
    # 01:59 CET and 03:00 CEST are one minute apart and both the same night.
    assert TIMES.slot_at(utc(2026, 3, 29, 0, 59)) == night
    assert TIMES.slot_at(utc(2026, 3, 29, 1, 0)) == night
    assert TIMES.local(utc(2026, 3, 29, 1, 0)).time() == time(3, 0)
    assert TIMES.slot_at(end - 1) == night
    assert TIMES.slot_at(end) == ShiftSlot(Shift.DAY, date(2026, 3, 29))


def test_fall_back_night_is_ten_hours_and_the_repeated_hour_is_the_same_night() -> None:
    # 2026-10-25: clocks go from 03:00 CEST back to 02:00 CET; 02:30 happens twice.
    night = ShiftSlot(Shift.NIGHT, date(2026, 10, 24))
    start, end = TIMES.start_of(night), TIMES.end_of(night)
    assert start == utc(2026, 10, 24, 20, 0)  # 22:00 CEST
    assert end == utc(2026, 10, 25, 6, 0)  # 07:00 CET
    assert end - start == 10 * 3600
    first, second = utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30)
    assert TIMES.local(first).time() == TIMES.local(second).time() == time(2, 30)
    assert TIMES.slot_at(first) == TIMES.slot_at(second) == night
    assert TIMES.slot_at(end) == ShiftSlot(Shift.DAY, date(2026, 10, 25))


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (utc(2026, 3, 29, 4, 59), {"natt"}),  # 06:59 CEST, spring-forward morning
        (utc(2026, 3, 29, 5, 0), {"dag"}),  # 07:00 CEST
        (utc(2026, 10, 25, 5, 59), {"natt"}),  # 06:59 CET, fall-back morning
        (utc(2026, 10, 25, 6, 0), {"dag"}),  # 07:00 CET
        (utc(2026, 10, 25, 1, 30), {"natt"}),  # the second 02:30
    ],
)
def test_routing_follows_the_roster_across_dst(moment: float, expected: set[str]) -> None:
    directory = Directory(
        device_recipient={"dev": "r"},
        recipients={"r": Recipient("r", "t")},
        staff={
            "dag": Staff("dag", frozenset({"t"})),
            "natt": Staff("natt", frozenset({"t"})),
        },
        rosters={
            "t": Roster(
                "t",
                weekly={
                    **every_day(Shift.DAY, frozenset({"dag"})),
                    **every_day(Shift.NIGHT, frozenset({"natt"})),
                },
            )
        },
    )
    decision = AlarmCore(directory).decide(
        AlarmReceived("dev", "1", AlarmType.FALL, 0, "A"), moment
    )
    notify = next(a for a in decision.actions if isinstance(a, Notify))
    assert notify.staff_ids == expected


def test_dated_override_and_night_belongs_to_its_start_date() -> None:
    friday_night = ShiftSlot(Shift.NIGHT, date(2026, 1, 16))
    roster = Roster(
        "t",
        weekly={(4, Shift.NIGHT): frozenset({"fredag"})},
        dated={ShiftSlot(Shift.NIGHT, date(2026, 1, 23)): frozenset()},
        on_call_weekly={(4, Shift.NIGHT): frozenset({"jour"})},
    )
    saturday_3am = utc(2026, 1, 17, 2, 0)
    assert TIMES.slot_at(saturday_3am) == friday_night
    assert roster.working(friday_night) == {"fredag"}
    assert roster.on_call(friday_night) == {"jour"}
    assert roster.working(ShiftSlot(Shift.NIGHT, date(2026, 1, 23))) == frozenset()


def test_shift_times_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="ordered"):
        ShiftTimes(day=time(7), evening=time(6), night=time(22))
