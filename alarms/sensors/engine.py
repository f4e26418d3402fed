"""The sensor rules engine: telemetry batches and the clock in, rule firings out. No I/O.

The gateway hands it batches of samples (``feed``) and calls ``tick`` on a timer; both return
``RuleFiring``s, which the gateway turns into alarms (``alarm_received``). Per (device,
metric) *stream* the engine keeps episode state (see ``episodes.py``) and a ring buffer of
recent samples for evidence; battery readings also go to an hourly ring for the trend.

Hot path: ``feed_columns`` takes columns (stream ids, values, times) and evaluates every
threshold/duration rule for every stream of the batch with whole-array numpy operations;
Python loops only run per *firing* (to build the text) and, in ``feed``, once per message to
map (device, metric) to a stream id - the parse step the gateway does anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from alarms import fall as fall_detector
from alarms.events import AlarmReceived
from alarms.model import PRIORITY, AlarmType
from alarms.sensors import episodes, texts, trend
from alarms.sensors.localtime import (
    HOUR_MS,
    MINUTE_MS,
    TZ_NAME,
    in_window,
    local_day,
    minute_of_day,
    utc_ms_of_local_array,
)
from alarms.sensors.rings import RingStore
from alarms.sensors.rules import FallRule, RecipientRules

_T = TypeVar("_T", bound=np.generic)
_NEVER = np.iinfo(np.int64).min
# Sort key layout: stream number above bit 40, milliseconds since the batch's first sample
# below (2**40 ms is about 35 years); batches outside that fall back to lexsort.
_KEY_SHIFT = 40

# Technical alarms (tekniskt larm) rank below every care alarm and above test alarms.
TECHNICAL_PRIORITY = 6
# Evidence: samples from this long before an episode began up to the firing.
EVIDENCE_LEAD_MS = 10 * MINUTE_MS
EVIDENCE_MAX = 12


class Metric(StrEnum):
    """Telemetry metrics the rules read (MQTT contract, docs/protocol.md)."""

    BED_OCCUPIED = "bed_occupied"
    DOOR_OPEN = "door_open"
    MOTION = "motion"
    TEMPERATURE = "temperature"
    SMOKE = "smoke"
    WATER = "water"
    BATTERY = "battery"
    ACCEL = "accel"


_METRIC_CODE: dict[str, int] = {str(m): i for i, m in enumerate(Metric)}
_CODE = {m: i for i, m in enumerate(Metric)}


class RuleId(StrEnum):
    """Which rule fired; also the first part of a firing's ``ref``."""

    BED_EXIT = "bed_exit"
    DOOR_NIGHT = "door_night"
    TEMPERATURE_LOW = "temperature_low"
    TEMPERATURE_HIGH = "temperature_high"
    SMOKE = "smoke"
    WATER = "water"
    INACTIVITY_MORNING = "inactivity_morning"
    INACTIVITY_DAY = "inactivity_day"
    BATTERY_TREND = "battery_trend"
    FALL = "fall"


class FiringKind(StrEnum):
    """A care alarm for staff, or a technical alarm for technicians."""

    ALARM = "alarm"
    TECHNICAL = "technical"


BATTERY_LOW = "battery_low"

# The rules that run on the episode kernel, the metric each reads and the alarm it raises.
_EPISODE_RULES: dict[RuleId, tuple[Metric, AlarmType]] = {
    RuleId.BED_EXIT: (Metric.BED_OCCUPIED, AlarmType.BED_EXIT),
    RuleId.DOOR_NIGHT: (Metric.DOOR_OPEN, AlarmType.DOOR),
    RuleId.TEMPERATURE_LOW: (Metric.TEMPERATURE, AlarmType.TEMPERATURE),
    RuleId.TEMPERATURE_HIGH: (Metric.TEMPERATURE, AlarmType.TEMPERATURE),
    RuleId.SMOKE: (Metric.SMOKE, AlarmType.SMOKE),
    RuleId.WATER: (Metric.WATER, AlarmType.WATER),
}


@dataclass(frozen=True, slots=True)
class Sample:
    """One telemetry sample. ``devices.contract.TelemetryMessage`` has the same fields."""

    device_id: str
    metric: str
    value: float | tuple[float, ...]
    ts_ms: int


class SampleLike(Protocol):
    """Anything with a sample's four fields (``Sample``, ``TelemetryMessage``)."""

    @property
    def device_id(self) -> str: ...
    @property
    def metric(self) -> str: ...
    @property
    def value(self) -> float | tuple[float, ...]: ...
    @property
    def ts_ms(self) -> int: ...


