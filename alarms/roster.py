"""Shifts and rosters in Europe/Stockholm wall-clock time, correct across DST.

Home care works in three shifts a day (dag, kväll, natt). Rosters say who works which
shift; they are written in local time, but the core runs on UTC epoch seconds. Every
conversion goes through the tz database (zoneinfo), never a fixed offset: a fixed +1 h is
wrong all summer, and a night shift is 8 hours long on the spring-forward night and 10 on
the fall-back night — the nights when nobody must be routed to a shift that has ended.

A night shift belongs to the date it starts on: Friday's night runs Friday 22:00 to
Saturday 07:00 and is found in the roster under Friday.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from typing import TypeAlias
from zoneinfo import ZoneInfo

TZ_NAME = "Europe/Stockholm"


class Shift(StrEnum):
    """The three shifts of a home-care day."""

    DAY = "day"
    EVENING = "evening"
    NIGHT = "night"


@functools.lru_cache(maxsize=8)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@dataclass(frozen=True, slots=True)
class ShiftSlot:
    """One concrete shift: which shift, on which local date it starts."""

    shift: Shift
    date: date


@dataclass(frozen=True, slots=True)
class ShiftTimes:
    """Local start times of the shifts; each shift ends where the next begins.

    Defaults follow common Swedish home-care schedules: day 07-16, evening 16-22, night
    22-07. Starts must be ordered day < evening < night within one calendar day; the night
    wraps past midnight to the next day's start.
    """

    day: time = time(7, 0)
    evening: time = time(16, 0)
    night: time = time(22, 0)
    tz: str = TZ_NAME

    def __post_init__(self) -> None:
        if not self.day < self.evening < self.night:
            raise ValueError("shift starts must be ordered day < evening < night")
        _zone(self.tz)  # fail at configuration time, not on the first alarm

    def local(self, at: float) -> datetime:
        """``at`` (epoch seconds) as an aware local datetime."""
        return datetime.fromtimestamp(at, _zone(self.tz))

    def slot_at(self, at: float) -> ShiftSlot:
        """The shift in force at ``at``.

        A UTC instant maps to exactly one local wall time (the repeated hour of the
        fall-back night is told apart by the offset), so this is unambiguous.
        """
        local = self.local(at)
        wall = local.time().replace(tzinfo=None)
        today = local.date()
        if self.day <= wall < self.evening:
            return ShiftSlot(Shift.DAY, today)
        if self.evening <= wall < self.night:
            return ShiftSlot(Shift.EVENING, today)
        if wall >= self.night:
            return ShiftSlot(Shift.NIGHT, today)
        return ShiftSlot(Shift.NIGHT, today - timedelta(days=1))

    def start_of(self, slot: ShiftSlot) -> float:
        """When ``slot`` begins (epoch seconds)."""
        start = {Shift.DAY: self.day, Shift.EVENING: self.evening, Shift.NIGHT: self.night}
        # fold=0: for a wall time that occurs twice take the first. No default start falls
        # in the 02:00-03:00 gap or overlap, so this only matters for odd configurations.
        local = datetime.combine(slot.date, start[slot.shift], tzinfo=_zone(self.tz))
        return local.timestamp()

    def end_of(self, slot: ShiftSlot) -> float:
        """When ``slot`` ends, which is when the next one begins (epoch seconds)."""
        return self.start_of(self.next_slot(slot))

    @staticmethod
    def next_slot(slot: ShiftSlot) -> ShiftSlot:
        """The shift after ``slot``."""
        if slot.shift is Shift.DAY:
            return ShiftSlot(Shift.EVENING, slot.date)
        if slot.shift is Shift.EVENING:
            return ShiftSlot(Shift.NIGHT, slot.date)
        return ShiftSlot(Shift.DAY, slot.date + timedelta(days=1))


RosterKey: TypeAlias = tuple[int, Shift]
"""(weekday, shift) of a recurring roster line; Monday is 0."""


@dataclass(frozen=True, slots=True)
class Roster:
    """Who works, and who is on call (beredskap), in each shift of one team.

    ``weekly`` is the recurring schedule by (weekday, shift); ``dated`` overrides it for one
    concrete shift (sick leave, holidays). An empty set in ``dated`` is meaningful: nobody
    from this team works that shift, which sends alarms straight to the fallbacks.
    """

    team_id: str
    weekly: Mapping[RosterKey, frozenset[str]] = field(default_factory=dict)
    dated: Mapping[ShiftSlot, frozenset[str]] = field(default_factory=dict)
    on_call_weekly: Mapping[RosterKey, frozenset[str]] = field(default_factory=dict)
    on_call_dated: Mapping[ShiftSlot, frozenset[str]] = field(default_factory=dict)

    def working(self, slot: ShiftSlot) -> frozenset[str]:
        """Staff rostered to work ``slot``."""
        return _lookup(self.dated, self.weekly, slot)

    def on_call(self, slot: ShiftSlot) -> frozenset[str]:
        """Staff on call (beredskap) during ``slot``."""
        return _lookup(self.on_call_dated, self.on_call_weekly, slot)


def _lookup(
    dated: Mapping[ShiftSlot, frozenset[str]],
    weekly: Mapping[RosterKey, frozenset[str]],
    slot: ShiftSlot,
) -> frozenset[str]:
    found = dated.get(slot)
    if found is not None:
        return found
    return weekly.get((slot.date.weekday(), slot.shift), frozenset())


def every_day(shift: Shift, staff: frozenset[str]) -> dict[RosterKey, frozenset[str]]:
    """A weekly roster line for all seven days (a convenience for config and tests)."""
    return {(weekday, shift): staff for weekday in range(7)}
