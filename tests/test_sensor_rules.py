"""The sensor rules engine: each rule on synthetic series, episodes, DST nights, config."""

from __future__ import annotations

import itertools
from datetime import datetime, time
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from alarms.events import AlarmReceived
from alarms.fall import Activity, generate
from alarms.model import AlarmType
from alarms.sensors import (
    BATTERY_LOW,
    FiringKind,
    RecipientRules,
    RuleFiring,
    RuleId,
    Sample,
    SensorRuleEngine,
    TemperatureRule,
    alarm_received,
)
from alarms.sensors.localtime import in_window, minute_of_day, utc_ms_of_local
from devices.contract import TelemetryMessage, valid_id

STHLM = ZoneInfo("Europe/Stockholm")
MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR


def local(y: int, mo: int, d: int, h: int, mi: int = 0, *, fold: int = 0) -> int:
    """Epoch ms of a Stockholm wall-clock time."""
    return int(datetime(y, mo, d, h, mi, tzinfo=STHLM, fold=fold).timestamp() * 1000)


def utc(y: int, mo: int, d: int, h: int, mi: int = 0) -> int:
    """Epoch ms of a UTC time."""
    return int(datetime(y, mo, d, h, mi, tzinfo=ZoneInfo("UTC")).timestamp() * 1000)


def engine(rules: RecipientRules | None = None) -> SensorRuleEngine:
    """An engine with recipient r1 owning devices bed, door, temp, smoke, water, pir, batt."""
    eng = SensorRuleEngine()
    for device in ("bed", "door", "temp", "smoke", "water", "pir", "batt", "pendant"):
        eng.assign_device(device, "r1")
    if rules is not None:
        eng.set_rules("r1", rules)
    return eng


def s(device: str, metric: str, value: float, ts: int) -> Sample:
    """Shorthand for a sample."""
    return Sample(device, metric, value, ts)


def ids(firings: list[RuleFiring]) -> list[str]:
    """The rule ids, in order."""
    return [str(f.rule_id) for f in firings]


# -- bed exit --------------------------------------------------------------------------------


def test_bed_exit_at_night_fires_once_when_not_back_in_time() -> None:
    eng = engine()
    left = local(2024, 3, 11, 2, 14)
    assert eng.feed([s("bed", "bed_occupied", 1, left - HOUR)], left - HOUR) == []
    assert eng.feed([s("bed", "bed_occupied", 0, left)], left) == []
    assert eng.tick(left + 19 * MIN) == []
    (firing,) = eng.tick(left + 20 * MIN)
    assert firing.rule_id is RuleId.BED_EXIT
    assert firing.alarm_type is AlarmType.BED_EXIT
    assert firing.kind is FiringKind.ALARM
    assert (firing.recipient_id, firing.device_id) == ("r1", "bed")
    assert firing.priority == 3
    assert firing.at_ms == left + 20 * MIN
    assert firing.episode_ms == left
    assert firing.summary == (
        "Sängen lämnad 02:14, ej tillbaka på 20 min / Left bed at 02:14, not back within 20 min"
    )
    assert firing.evidence == ((left - HOUR, 1.0), (left, 0.0))
    # The same episode never fires again, however long it lasts.
    assert eng.tick(left + 21 * MIN) == []
    assert eng.feed([s("bed", "bed_occupied", 0, left + 30 * MIN)], left + 40 * MIN) == []


def test_bed_exit_back_in_time_does_not_fire_and_next_exit_is_a_new_episode() -> None:
    eng = engine()
    left = local(2024, 3, 11, 1, 0)
    eng.feed([s("bed", "bed_occupied", 0, left)], left)
    assert eng.feed([s("bed", "bed_occupied", 1, left + 15 * MIN)], left + 25 * MIN) == []
    eng.feed([s("bed", "bed_occupied", 0, left + HOUR)], left + HOUR)
    (firing,) = eng.tick(left + HOUR + 20 * MIN)
    assert firing.episode_ms == left + HOUR


