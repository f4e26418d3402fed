"""Sensor rules as data: one pydantic model per rule kind, set per care recipient.

Every model forbids unknown keys (a misspelt ``not_back_within_mins`` must be an error, not a
silently ignored setting that leaves the default in force) and checks its fields with messages
a nurse or technician can act on. Times of day are local Europe/Stockholm wall-clock times
without a zone; the engine turns them into instants per calendar day, so a night window of
22:00-07:00 stays 22:00-07:00 on the nights the clocks change.
"""

from __future__ import annotations

from datetime import time
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def minute_of_day(value: time) -> int:
    """Minutes since local midnight (seconds are ignored: the rules work at minute level)."""
    return value.hour * 60 + value.minute


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # None = the default priority of the alarm type (alarms.model.PRIORITY); 1 is most urgent.
    priority: int | None = Field(default=None, ge=1, le=9)


class LocalWindow(BaseModel):
    """A daily window of local time, [start, end). It may wrap past midnight (22:00-07:00)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: time
    end: time

    @field_validator("start", "end")
    @classmethod
    def _naive(cls, value: time) -> time:
        if value.tzinfo is not None:
            raise ValueError("times are local Europe/Stockholm wall-clock times; give no zone")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if minute_of_day(self.start) == minute_of_day(self.end):
            raise ValueError(
                f"window start and end are both {self.start:%H:%M}; "
                "a window must cover some but not all of the day"
            )
        return self

    @property
    def start_min(self) -> int:
        """Start as minutes since local midnight."""
        return minute_of_day(self.start)

    @property
    def end_min(self) -> int:
        """End as minutes since local midnight."""
        return minute_of_day(self.end)


def _night() -> LocalWindow:
    return LocalWindow(start=time(22, 0), end=time(7, 0))


def _day() -> LocalWindow:
    return LocalWindow(start=time(7, 0), end=time(22, 0))


class BedExitRule(_Rule):
    """Left the bed during the night and not back within ``not_back_within_min`` minutes."""

    night: LocalWindow = Field(default_factory=_night)
    not_back_within_min: int = Field(default=20, ge=1, le=240)


class DoorRule(_Rule):
    """The exit door opened during the night, unless staff are registered on site."""

    night: LocalWindow = Field(default_factory=_night)


class InactivityRule(_Rule):
    """No motion in the morning by ``morning_by``, or none for ``quiet_hours`` in the day."""

    # Motion from ``morning_from`` on counts as "up this morning"; if there is none by
    # ``morning_by`` the rule fires. Motion in the night before does not count.
    morning_from: time = time(6, 0)
    morning_by: time = time(10, 0)
    day: LocalWindow = Field(default_factory=_day)
    quiet_hours: float = Field(default=4.0, ge=0.5, le=24.0)

    @field_validator("morning_from", "morning_by")
    @classmethod
    def _naive(cls, value: time) -> time:
        if value.tzinfo is not None:
            raise ValueError("times are local Europe/Stockholm wall-clock times; give no zone")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if minute_of_day(self.morning_from) >= minute_of_day(self.morning_by):
            raise ValueError(
                f"morning_from ({self.morning_from:%H:%M}) must be before "
                f"morning_by ({self.morning_by:%H:%M})"
            )
        if self.day.start_min > self.day.end_min:
            raise ValueError(
                f"the day window {self.day.start:%H:%M}-{self.day.end:%H:%M} must not wrap "
                "past midnight; night-time quiet is the bed and door rules' business"
            )
        return self


class TemperatureRule(_Rule):
    """Indoor temperature below ``low_c`` or above ``high_c`` for longer than ``for_min``."""

    low_c: float = Field(default=16.0, ge=-10.0, le=30.0)
    high_c: float = Field(default=30.0, ge=15.0, le=50.0)
    for_min: int = Field(default=30, ge=1, le=24 * 60)
    # A reading must come back this far inside the limit to end the episode, so a value
    # dithering around the limit (15.9, 16.1, 15.9 ...) is one episode, not many.
    hysteresis_c: float = Field(default=0.5, ge=0.0, le=5.0)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.low_c + 2 * self.hysteresis_c >= self.high_c:
            raise ValueError(
                f"low_c ({self.low_c}) plus twice hysteresis_c ({self.hysteresis_c}) must be "
                f"below high_c ({self.high_c}), or the two limits' bands overlap"
            )
        return self


class _HazardRule(_Rule):
    @field_validator("enabled")
    @classmethod
    def _always_on(cls, value: bool) -> bool:
        # A hazard rule switched off by mistake silently removes fire or flood protection.
        # A recipient without the detector needs no switch: the rule never sees a sample.
        if not value:
            raise ValueError("smoke and water rules cannot be disabled")
        return value


class SmokeRule(_HazardRule):
    """Smoke detected: immediate, highest priority."""


class WaterRule(_HazardRule):
    """Water leak detected: immediate, highest priority."""


class BatteryRule(_Rule):
    """Warn ``warn_days`` before a device's battery is predicted to reach ``empty_level``."""

    empty_level: float = Field(default=0.05, ge=0.0, le=0.5)
    warn_days: float = Field(default=7.0, ge=0.5, le=60.0)
    window_days: float = Field(default=14.0, ge=1.0, le=60.0)
    min_readings: int = Field(default=6, ge=3, le=168)
    min_span_hours: float = Field(default=24.0, ge=1.0, le=24.0 * 30)

    @model_validator(mode="after")
    def _span_fits(self) -> Self:
        if self.min_span_hours > self.window_days * 24:
            raise ValueError(
                f"min_span_hours ({self.min_span_hours}) must fit inside window_days "
                f"({self.window_days} days)"
            )
        return self


class FallRule(_Rule):
    """Fall detection on accelerometer windows (see alarms/fall.py for the method)."""

    sample_rate_hz: float = Field(default=50.0, ge=10.0, le=400.0)
    impact_g: float = Field(default=2.2, ge=1.5, le=16.0)
    min_angle_deg: float = Field(default=45.0, ge=10.0, le=170.0)
    max_still_std_g: float = Field(default=0.15, gt=0.0, le=1.0)
    # Two windows reporting the same fall (overlapping windows, a resend) are one alarm.
    refractory_s: float = Field(default=60.0, ge=0.0, le=3600.0)


class RecipientRules(BaseModel):
    """All sensor rules of one care recipient; every rule has working defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bed_exit: BedExitRule = Field(default_factory=BedExitRule)
    door: DoorRule = Field(default_factory=DoorRule)
    inactivity: InactivityRule = Field(default_factory=InactivityRule)
    temperature: TemperatureRule = Field(default_factory=TemperatureRule)
    smoke: SmokeRule = Field(default_factory=SmokeRule)
    water: WaterRule = Field(default_factory=WaterRule)
    battery: BatteryRule = Field(default_factory=BatteryRule)
    fall: FallRule = Field(default_factory=FallRule)