@dataclass(frozen=True, slots=True)
class RuleFiring:
    """A rule fired: one per episode. ``type`` is the AlarmType value, or ``battery_low``."""

    rule_id: RuleId
    recipient_id: str
    device_id: str
    kind: FiringKind
    type: str
    alarm_type: AlarmType | None
    priority: int
    at_ms: int
    # When the episode began (bed left, door opened, too cold since ...). Stable for the
    # episode, so replaying the same telemetry after a restart yields the same ``ref``.
    episode_ms: int
    summary: str
    evidence: tuple[tuple[int, float], ...]

    @property
    def ref(self) -> str:
        """A per-device unique reference for the alarm, as a device's own ``ref`` would be."""
        return f"{self.rule_id}.{self.episode_ms}"


def alarm_received(firing: RuleFiring, new_id: str) -> AlarmReceived | None:
    """The core event for a care-alarm firing; None for technical firings (not an AlarmType)."""
    if firing.alarm_type is None:
        return None
    return AlarmReceived(
        device_id=firing.device_id,
        ref=firing.ref,
        type=firing.alarm_type,
        device_ts_ms=firing.at_ms,
        new_id=new_id,
    )


def _prio(override: int | None, alarm_type: AlarmType | None) -> int:
    if override is not None:
        return override
    return PRIORITY[alarm_type] if alarm_type is not None else TECHNICAL_PRIORITY


@dataclass(frozen=True, slots=True)
class _Table:
    """Every recipient's rule parameters as arrays indexed by recipient number.

    Rebuilt (a loop over recipients) only when rules or assignments change; the hot path
    then gathers parameters per sample with ``table.field[recipient_of_sample]``.
    """

    enabled: dict[RuleId, npt.NDArray[np.bool_]]
    priority: dict[RuleId, npt.NDArray[np.int64]]
    duration_ms: dict[RuleId, npt.NDArray[np.int64]]
    bed_start: npt.NDArray[np.int64]
    bed_end: npt.NDArray[np.int64]
    door_start: npt.NDArray[np.int64]
    door_end: npt.NDArray[np.int64]
    temp_low: npt.NDArray[np.float64]
    temp_high: npt.NDArray[np.float64]
    temp_hyst: npt.NDArray[np.float64]
    morning_from: npt.NDArray[np.int64]
    morning_by: npt.NDArray[np.int64]
    day_start: npt.NDArray[np.int64]
    day_end: npt.NDArray[np.int64]
    quiet_ms: npt.NDArray[np.int64]
    bat_empty: npt.NDArray[np.float64]
    bat_warn_days: npt.NDArray[np.float64]
    bat_window_ms: npt.NDArray[np.int64]
    bat_min_readings: npt.NDArray[np.int64]
    bat_min_span_ms: npt.NDArray[np.int64]

    @classmethod
    def build(cls, rules: list[RecipientRules]) -> _Table:
        """Arrays from a list of per-recipient rules."""

        def i64(values: Iterable[int]) -> npt.NDArray[np.int64]:
            return np.array(list(values), dtype=np.int64)

        def f64(values: Iterable[float]) -> npt.NDArray[np.float64]:
            return np.array(list(values), dtype=np.float64)

        def on(values: Iterable[bool]) -> npt.NDArray[np.bool_]:
            return np.array(list(values), dtype=np.bool_)

        enabled = {
            RuleId.BED_EXIT: on(r.bed_exit.enabled for r in rules),
            RuleId.DOOR_NIGHT: on(r.door.enabled for r in rules),
            RuleId.TEMPERATURE_LOW: on(r.temperature.enabled for r in rules),
            RuleId.TEMPERATURE_HIGH: on(r.temperature.enabled for r in rules),
            RuleId.SMOKE: on(True for _ in rules),
            RuleId.WATER: on(True for _ in rules),
            RuleId.INACTIVITY_MORNING: on(r.inactivity.enabled for r in rules),
            RuleId.INACTIVITY_DAY: on(r.inactivity.enabled for r in rules),
            RuleId.BATTERY_TREND: on(r.battery.enabled for r in rules),
        }
        priority = {
            RuleId.BED_EXIT: i64(_prio(r.bed_exit.priority, AlarmType.BED_EXIT) for r in rules),
            RuleId.DOOR_NIGHT: i64(_prio(r.door.priority, AlarmType.DOOR) for r in rules),
            RuleId.TEMPERATURE_LOW: i64(
                _prio(r.temperature.priority, AlarmType.TEMPERATURE) for r in rules
            ),
            RuleId.TEMPERATURE_HIGH: i64(
                _prio(r.temperature.priority, AlarmType.TEMPERATURE) for r in rules
            ),
            RuleId.SMOKE: i64(_prio(r.smoke.priority, AlarmType.SMOKE) for r in rules),
            RuleId.WATER: i64(_prio(r.water.priority, AlarmType.WATER) for r in rules),
            RuleId.INACTIVITY_MORNING: i64(
                _prio(r.inactivity.priority, AlarmType.INACTIVITY) for r in rules
            ),
            RuleId.INACTIVITY_DAY: i64(
                _prio(r.inactivity.priority, AlarmType.INACTIVITY) for r in rules
            ),
            RuleId.BATTERY_TREND: i64(_prio(r.battery.priority, None) for r in rules),
        }
        zero = i64(0 for _ in rules)
        temp_ms = i64(r.temperature.for_min * MINUTE_MS for r in rules)
        duration = {
            RuleId.BED_EXIT: i64(r.bed_exit.not_back_within_min * MINUTE_MS for r in rules),
            RuleId.DOOR_NIGHT: zero,
            RuleId.TEMPERATURE_LOW: temp_ms,
            RuleId.TEMPERATURE_HIGH: temp_ms,
            RuleId.SMOKE: zero,
            RuleId.WATER: zero,
        }
        return cls(
            enabled=enabled,
            priority=priority,
            duration_ms=duration,
            bed_start=i64(r.bed_exit.night.start_min for r in rules),
            bed_end=i64(r.bed_exit.night.end_min for r in rules),
            door_start=i64(r.door.night.start_min for r in rules),
            door_end=i64(r.door.night.end_min for r in rules),
            temp_low=f64(r.temperature.low_c for r in rules),
            temp_high=f64(r.temperature.high_c for r in rules),
            temp_hyst=f64(r.temperature.hysteresis_c for r in rules),
            morning_from=i64(
                r.inactivity.morning_from.hour * 60 + r.inactivity.morning_from.minute
                for r in rules
            ),
            morning_by=i64(
                r.inactivity.morning_by.hour * 60 + r.inactivity.morning_by.minute for r in rules
            ),
            day_start=i64(r.inactivity.day.start_min for r in rules),
            day_end=i64(r.inactivity.day.end_min for r in rules),
            quiet_ms=i64(round(r.inactivity.quiet_hours * HOUR_MS) for r in rules),
            bat_empty=f64(r.battery.empty_level for r in rules),
            bat_warn_days=f64(r.battery.warn_days for r in rules),
            bat_window_ms=i64(round(r.battery.window_days * 24 * HOUR_MS) for r in rules),
            bat_min_readings=i64(r.battery.min_readings for r in rules),
            bat_min_span_ms=i64(round(r.battery.min_span_hours * HOUR_MS) for r in rules),
        )