def test_bed_exit_fires_on_a_periodic_sample_once() -> None:
    eng = engine()
    left = local(2024, 3, 11, 3, 0)
    batch = [s("bed", "bed_occupied", 0, left + m * MIN) for m in range(40)]
    # now before the duration: only the samples can make it fire.
    firings = eng.feed(batch, left)
    assert ids(firings) == ["bed_exit"]
    assert firings[0].at_ms == left + 20 * MIN


@pytest.mark.parametrize(
    ("hh", "mm", "fires"),
    [(21, 59, False), (22, 0, True), (23, 30, True), (0, 0, True), (6, 59, True), (7, 0, False)],
)
def test_bed_exit_night_window_boundaries(hh: int, mm: int, fires: bool) -> None:
    eng = engine()
    left = local(2024, 5, 14 if hh >= 12 else 15, hh, mm)
    eng.feed([s("bed", "bed_occupied", 1, left - HOUR), s("bed", "bed_occupied", 0, left)], left)
    assert ids(eng.tick(left + 20 * MIN)) == (["bed_exit"] if fires else [])


def test_bed_exit_spring_forward_night() -> None:
    # 2024-03-31: 02:00 CET becomes 03:00 CEST. At 05:30 UTC it is 07:30 local (day), not
    # 06:30 as a fixed UTC+1 would say; at 04:30 UTC it is 06:30 local (night).
    eng = engine()
    day_exit = utc(2024, 3, 31, 5, 30)
    eng.feed([s("bed", "bed_occupied", 0, day_exit)], day_exit)
    assert eng.tick(day_exit + HOUR) == []

    eng = engine()
    night_exit = utc(2024, 3, 31, 4, 30)
    eng.feed([s("bed", "bed_occupied", 0, night_exit)], night_exit)
    (firing,) = eng.tick(night_exit + 20 * MIN)
    assert "06:30" in firing.summary

    # Left at 01:50 CET, 20 real minutes later it is 03:10 CEST: fires after 20 minutes of
    # elapsed time, not 80 minutes of wall clock.
    eng = engine()
    left = local(2024, 3, 31, 1, 50)
    eng.feed([s("bed", "bed_occupied", 0, left)], left)
    assert eng.tick(left + 19 * MIN) == []
    (firing,) = eng.tick(left + 20 * MIN)
    assert firing.at_ms == local(2024, 3, 31, 3, 10)
    assert firing.summary.startswith("Sängen lämnad 01:50")


def test_bed_exit_fall_back_night() -> None:
    # 2024-10-27: 03:00 CEST becomes 02:00 CET. 05:30 UTC is 06:30 local (night); a fixed
    # UTC+2 would say 07:30 and miss it.
    eng = engine()
    exit_ms = utc(2024, 10, 27, 5, 30)
    eng.feed([s("bed", "bed_occupied", 0, exit_ms)], exit_ms)
    (firing,) = eng.tick(exit_ms + 20 * MIN)
    assert "06:30" in firing.summary

    # 02:30 happens twice; both are night and each exit is its own episode.
    eng = engine()
    first = local(2024, 10, 27, 2, 30, fold=0)
    second = local(2024, 10, 27, 2, 30, fold=1)
    assert second - first == HOUR
    eng.feed([s("bed", "bed_occupied", 0, first)], first)
    assert ids(eng.tick(first + 20 * MIN)) == ["bed_exit"]
    eng.feed([s("bed", "bed_occupied", 1, first + 30 * MIN)], first + 30 * MIN)
    eng.feed([s("bed", "bed_occupied", 0, second)], second)
    (again,) = eng.tick(second + 20 * MIN)
    assert again.episode_ms == second
    assert again.summary.startswith("Sängen lämnad 02:30")


def test_bed_exit_respects_per_recipient_settings() -> None:
    rules = RecipientRules.model_validate(
        {"bed_exit": {"night": {"start": "23:30", "end": "05:00"}, "not_back_within_min": 5}}
    )
    eng = engine(rules)
    eng.assign_device("bed2", "r2")  # r2 keeps the defaults
    left = local(2024, 5, 14, 23, 0)
    eng.feed([s("bed", "bed_occupied", 0, left), s("bed2", "bed_occupied", 0, left)], left)
    assert [f.device_id for f in eng.tick(left + 20 * MIN)] == ["bed2"]
    late = local(2024, 5, 15, 0, 10)
    eng.feed([s("bed", "bed_occupied", 1, late - MIN), s("bed", "bed_occupied", 0, late)], late)
    assert eng.tick(late + 4 * MIN) == []
    (firing,) = eng.tick(late + 5 * MIN)
    assert "5 min" in firing.summary


# -- door ------------------------------------------------------------------------------------


def test_door_at_night_fires_immediately_once_per_opening() -> None:
    eng = engine()
    t0 = local(2024, 1, 9, 2, 14)
    batch = [s("door", "door_open", v, t0 + i * MIN) for i, v in enumerate([0, 1, 1, 1, 0, 1])]
    firings = eng.feed(batch, t0 + 10 * MIN)
    assert ids(firings) == ["door_night", "door_night"]
    assert [f.at_ms for f in firings] == [t0 + MIN, t0 + 5 * MIN]
    assert firings[0].alarm_type is AlarmType.DOOR
    assert firings[0].summary == (
        "Ytterdörren öppnad 02:15 nattetid / Exit door opened at 02:15 during the night"
    )


def test_door_in_the_day_does_not_fire() -> None:
    eng = engine()
    t0 = local(2024, 1, 9, 12, 0)
    assert eng.feed([s("door", "door_open", 1, t0)], t0) == []


def test_door_suppressed_while_staff_on_site() -> None:
    eng = engine()
    t0 = local(2024, 1, 9, 23, 0)
    eng.set_presence("r1", on_site=True)
    assert eng.feed([s("door", "door_open", 1, t0), s("door", "door_open", 0, t0 + MIN)], t0) == []
    eng.set_presence("r1", on_site=False)
    assert ids(eng.feed([s("door", "door_open", 1, t0 + 30 * MIN)], t0 + 30 * MIN)) == [
        "door_night"
    ]


# -- temperature -----------------------------------------------------------------------------


def temps(t0: int, values: list[float], step: int = 5 * MIN) -> list[Sample]:
    """Temperature readings every ``step``."""
    return [s("temp", "temperature", v, t0 + i * step) for i, v in enumerate(values)]


def test_cold_for_longer_than_limit_fires_once() -> None:
    eng = engine()
    t0 = local(2024, 1, 9, 14, 0)
    firings = eng.feed(temps(t0, [20, 15, 15, 15, 15, 15, 15, 15, 15, 15, 14]), t0)
    assert ids(firings) == ["temperature_low"]
    assert firings[0].at_ms == t0 + 35 * MIN  # breach from +5 min, 30 minutes later
    assert firings[0].alarm_type is AlarmType.TEMPERATURE
    assert "under 16 °C sedan 14:05" in firings[0].summary
    assert "below 16 °C since 14:05" in firings[0].summary


def test_short_cold_spell_does_not_fire() -> None:
    eng = engine()
    t0 = local(2024, 1, 9, 14, 0)
    assert eng.feed(temps(t0, [20, 15, 15, 15, 17, 17, 17, 17, 17, 17, 17]), t0) == []


def test_hysteresis_keeps_a_dithering_reading_one_episode() -> None:
    eng = engine()
    t0 = local(2024, 1, 9, 14, 0)
    # Bounces around 16 °C but never reaches 16.5: one episode, one firing.
    dither = [15.8, 16.1, 15.9, 16.2, 15.7, 16.3] * 4
    firings = eng.feed(temps(t0, dither), t0)
    assert ids(firings) == ["temperature_low"]
    # Back above low + hysteresis ends it; a new cold spell is a new episode.
    later = t0 + 3 * HOUR
    assert eng.feed(temps(later, [17.0]), later) == []
    assert ids(eng.feed(temps(later + HOUR, [15.0] * 8), later + HOUR)) == ["temperature_low"]


def test_hot_fires_and_quiet_sensor_fires_on_tick() -> None:
    eng = engine(RecipientRules(temperature=TemperatureRule(high_c=28, for_min=20)))
    t0 = local(2024, 7, 9, 14, 0)
    assert eng.feed(temps(t0, [27, 29.5]), t0 + 5 * MIN) == []
    (firing,) = eng.tick(t0 + 25 * MIN)
    assert firing.rule_id is RuleId.TEMPERATURE_HIGH
    assert "över 28 °C" in firing.summary
    assert "29,5 °C" in firing.summary