def _grow(arr: npt.NDArray[_T], size: int, fill: object) -> npt.NDArray[_T]:
    if arr.size >= size:
        return arr
    out = np.full(max(size, 2 * arr.size, 64), fill, dtype=arr.dtype)
    out[: arr.size] = arr
    return out


class SensorRuleEngine:
    """Per-recipient sensor rules over a telemetry stream. Not thread-safe; one owner."""

    def __init__(
        self,
        *,
        default_rules: RecipientRules | None = None,
        tz_name: str = TZ_NAME,
        evidence_capacity: int = 64,
        battery_capacity: int = 24 * 21,
    ) -> None:
        self._default = default_rules or RecipientRules()
        self._tz = tz_name
        self._streams: dict[tuple[str, str], int] = {}
        self._stream_device: list[str] = []
        self._device_streams: dict[str, list[int]] = {}
        self._n = 0
        self._metric_code = np.full(0, -1, dtype=np.int64)
        self._stream_rec = np.full(0, -1, dtype=np.intp)
        self._last_ts = np.full(0, _NEVER, dtype=np.int64)
        self._last_motion = np.full(0, -1, dtype=np.int64)
        self._bat_fired = np.zeros(0, dtype=np.bool_)
        self._bat_level = np.zeros(0, dtype=np.float64)

        self._device_rec: dict[str, str] = {}
        self._rec_index: dict[str, int] = {}
        self._rec_ids: list[str] = []
        self._rules: dict[str, RecipientRules] = {}
        self._presence = np.zeros(0, dtype=np.bool_)
        self._morning_done = np.full(0, -1, dtype=np.int64)
        self._day_anchor = np.full(0, -1, dtype=np.int64)
        self._table: _Table | None = None

        self._episodes = {rule: episodes.EpisodeState.empty(0) for rule in _EPISODE_RULES}
        self._ring = RingStore(evidence_capacity)
        # One battery reading per hour is plenty for a slope over days.
        self._battery_ring = RingStore(battery_capacity, bucket_ms=HOUR_MS)
        self._last_fall_ms: dict[str, int] = {}
        self.dropped_samples = 0

    # -- configuration ---------------------------------------------------------------------

    def _recipient(self, recipient_id: str) -> int:
        index = self._rec_index.get(recipient_id)
        if index is None:
            index = len(self._rec_ids)
            self._rec_index[recipient_id] = index
            self._rec_ids.append(recipient_id)
            self._presence = _grow(self._presence, index + 1, False)
            self._morning_done = _grow(self._morning_done, index + 1, -1)
            self._day_anchor = _grow(self._day_anchor, index + 1, -1)
            self._table = None
        return index

    def assign_device(self, device_id: str, recipient_id: str | None) -> None:
        """Say whose home a device is in (None: unassigned; its samples are ignored)."""
        if recipient_id is None:
            self._device_rec.pop(device_id, None)
        else:
            self._device_rec[device_id] = recipient_id
            self._recipient(recipient_id)
        rec = -1 if recipient_id is None else self._rec_index[recipient_id]
        for stream in self._device_streams.get(device_id, ()):
            self._stream_rec[stream] = rec

    def set_rules(self, recipient_id: str, rules: RecipientRules) -> None:
        """Replace a recipient's rules. Open episodes keep their state."""
        self._rules[recipient_id] = rules
        self._recipient(recipient_id)
        self._table = None

    def rules_for(self, recipient_id: str) -> RecipientRules:
        """The rules in force for a recipient (the defaults unless set)."""
        return self._rules.get(recipient_id, self._default)

    def set_presence(self, recipient_id: str, on_site: bool) -> None:
        """Staff registered on site (or left): suppresses the door-at-night rule meanwhile."""
        self._presence[self._recipient(recipient_id)] = on_site

    def stream_id(self, device_id: str, metric: str) -> int:
        """The stream number of (device, metric), allocated on first use."""
        key = (device_id, metric)
        stream = self._streams.get(key)
        if stream is not None:
            return stream
        stream = self._n
        self._n += 1
        self._streams[key] = stream
        self._stream_device.append(device_id)
        self._device_streams.setdefault(device_id, []).append(stream)
        size = self._n
        self._metric_code = _grow(self._metric_code, size, -1)
        self._stream_rec = _grow(self._stream_rec, size, -1)
        self._last_ts = _grow(self._last_ts, size, _NEVER)
        self._last_motion = _grow(self._last_motion, size, -1)
        self._bat_fired = _grow(self._bat_fired, size, False)
        self._bat_level = _grow(self._bat_level, size, 0.0)
        self._metric_code[stream] = _METRIC_CODE.get(metric, -1)
        recipient = self._device_rec.get(device_id)
        self._stream_rec[stream] = -1 if recipient is None else self._rec_index[recipient]
        for state in self._episodes.values():
            state.grow(self._metric_code.size)
        return stream

    def _tables(self) -> _Table:
        if self._table is None:
            self._table = _Table.build([self.rules_for(r) for r in self._rec_ids])
        return self._table

    # -- input -------------------------------------------------------------------------------

    def feed(self, samples: Iterable[SampleLike], now_ms: int) -> list[RuleFiring]:
        """Evaluate a batch of samples (any order, any devices), then ``tick(now_ms)``.

        Accepts ``Sample``s or ``devices.contract.TelemetryMessage``s. Accelerometer windows
        (metric ``accel``, value a flat x,y,z,... list) go to the fall detector.
        """
        streams: list[int] = []
        values: list[float] = []
        times: list[int] = []
        accel: list[SampleLike] = []
        for sample in samples:
            if isinstance(sample.value, tuple):
                if sample.metric == Metric.ACCEL:
                    accel.append(sample)
                continue
            streams.append(self.stream_id(sample.device_id, sample.metric))
            values.append(sample.value)
            times.append(sample.ts_ms)
        firings = self._ingest(
            np.array(streams, dtype=np.intp),
            np.array(values, dtype=np.float64),
            np.array(times, dtype=np.int64),
        )
        firings += self._feed_accel(accel)
        firings += self.tick(now_ms)
        return sorted(firings, key=lambda f: (f.at_ms, f.priority))

    def feed_columns(
        self,
        streams: npt.NDArray[np.intp],
        values: npt.NDArray[np.float64],
        ts_ms: npt.NDArray[np.int64],
        now_ms: int,
    ) -> list[RuleFiring]:
        """``feed`` for scalar samples already as columns (stream ids from ``stream_id``)."""
        if not streams.shape == values.shape == ts_ms.shape or streams.ndim != 1:
            raise ValueError("streams, values and ts_ms must be 1-D arrays of equal length")
        if streams.size and (int(streams.min()) < 0 or int(streams.max()) >= self._n):
            raise ValueError("unknown stream id; allocate streams with stream_id()")
        firings = self._ingest(
            streams.astype(np.intp, copy=False),
            values.astype(np.float64, copy=False),
            ts_ms.astype(np.int64, copy=False),
        )
        firings += self.tick(now_ms)
        return sorted(firings, key=lambda f: (f.at_ms, f.priority))

    def _ingest(
        self,
        stream: npt.NDArray[np.intp],
        value: npt.NDArray[np.float64],
        ts: npt.NDArray[np.int64],
    ) -> list[RuleFiring]:
        if stream.size == 0:
            return []
        table = self._tables()
        stream, value, ts = _sorted(stream, value, ts)
        # Samples older than what a stream already delivered (a late resend) cannot change
        # an episode that has moved on; non-finite values are sensor faults, not readings.
        keep = (ts >= self._last_ts[stream]) & np.isfinite(value)
        if not keep.all():
            self.dropped_samples += int(np.size(keep) - np.count_nonzero(keep))
            stream, value, ts = stream[keep], value[keep], ts[keep]
            if stream.size == 0:
                return []
        rec = self._stream_rec[stream]
        code = self._metric_code[stream]
        firings: list[RuleFiring] = []
        for rule, (metric, alarm_type) in _EPISODE_RULES.items():
            mask = (code == _CODE[metric]) & (rec >= 0)
            if not mask.any():
                continue
            mask[mask] = table.enabled[rule][rec[mask]]
            if mask.any():
                firings += self._episode_rule(
                    rule, alarm_type, table, stream[mask], value[mask], ts[mask]
                )

        motion = (code == _CODE[Metric.MOTION]) & (value > 0)
        np.maximum.at(self._last_motion, stream[motion], ts[motion])

        battery = code == _CODE[Metric.BATTERY]
        if battery.any():
            self._battery_ring.write(stream[battery], ts[battery], value[battery])
            firings += self._battery_rule(table, np.unique(stream[battery]))

        self._ring.write(stream, ts, value)
        ends = np.append(stream[1:] != stream[:-1], True)
        self._last_ts[stream[ends]] = ts[ends]
        return firings

    # -- the episode rules -------------------------------------------------------------------

    def _episode_rule(
        self,
        rule: RuleId,
        alarm_type: AlarmType,
        table: _Table,
        stream: npt.NDArray[np.intp],
        value: npt.NDArray[np.float64],
        ts: npt.NDArray[np.int64],
    ) -> list[RuleFiring]:
        rec = self._stream_rec[stream]
        if rule is RuleId.BED_EXIT:
            enter = value < 0.5  # bed empty
            leave = ~enter
            gate = in_window(minute_of_day(ts, self._tz), table.bed_start[rec], table.bed_end[rec])
        elif rule is RuleId.DOOR_NIGHT:
            enter = value >= 0.5
            leave = ~enter
            night = in_window(
                minute_of_day(ts, self._tz), table.door_start[rec], table.door_end[rec]
            )
            gate = night & ~self._presence[rec]
        elif rule is RuleId.TEMPERATURE_LOW:
            low = table.temp_low[rec]
            enter = value < low
            leave = value >= low + table.temp_hyst[rec]
            gate = np.ones(stream.size, dtype=np.bool_)
        elif rule is RuleId.TEMPERATURE_HIGH:
            high = table.temp_high[rec]
            enter = value > high
            leave = value <= high - table.temp_hyst[rec]
            gate = np.ones(stream.size, dtype=np.bool_)
        else:  # smoke, water: a detector's alarm state
            enter = value >= 0.5
            leave = ~enter
            gate = np.ones(stream.size, dtype=np.bool_)
        due = episodes.run(
            self._episodes[rule],
            stream,
            ts,
            enter,
            leave,
            gate,
            table.duration_ms[rule][rec],
        )
        out: list[RuleFiring] = []
        for i, start in zip(due.index.tolist(), due.episode_ms.tolist(), strict=True):
            s = int(stream[i])
            lo = int(np.searchsorted(stream, s))
            before_ts, before_val = self._ring.history(s)
            ev_ts = np.concatenate([before_ts, ts[lo : i + 1]])
            ev_val = np.concatenate([before_val, value[lo : i + 1]])
            out.append(
                self._episode_firing(
                    rule, alarm_type, table, s, int(ts[i]), start, float(value[i]), ev_ts, ev_val
                )
            )
        return out

    def _episode_firing(
        self,
        rule: RuleId,
        alarm_type: AlarmType,
        table: _Table,
        stream: int,
        at_ms: int,
        start_ms: int,
        value: float,
        ev_ts: npt.NDArray[np.int64],
        ev_val: npt.NDArray[np.float64],
    ) -> RuleFiring:
        rec = int(self._stream_rec[stream])
        duration_min = int(table.duration_ms[rule][rec]) // MINUTE_MS
        if rule is RuleId.BED_EXIT:
            summary = texts.bed_exit(start_ms, duration_min, self._tz)
        elif rule is RuleId.DOOR_NIGHT:
            summary = texts.door(start_ms, self._tz)
        elif rule in (RuleId.TEMPERATURE_LOW, RuleId.TEMPERATURE_HIGH):
            is_low = rule is RuleId.TEMPERATURE_LOW
            limit = table.temp_low[rec] if is_low else table.temp_high[rec]
            summary = texts.temperature(
                low=is_low,
                value=value,
                limit=float(limit),
                since_ms=start_ms,
                minutes=duration_min,
                tz=self._tz,
            )
        elif rule is RuleId.SMOKE:
            summary = texts.smoke(start_ms, self._tz)
        else:
            summary = texts.water(start_ms, self._tz)
        return RuleFiring(
            rule_id=rule,
            recipient_id=self._rec_ids[rec],
            device_id=self._stream_device[stream],
            kind=FiringKind.ALARM,
            type=str(alarm_type),
            alarm_type=alarm_type,
            priority=int(table.priority[rule][rec]),
            at_ms=at_ms,
            episode_ms=start_ms,
            summary=summary,
            evidence=_evidence(ev_ts, ev_val, start_ms - EVIDENCE_LEAD_MS, at_ms),
        )

    # -- battery trend -----------------------------------------------------------------------

    def _battery_rule(self, table: _Table, streams: npt.NDArray[np.intp]) -> list[RuleFiring]:
        rec = self._stream_rec[streams]
        streams = streams[rec >= 0]
        rec = rec[rec >= 0]
        on = table.enabled[RuleId.BATTERY_TREND][rec]
        streams, rec = streams[on], rec[on]
        if streams.size == 0:
            return []
        ts, val, valid = self._battery_ring.matrix(streams)
        fc = trend.forecast(
            ts,
            val,
            valid,
            empty_level=table.bat_empty[rec],
            window_ms=table.bat_window_ms[rec],
            min_readings=table.bat_min_readings[rec],
            min_span_ms=table.bat_min_span_ms[rec],
        )
        warn = table.bat_warn_days[rec]
        # Re-arm once the forecast is comfortably clear again, or the battery was replaced.
        rearm = self._bat_fired[streams] & (
            (fc.ok & (fc.days_left > 1.5 * warn))
            | (fc.last_value > self._bat_level[streams] + trend.REPLACEMENT_JUMP)
        )
        self._bat_fired[streams[rearm]] = False
        fire = fc.ok & (fc.days_left <= warn) & ~self._bat_fired[streams]
        self._bat_fired[streams[fire]] = True
        self._bat_level[streams[fire]] = fc.last_value[fire]
        out: list[RuleFiring] = []
        for j in np.flatnonzero(fire).tolist():
            s = int(streams[j])
            at = int(fc.last_ts[j])
            row_ts, row_val = ts[j][valid[j]], val[j][valid[j]]
            out.append(
                RuleFiring(
                    rule_id=RuleId.BATTERY_TREND,
                    recipient_id=self._rec_ids[int(rec[j])],
                    device_id=self._stream_device[s],
                    kind=FiringKind.TECHNICAL,
                    type=BATTERY_LOW,
                    alarm_type=None,
                    priority=int(table.priority[RuleId.BATTERY_TREND][int(rec[j])]),
                    at_ms=at,
                    episode_ms=at,
                    summary=texts.battery(float(fc.days_left[j]), float(fc.last_value[j])),
                    evidence=_evidence(row_ts, row_val, int(row_ts[0]), at),
                )
            )
        return out

    # -- falls -------------------------------------------------------------------------------

    def _feed_accel(self, samples: list[SampleLike]) -> list[RuleFiring]:
        # Windows of the same length and settings are stacked and judged in one call.
        groups: dict[tuple[int, FallRule], list[SampleLike]] = {}
        for sample in samples:
            recipient = self._device_rec.get(sample.device_id)
            if recipient is None or not isinstance(sample.value, tuple):
                continue
            rule = self.rules_for(recipient).fall
            if not rule.enabled:
                continue
            size = len(sample.value)
            if size < 3 or size % 3:
                self.dropped_samples += 1  # not a whole number of x,y,z triples
                continue
            groups.setdefault((size, rule), []).append(sample)
        out: list[RuleFiring] = []
        for (_, rule), group in groups.items():
            params = fall_detector.FallParams(
                sample_rate_hz=rule.sample_rate_hz,
                impact_g=rule.impact_g,
                min_angle_deg=rule.min_angle_deg,
                max_still_std_g=rule.max_still_std_g,
            )
            windows = np.array([s.value for s in group], dtype=np.float64).reshape(
                len(group), -1, 3
            )
            verdict = fall_detector.detect(windows, params)
            mags = fall_detector.magnitude(windows)
            step_ms = 1000.0 / rule.sample_rate_hz
            for j in np.flatnonzero(verdict.is_fall).tolist():
                sample = group[j]
                peak_at = int(verdict.impact_index[j])
                at = sample.ts_ms + round(peak_at * step_ms)
                last = self._last_fall_ms.get(sample.device_id)
                if last is not None and abs(at - last) < rule.refractory_s * 1000:
                    continue
                self._last_fall_ms[sample.device_id] = at
                offsets = (-1.0, -0.5, -0.2, 0.0, 0.2, 0.5, 1.0, 2.0)
                picks = sorted(
                    {
                        min(max(peak_at + round(o * rule.sample_rate_hz), 0), windows.shape[1] - 1)
                        for o in offsets
                    }
                )
                recipient = self._device_rec[sample.device_id]
                out.append(
                    RuleFiring(
                        rule_id=RuleId.FALL,
                        recipient_id=recipient,
                        device_id=sample.device_id,
                        kind=FiringKind.ALARM,
                        type=str(AlarmType.FALL),
                        alarm_type=AlarmType.FALL,
                        priority=_prio(rule.priority, AlarmType.FALL),
                        at_ms=at,
                        episode_ms=at,
                        summary=texts.fall(
                            at, float(verdict.peak_g[j]), float(verdict.angle_deg[j]), self._tz
                        ),
                        evidence=tuple(
                            (sample.ts_ms + round(k * step_ms), round(float(mags[j, k]), 3))
                            for k in picks
                        ),
                    )
                )
        return out

    # -- the clock ---------------------------------------------------------------------------

    def tick(self, now_ms: int) -> list[RuleFiring]:
        """Fire rules that fire on absence: not back in bed, still too cold, no motion."""
        table = self._tables()
        out: list[RuleFiring] = []
        n = self._n
        rec = self._stream_rec[:n]
        has_rec = rec >= 0
        safe_rec = np.where(has_rec, rec, 0)
        for rule, (metric, alarm_type) in _EPISODE_RULES.items():
            if not table.enabled[rule].size:
                break
            enabled = (
                has_rec & (self._metric_code[:n] == _CODE[metric]) & table.enabled[rule][safe_rec]
            )
            duration = table.duration_ms[rule][safe_rec]
            for s in episodes.due_on_tick(self._episodes[rule], enabled, duration, now_ms):
                state = self._episodes[rule]
                ring_ts, ring_val = self._ring.history(int(s))
                last_value = float(ring_val[-1]) if ring_val.size else float("nan")
                out.append(
                    self._episode_firing(
                        rule,
                        alarm_type,
                        table,
                        int(s),
                        now_ms,
                        int(state.start_ms[s]),
                        last_value,
                        ring_ts,
                        ring_val,
                    )
                )
        out += self._inactivity(table, now_ms)
        return out

    def _inactivity(self, table: _Table, now_ms: int) -> list[RuleFiring]:
        count = len(self._rec_ids)
        if count == 0:
            return []
        n = self._n
        motion = np.flatnonzero(
            (self._metric_code[:n] == _CODE[Metric.MOTION]) & (self._stream_rec[:n] >= 0)
        )
        # Only recipients with a motion sensor that has reported at least once are watched;
        # a silent sensor is the supervision's business (a technical alarm), not inactivity.
        has_sensor = np.zeros(count, dtype=np.bool_)
        has_sensor[self._stream_rec[motion]] = True
        last = np.full(count, -1, dtype=np.int64)
        np.maximum.at(last, self._stream_rec[motion], self._last_motion[motion])

        day = local_day(now_ms, self._tz)
        watch = has_sensor & table.enabled[RuleId.INACTIVITY_MORNING]
        from_ms = utc_ms_of_local_array(day, table.morning_from, self._tz)
        by_ms = utc_ms_of_local_array(day, table.morning_by, self._tz)
        day_start = utc_ms_of_local_array(day, table.day_start, self._tz)
        day_end = utc_ms_of_local_array(day, table.day_end, self._tz)

        checked = watch & (now_ms >= by_ms) & (self._morning_done[:count] != day)
        morning = checked & (last < from_ms)
        self._morning_done[:count][checked] = day

        anchor = np.maximum(last, day_start)
        quiet = (
            watch
            & (now_ms >= day_start)
            & (now_ms < day_end)
            & (now_ms - anchor >= table.quiet_ms)
            & (self._day_anchor[:count] != anchor)
            & ~morning
        )
        # The morning alarm and a day-time one for the same silence would be one situation
        # reported twice: after the morning alarm the day rule waits for new motion.
        self._day_anchor[:count][morning | quiet] = anchor[morning | quiet]

        out: list[RuleFiring] = []
        for r in np.flatnonzero(morning | quiet).tolist():
            streams = motion[self._stream_rec[motion] == r]
            best = int(streams[np.argmax(self._last_motion[streams])])
            ring_ts, ring_val = self._ring.history(best)
            last_ms = int(last[r]) if last[r] >= 0 else None
            if morning[r]:
                rule = RuleId.INACTIVITY_MORNING
                summary = texts.no_motion_morning(int(by_ms[r]), last_ms, self._tz)
                episode = int(from_ms[r])
            else:
                rule = RuleId.INACTIVITY_DAY
                hours = float(table.quiet_ms[r]) / HOUR_MS
                summary = texts.no_motion_day(hours, int(anchor[r]), self._tz)
                episode = int(anchor[r])
            out.append(
                RuleFiring(
                    rule_id=rule,
                    recipient_id=self._rec_ids[r],
                    device_id=self._stream_device[best],
                    kind=FiringKind.ALARM,
                    type=str(AlarmType.INACTIVITY),
                    alarm_type=AlarmType.INACTIVITY,
                    priority=int(table.priority[rule][r]),
                    at_ms=now_ms,
                    episode_ms=episode,
                    summary=summary,
                    evidence=_evidence(ring_ts, ring_val, -1, now_ms),
                )
            )
        return out