# -- smoke and water -------------------------------------------------------------------------


@pytest.mark.parametrize(("metric", "alarm"), [("smoke", AlarmType.SMOKE), ("water", "water")])
def test_hazards_fire_immediately_at_top_priority(metric: str, alarm: str) -> None:
    eng = engine()
    t0 = local(2024, 1, 9, 14, 0)
    batch = [s(metric, metric, v, t0 + i * 1000) for i, v in enumerate([0, 1, 1, 1, 0, 0, 1])]
    firings = eng.feed(batch, t0)
    assert ids(firings) == [metric, metric]
    assert all(f.priority == 1 and f.alarm_type == alarm for f in firings)
    assert firings[0].at_ms == t0 + 1000


def test_hazard_rules_cannot_be_disabled() -> None:
    with pytest.raises(ValidationError, match="cannot be disabled"):
        RecipientRules.model_validate({"smoke": {"enabled": False}})


# -- inactivity ------------------------------------------------------------------------------


def test_no_motion_by_morning_fires_once() -> None:
    eng = engine()
    evening = local(2024, 1, 9, 21, 40)
    eng.feed([s("pir", "motion", 1, evening)], evening)
    assert eng.tick(local(2024, 1, 10, 9, 59)) == []
    (firing,) = eng.tick(local(2024, 1, 10, 10, 0))
    assert firing.rule_id is RuleId.INACTIVITY_MORNING
    assert firing.alarm_type is AlarmType.INACTIVITY
    assert firing.summary == (
        "Ingen rörelse i morse före 10:00 (senast 21:40) / "
        "No motion this morning by 10:00 (last at 21:40)"
    )
    assert eng.tick(local(2024, 1, 10, 10, 5)) == []
    # The day rule does not report the same silence again at 11:00 (07:00 + 4 h).
    assert eng.tick(local(2024, 1, 10, 11, 30)) == []


def test_motion_in_the_morning_means_no_alarm() -> None:
    eng = engine()
    eng.feed([s("pir", "motion", 1, local(2024, 1, 10, 6, 30))], local(2024, 1, 10, 6, 30))
    assert eng.tick(local(2024, 1, 10, 10, 30)) == []


def test_no_motion_by_morning_on_spring_forward_day() -> None:
    eng = engine()
    eng.feed([s("pir", "motion", 1, local(2024, 3, 30, 22, 0))], local(2024, 3, 30, 22, 0))
    # 08:30 UTC is 10:30 CEST: past 10:00 (a fixed UTC+1 would say 09:30 and wait).
    assert ids(eng.tick(utc(2024, 3, 31, 8, 30))) == ["inactivity_morning"]


def test_no_motion_for_hours_in_the_day_fires_once_and_rearms() -> None:
    eng = engine()
    t0 = local(2024, 1, 10, 8, 0)
    eng.feed([s("pir", "motion", 1, t0)], t0)
    assert eng.tick(t0 + 4 * HOUR - MIN) == []
    (firing,) = eng.tick(t0 + 4 * HOUR)
    assert firing.rule_id is RuleId.INACTIVITY_DAY
    assert firing.summary == "Ingen rörelse på 4 h, sedan 08:00 / No motion for 4 h, since 08:00"
    assert eng.tick(t0 + 5 * HOUR) == []
    moved = t0 + 6 * HOUR
    eng.feed([s("pir", "motion", 1, moved)], moved)
    assert ids(eng.tick(moved + 4 * HOUR)) == ["inactivity_day"]


def test_quiet_night_is_not_day_inactivity() -> None:
    eng = engine()
    t0 = local(2024, 1, 10, 21, 0)
    eng.feed([s("pir", "motion", 1, t0)], t0)
    assert eng.tick(local(2024, 1, 11, 3, 0)) == []


def test_motion_value_zero_is_not_motion() -> None:
    eng = engine()
    eng.feed([s("pir", "motion", 1, local(2024, 1, 9, 21, 0))], local(2024, 1, 9, 21, 0))
    eng.feed([s("pir", "motion", 0, local(2024, 1, 10, 7, 0))], local(2024, 1, 10, 7, 0))
    assert ids(eng.tick(local(2024, 1, 10, 10, 0))) == ["inactivity_morning"]