def _sorted(
    stream: npt.NDArray[np.intp], value: npt.NDArray[np.float64], ts: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """The batch ordered by (stream, time); a stable sort keeps equal-time samples in order."""
    if stream.size < 2:
        return stream, value, ts
    ds = np.diff(stream)
    if bool(np.all((ds > 0) | ((ds == 0) & (np.diff(ts) >= 0)))):
        return stream, value, ts
    t_min = int(ts.min())
    if int(ts.max()) - t_min < (1 << _KEY_SHIFT) and int(stream.max()) < (1 << 22):
        # One int64 key sorts three times faster than lexsort on two columns.
        key = (stream.astype(np.int64) << _KEY_SHIFT) | (ts - t_min)
        order = np.argsort(key, kind="stable")
    else:
        order = np.lexsort((ts, stream))
    return stream[order], value[order], ts[order]


def _evidence(
    ts: npt.NDArray[np.int64], val: npt.NDArray[np.float64], lo_ms: int, hi_ms: int
) -> tuple[tuple[int, float], ...]:
    """Samples in [lo, hi] and the one before (the state the episode left); the first few
    and the latest if there are more than EVIDENCE_MAX."""
    inside = (ts >= lo_ms) & (ts <= hi_ms)
    before = np.flatnonzero(ts < lo_ms)
    if before.size:
        inside[before[-1]] = True
    idx = np.flatnonzero(inside)
    if idx.size > EVIDENCE_MAX:
        head = EVIDENCE_MAX // 3
        idx = np.concatenate([idx[:head], idx[-(EVIDENCE_MAX - head) :]])
    return tuple((int(ts[i]), float(val[i])) for i in idx.tolist())