def test_recipient_without_motion_sensor_is_not_watched() -> None:
    eng = engine()
    assert eng.tick(local(2024, 1, 10, 12, 0)) == []


# -- battery trend ---------------------------------------------------------------------------


def battery_series(
    t0: int, start: float, per_day: float, days: float, every_h: int = 3
) -> list[Sample]:
    """A battery discharging linearly, read every few hours, with a little noise."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(int(days * 24 / every_h)):
        level = start - per_day * (i * every_h / 24) + rng.normal(0, 0.003)
        out.append(s("batt", "battery", level, t0 + i * every_h * HOUR))
    return out


def run_all(eng: SensorRuleEngine, samples: list[Sample]) -> list[RuleFiring]:
    """Feed samples one at a time, as they would arrive, collecting firings."""
    return [f for sample in samples for f in eng.feed([sample], sample.ts_ms)]


def test_battery_trend_warns_days_before_empty_once() -> None:
    eng = engine()
    t0 = local(2024, 1, 1, 0, 0)
    # 0.40 falling 0.02/day: empty (0.05) after 17.5 days, warn at 7 days left (day 10.5).
    (firing,) = run_all(eng, battery_series(t0, 0.40, 0.02, 20))
    assert firing.kind is FiringKind.TECHNICAL
    assert firing.type == BATTERY_LOW
    assert firing.alarm_type is None
    assert firing.rule_id is RuleId.BATTERY_TREND
    days_in = (firing.at_ms - t0) / DAY
    assert 10.0 <= days_in <= 11.0
    assert "Batteriet beräknas ta slut om" in firing.summary
    assert "Battery predicted empty in" in firing.summary
    assert alarm_received(firing, "x") is None


def test_battery_replacement_rearms() -> None:
    eng = engine()
    t0 = local(2024, 1, 1, 0, 0)
    assert len(run_all(eng, battery_series(t0, 0.30, 0.03, 5))) == 1
    # A new battery: the old slope must not carry over, and the rule is armed again.
    t1 = t0 + 6 * DAY
    (again,) = run_all(eng, battery_series(t1, 0.98, 0.07, 14))
    assert 5.5 <= (again.at_ms - t1) / DAY <= 7.0


def test_flat_battery_is_quiet() -> None:
    eng = engine()
    assert run_all(eng, battery_series(local(2024, 1, 1, 0, 0), 0.6, 0.0, 20)) == []


def test_battery_needs_enough_history() -> None:
    eng = engine()
    t0 = local(2024, 1, 1, 0, 0)
    # Steep, but only 12 hours of readings: too little to trust a trend.
    assert run_all(eng, battery_series(t0, 0.2, 0.2, 0.5, every_h=1)) == []


# -- falls through the engine ----------------------------------------------------------------


def accel(device: str, window: np.ndarray, ts: int) -> Sample:
    """An accelerometer window as the device sends it: a flat x,y,z,... list."""
    return Sample(device, "accel", tuple(float(v) for v in window.reshape(-1)), ts)


def test_fall_window_raises_a_fall_alarm_once_within_refractory() -> None:
    data = generate(60, seed=3)
    falls = [i for i, a in enumerate(data.activities) if a is Activity.FALL]
    walks = [i for i, a in enumerate(data.activities) if a is Activity.WALKING]
    eng = engine()
    t0 = local(2024, 1, 9, 3, 0)
    firings = eng.feed([accel("pendant", data.windows[falls[0]], t0)], t0)
    assert ids(firings) == ["fall"]
    firing = firings[0]
    assert firing.alarm_type is AlarmType.FALL and firing.priority == 2
    assert firing.summary.startswith("Möjligt fall 03:00")
    assert t0 < firing.at_ms < t0 + 6000
    assert max(v for _, v in firing.evidence) > 2.0
    # The same fall reported again (overlapping window) is not a second alarm.
    assert eng.feed([accel("pendant", data.windows[falls[0]], t0 + 1000)], t0) == []
    assert eng.feed([accel("pendant", data.windows[walks[0]], t0 + HOUR)], t0 + HOUR) == []
    later = t0 + 2 * HOUR
    assert ids(eng.feed([accel("pendant", data.windows[falls[1]], later)], later)) == ["fall"]


def test_malformed_accel_window_is_dropped() -> None:
    eng = engine()
    t0 = local(2024, 1, 9, 3, 0)
    assert eng.feed([Sample("pendant", "accel", (1.0, 2.0), t0)], t0) == []
    assert eng.dropped_samples == 1


# -- batches, ordering, mapping --------------------------------------------------------------


def test_unsorted_mixed_batch_equals_sorted_one() -> None:
    t0 = local(2024, 1, 9, 23, 0)
    batch = [
        *temps(t0, [20, 15, 15, 15, 15, 15, 15, 15, 15]),
        s("door", "door_open", 1, t0 + 7 * MIN),
        s("smoke", "smoke", 1, t0 + 3 * MIN),
    ]
    shuffled = [batch[i] for i in np.random.default_rng(5).permutation(len(batch))]
    a = engine().feed(batch, t0 + HOUR)
    b = engine().feed(shuffled, t0 + HOUR)
    assert a == b
    assert ids(a) == ["smoke", "door_night", "temperature_low"]


def test_late_samples_are_dropped_not_replayed() -> None:
    eng = engine()
    t0 = local(2024, 1, 9, 23, 0)
    eng.feed([s("door", "door_open", 0, t0 + 10 * MIN)], t0 + 10 * MIN)
    assert eng.feed([s("door", "door_open", 1, t0)], t0 + 11 * MIN) == []
    assert eng.dropped_samples == 1


def test_unassigned_device_is_ignored_until_assigned() -> None:
    eng = SensorRuleEngine()
    t0 = local(2024, 1, 9, 23, 0)
    assert eng.feed([s("smoke", "smoke", 1, t0)], t0) == []
    eng.assign_device("smoke", "r9")
    eng.feed([s("smoke", "smoke", 0, t0 + 1000)], t0)
    assert ids(eng.feed([s("smoke", "smoke", 1, t0 + 2000)], t0)) == ["smoke"]


def test_telemetry_messages_feed_directly_and_firings_become_core_events() -> None:
    eng = engine()
    t0 = local(2024, 1, 9, 23, 0)
    msg = TelemetryMessage("water", "m-1", t0, "water", 1.0, None)
    (firing,) = eng.feed([msg], t0)
    event = alarm_received(firing, "alarm-1")
    assert event == AlarmReceived(
        device_id="water",
        ref=f"water.{t0}",
        type=AlarmType.WATER,
        device_ts_ms=t0,
        new_id="alarm-1",
    )
    assert valid_id(firing.ref)


def test_feed_columns_across_many_devices() -> None:
    eng = SensorRuleEngine()
    n_dev = 50
    streams = np.array([eng.stream_id(f"t{d}", "temperature") for d in range(n_dev)], dtype=np.intp)
    for d in range(n_dev):
        eng.assign_device(f"t{d}", f"r{d}")
    t0 = local(2024, 1, 9, 12, 0)
    steps = 40
    col_stream = np.repeat(streams, steps)
    col_ts = np.tile(t0 + np.arange(steps, dtype=np.int64) * MIN, n_dev)
    col_val = np.full(n_dev * steps, 21.0)
    cold = col_stream % 2 == 0  # every other device is cold throughout
    col_val[cold] = 12.0
    firings = eng.feed_columns(col_stream, col_val, col_ts, t0 + steps * MIN)
    assert sorted(f.device_id for f in firings) == sorted(f"t{d}" for d in range(0, n_dev, 2))
    assert {f.at_ms for f in firings} == {t0 + 30 * MIN}
    with pytest.raises(ValueError, match="unknown stream"):
        eng.feed_columns(np.array([999]), np.array([1.0]), np.array([t0]), t0)


# -- configuration ---------------------------------------------------------------------------


def test_defaults_are_sensible() -> None:
    rules = RecipientRules()
    assert rules.bed_exit.night.start == time(22, 0)
    assert rules.bed_exit.not_back_within_min == 20
    assert rules.temperature.low_c < rules.temperature.high_c
    assert rules.inactivity.morning_by == time(10, 0)
    assert RecipientRules.model_validate({}) == rules


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"bed_exit": {"not_back_within_mins": 10}}, "Extra inputs are not permitted"),
        ({"bed_exit": {"not_back_within_min": 0}}, "greater than or equal to 1"),
        ({"temperature": {"low_c": 25, "high_c": 20}}, r"low_c \(25.0\).*must be below high_c"),
        ({"door": {"night": {"start": "22:00", "end": "22:00"}}}, "cover some but not all"),
        ({"door": {"night": {"start": "22:00+01:00", "end": "07:00"}}}, "give no zone"),
        ({"inactivity": {"morning_from": "11:00", "morning_by": "10:00"}}, "must be before"),
        ({"inactivity": {"day": {"start": "20:00", "end": "06:00"}}}, "must not wrap"),
        ({"battery": {"window_days": 1, "min_span_hours": 48}}, "must fit inside"),
        ({"water": {"enabled": False}}, "cannot be disabled"),
        ({"fall": {"priority": 0}}, "greater than or equal to 1"),
        ({"heat": {}}, "Extra inputs are not permitted"),
    ],
)
def test_bad_rules_are_rejected_with_a_clear_message(
    config: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        RecipientRules.model_validate(config)


def test_priority_override() -> None:
    eng = engine(RecipientRules.model_validate({"door": {"priority": 2}}))
    t0 = local(2024, 1, 9, 23, 0)
    (firing,) = eng.feed([s("door", "door_open", 1, t0)], t0)
    assert firing.priority == 2


# -- local time ------------------------------------------------------------------------------


def test_local_time_helpers_across_both_transitions() -> None:
    ts = np.array(
        [
            utc(2024, 3, 31, 0, 59),
            utc(2024, 3, 31, 1, 0),
            utc(2024, 10, 27, 0, 59),
            utc(2024, 10, 27, 1, 0),
        ],
        dtype=np.int64,
    )
    assert minute_of_day(ts).tolist() == [1 * 60 + 59, 3 * 60, 2 * 60 + 59, 2 * 60]
    assert in_window(np.array([1380, 30, 420, 600]), 1320, 420).tolist() == [
        True,
        True,
        False,
        False,
    ]
    day = (local(2024, 3, 31, 12) + 2 * HOUR) // DAY
    # 02:30 does not exist on spring-forward day: it is read as 03:30 local.
    assert utc_ms_of_local(day, 150) == local(2024, 3, 31, 3, 30)


# -- properties ------------------------------------------------------------------------------


def reference_firings(values: list[float], low: float, hyst: float, dur: int) -> list[int]:
    """A plain loop: sample indices at which each cold episode first lasted ``dur`` ms."""
    out, active, start, fired = [], False, 0, False
    for i, v in enumerate(values):
        if not active and v < low:
            active, start, fired = True, i * MIN, False
        elif active and v >= low + hyst:
            active = False
        if active and not fired and i * MIN - start >= dur:
            out.append(i)
            fired = True
    return out


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.sampled_from([12.0, 15.9, 16.0, 16.2, 16.5, 20.0]), max_size=120),
    cuts=st.lists(st.integers(0, 120), max_size=6),
)
def test_duration_rule_fires_at_most_once_per_episode_in_any_batching(
    values: list[float], cuts: list[int]
) -> None:
    t0 = local(2024, 1, 9, 12, 0)
    samples = [s("temp", "temperature", v, t0 + i * MIN) for i, v in enumerate(values)]
    eng = engine(RecipientRules(temperature=TemperatureRule(for_min=10, hysteresis_c=0.5)))
    firings: list[RuleFiring] = []
    bounds = [0, *sorted(set(cuts)), len(samples)]
    for a, b in itertools.pairwise(bounds):
        # now_ms is kept at the batch start so only samples, not ticks, can fire.
        firings += eng.feed(samples[a:b], t0)
    expected = reference_firings(values, 16.0, 0.5, 10 * MIN)
    assert [f.at_ms for f in firings] == [t0 + i * MIN for i in expected]
    assert len({f.episode_ms for f in firings}) == len(firings)
