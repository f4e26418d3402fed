"""Device models: what each simulated device type sends, how often, and what its payloads hold.

Pure: no I/O and no clocks. Every function that needs time or randomness takes them as
arguments, so a seeded ``random.Random`` reproduces a device's behaviour exactly.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypeAlias

from alarms.model import AlarmType
from devices.contract import valid_id

JsonValue: TypeAlias = str | int | float | bool | list[float] | None
Payload: TypeAlias = dict[str, JsonValue]


class DeviceKind(StrEnum):
    """Simulated device types (the ``type`` of a provisioned device)."""

    ALARM_UNIT = "alarm_unit"
    FALL_DETECTOR = "fall_detector"
    BED_SENSOR = "bed_sensor"
    DOOR_SENSOR = "door_sensor"
    MOTION_SENSOR = "motion_sensor"
    TEMPERATURE_SENSOR = "temperature_sensor"
    SMOKE_DETECTOR = "smoke_detector"
    WATER_SENSOR = "water_sensor"
    NIGHT_CAMERA = "night_camera"


@dataclass(frozen=True, slots=True)
class DeviceModel:
    """The behaviour of one device type.

    ``alarm_weights`` says which alarm types a device raises spontaneously and how often
    relative to each other; ``night_alarms`` are the ones that mostly happen while the person
    should be asleep (bed exit, door at night).
    """

    kind: DeviceKind
    heartbeat_s: float
    telemetry_s: float | None
    alarm_weights: Mapping[AlarmType, float]
    battery_drain_per_hour: float
    firmware: str
    night_alarms: frozenset[AlarmType] = frozenset()
    mains_powered: bool = False


# Heartbeat intervals follow the supervision levels of the design brief (minute level: 60-180 s);
# mains-powered units report more often than battery sensors, which must last a year or more.
# Battery drain is exaggerated (percent per hour, not per month) so a demo shows it moving.
MODELS: dict[DeviceKind, DeviceModel] = {
    m.kind: m
    for m in (
        DeviceModel(
            DeviceKind.ALARM_UNIT, 60.0, None, {AlarmType.MANUAL: 1.0}, 0.002, "au-4.2.1",
            mains_powered=True,
        ),
        DeviceModel(
            DeviceKind.FALL_DETECTOR, 90.0, 30.0, {AlarmType.FALL: 0.7, AlarmType.MANUAL: 0.3},
            0.01, "fd-2.0.3",
        ),
        DeviceModel(
            DeviceKind.BED_SENSOR, 120.0, 30.0, {AlarmType.BED_EXIT: 1.0}, 0.004, "bs-1.8.0",
            night_alarms=frozenset({AlarmType.BED_EXIT}),
        ),
        DeviceModel(
            DeviceKind.DOOR_SENSOR, 120.0, 60.0, {AlarmType.DOOR: 1.0}, 0.003, "ds-1.1.4",
            night_alarms=frozenset({AlarmType.DOOR}),
        ),
        DeviceModel(
            DeviceKind.MOTION_SENSOR, 120.0, 30.0, {AlarmType.INACTIVITY: 1.0}, 0.004,
            "ms-3.0.0",
        ),
        DeviceModel(
            DeviceKind.TEMPERATURE_SENSOR, 180.0, 60.0, {AlarmType.TEMPERATURE: 1.0}, 0.002,
            "ts-1.0.9",
        ),
        DeviceModel(
            DeviceKind.SMOKE_DETECTOR, 180.0, 120.0, {AlarmType.SMOKE: 1.0}, 0.001, "sd-5.1.0",
        ),
        DeviceModel(
            DeviceKind.WATER_SENSOR, 180.0, 120.0, {AlarmType.WATER: 1.0}, 0.001, "ws-2.2.2",
        ),
        DeviceModel(DeviceKind.NIGHT_CAMERA, 60.0, None, {}, 0.0, "nc-7.3.1", mains_powered=True),
    )
}

# Demo and provisioning files name types loosely ("camera", "bed", "smoke"); map the words to
# models so the simulator can speak for any provisioned device.
_ALIASES: dict[str, DeviceKind] = {
    "alarm": DeviceKind.ALARM_UNIT,
    "button": DeviceKind.ALARM_UNIT,
    "base": DeviceKind.ALARM_UNIT,
    "trygghetslarm": DeviceKind.ALARM_UNIT,
    "fall": DeviceKind.FALL_DETECTOR,
    "bed": DeviceKind.BED_SENSOR,
    "door": DeviceKind.DOOR_SENSOR,
    "motion": DeviceKind.MOTION_SENSOR,
    "pir": DeviceKind.MOTION_SENSOR,
    "temp": DeviceKind.TEMPERATURE_SENSOR,
    "smoke": DeviceKind.SMOKE_DETECTOR,
    "fire": DeviceKind.SMOKE_DETECTOR,
    "water": DeviceKind.WATER_SENSOR,
    "leak": DeviceKind.WATER_SENSOR,
    "camera": DeviceKind.NIGHT_CAMERA,
    "cam": DeviceKind.NIGHT_CAMERA,
}

PROFILES: dict[str, tuple[DeviceKind, ...]] = {
    "alarms": (DeviceKind.ALARM_UNIT, DeviceKind.FALL_DETECTOR),
    "sensors": (
        DeviceKind.BED_SENSOR,
        DeviceKind.DOOR_SENSOR,
        DeviceKind.MOTION_SENSOR,
        DeviceKind.TEMPERATURE_SENSOR,
        DeviceKind.SMOKE_DETECTOR,
        DeviceKind.WATER_SENSOR,
    ),
    # A typical home: one alarm unit per person, about half with a fall detector, sensors
    # in some homes, a few night cameras.
    "mixed": (
        DeviceKind.ALARM_UNIT,
        DeviceKind.ALARM_UNIT,
        DeviceKind.ALARM_UNIT,
        DeviceKind.FALL_DETECTOR,
        DeviceKind.BED_SENSOR,
        DeviceKind.DOOR_SENSOR,
        DeviceKind.MOTION_SENSOR,
        DeviceKind.TEMPERATURE_SENSOR,
        DeviceKind.SMOKE_DETECTOR,
        DeviceKind.WATER_SENSOR,
        DeviceKind.NIGHT_CAMERA,
    ),
}


def kind_of(type_name: str) -> DeviceKind:
    """The model for a provisioned device type, matching loosely; alarm unit if unknown."""
    name = type_name.strip().lower()
    try:
        return DeviceKind(name)
    except ValueError:
        pass
    for word, kind in _ALIASES.items():
        if word in name:
            return kind
    return DeviceKind.ALARM_UNIT


@dataclass(frozen=True, slots=True)
class Person:
    """The care recipient a device lives with: when they sleep and how active they are."""

    sleep_hour: float = 22.0
    wake_hour: float = 7.0
    activity: float = 0.6  # 0 = bedridden, 1 = very active

    def asleep(self, hour: float) -> bool:
        """Whether the person is (normally) in bed at ``hour`` (0-24, local)."""
        if self.sleep_hour > self.wake_hour:
            return hour >= self.sleep_hour or hour < self.wake_hour
        return self.sleep_hour <= hour < self.wake_hour

    def activity_level(self, hour: float) -> float:
        """0..1: how likely the person is to be moving about at ``hour``."""
        if self.asleep(hour):
            return 0.05 * self.activity
        # Most activity late morning and early evening, a dip after lunch.
        shape = 0.6 + 0.4 * math.sin((hour - 8.0) / 14.0 * 2.0 * math.pi) ** 2
        return max(0.0, min(1.0, self.activity * shape))


def random_person(rng: random.Random) -> Person:
    """A plausible person: bedtime 20-24, rising 5-9, varied activity."""
    return Person(
        sleep_hour=round(rng.uniform(20.0, 24.0), 2) % 24.0,
        wake_hour=round(rng.uniform(5.0, 9.0), 2),
        activity=round(rng.uniform(0.2, 0.9), 2),
    )


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One simulated device: its id, model and person."""

    device_id: str
    kind: DeviceKind
    person: Person = field(default_factory=Person)

    def __post_init__(self) -> None:
        if not valid_id(self.device_id):
            msg = f"device id {self.device_id!r} is not 1-64 chars of [A-Za-z0-9-_.:]"
            raise ValueError(msg)

    @property
    def model(self) -> DeviceModel:
        """The device's behaviour."""
        return MODELS[self.kind]


def make_specs(count: int, profile: str = "mixed", *, seed: int = 0, id_prefix: str = "sim"
               ) -> list[DeviceSpec]:
    """``count`` devices cycling through ``profile``'s mix, with seeded persons."""
    try:
        kinds = PROFILES[profile]
    except KeyError:
        msg = f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}"
        raise ValueError(msg) from None
    rng = random.Random(f"specs:{seed}")
    width = max(4, len(str(count)))
    return [
        DeviceSpec(f"{id_prefix}-{i:0{width}d}", kinds[i % len(kinds)], random_person(rng))
        for i in range(count)
    ]


def specs_from_devices(devices: Sequence[Mapping[str, object]], *, seed: int = 0
                       ) -> list[DeviceSpec]:
    """Specs for provisioned devices: a list of objects with ``id`` and ``type``."""
    rng = random.Random(f"specs:{seed}")
    specs = []
    for entry in devices:
        device_id = entry.get("id")
        if not isinstance(device_id, str):
            msg = f"device entry without a string 'id': {entry!r}"
            raise ValueError(msg)  # noqa: TRY004 - bad file content, not a caller's type error
        type_name = entry.get("type")
        kind = kind_of(type_name) if isinstance(type_name, str) else DeviceKind.ALARM_UNIT
        specs.append(DeviceSpec(device_id, kind, random_person(rng)))
    return specs


def load_devices_file(path: str | Path, *, seed: int = 0) -> list[DeviceSpec]:
    """Specs from a JSON file with a ``devices`` list (e.g. the demo's ``demo.json``)."""
    body = json.loads(Path(path).read_text(encoding="utf-8"))
    devices = body.get("devices") if isinstance(body, dict) else None
    if not isinstance(devices, list):
        msg = f"{path}: expected a JSON object with a 'devices' list"
        raise ValueError(msg)  # noqa: TRY004 - bad file content, not a caller's type error
    return specs_from_devices(devices, seed=seed)


# -- payloads (device -> gateway) ------------------------------------------------------------


def encode(body: Payload) -> bytes:
    """Compact JSON, as small firmware would send it."""
    return json.dumps(body, separators=(",", ":")).encode()


def alarm_payload(ref: str, ts_ms: int, alarm_type: str, battery: float | None) -> Payload:
    """The body of ``{prefix}/{device}/alarm``."""
    body: Payload = {"ref": ref, "ts": ts_ms, "type": alarm_type}
    if battery is not None:
        body["battery"] = round(battery, 3)
    return body


def heartbeat_payload(ref: str, ts_ms: int, battery: float | None, rssi: float) -> Payload:
    """The body of ``{prefix}/{device}/heartbeat``."""
    body: Payload = {"ref": ref, "ts": ts_ms, "rssi": round(rssi, 1)}
    if battery is not None:
        body["battery"] = round(battery, 3)
    return body


def status_payload(ref: str, ts_ms: int, state: str, firmware: str | None) -> Payload:
    """The body of ``{prefix}/{device}/status``."""
    body: Payload = {"ref": ref, "ts": ts_ms, "state": state}
    if firmware is not None:
        body["firmware"] = firmware
    return body


def telemetry_payload(
    ref: str, ts_ms: int, metric: str, value: float | list[float], unit: str | None
) -> Payload:
    """The body of ``{prefix}/{device}/telemetry``."""
    body: Payload = {"ref": ref, "ts": ts_ms, "metric": metric, "value": value}
    if unit is not None:
        body["unit"] = unit
    return body


@dataclass(frozen=True, slots=True)
class Sample:
    """One telemetry reading."""

    metric: str
    value: float | list[float]
    unit: str | None = None


def sample(kind: DeviceKind, person: Person, hour: float, rng: random.Random,
           *, flapping: bool = False, previous: float | None = None) -> Sample | None:
    """A reading typical of ``kind`` at local ``hour``; None if the device has no telemetry.

    ``flapping`` makes binary sensors toggle on every reading (a loose magnet, a failing
    contact), which is what the gateway must debounce.
    """
    level = person.activity_level(hour)
    if kind is DeviceKind.FALL_DETECTOR:
        # A short accelerometer window in g: gravity on z plus movement noise.
        noise = 0.02 + 0.3 * level
        window: list[float] = []
        for _ in range(8):
            window += [round(rng.gauss(0.0, noise), 3), round(rng.gauss(0.0, noise), 3),
                       round(rng.gauss(1.0, noise), 3)]
        return Sample("accel", window, "g")
    if kind is DeviceKind.BED_SENSOR:
        occupied = 1.0 if person.asleep(hour) and rng.random() > 0.05 else 0.0
        return Sample("bed_occupied", _flap(previous) if flapping else occupied)
    if kind is DeviceKind.DOOR_SENSOR:
        is_open = 1.0 if rng.random() < 0.1 * level else 0.0
        return Sample("door_open", _flap(previous) if flapping else is_open)
    if kind is DeviceKind.MOTION_SENSOR:
        if flapping:
            return Sample("motion", _flap(previous))
        return Sample("motion", float(sum(rng.random() < level for _ in range(10))), "events")
    if kind is DeviceKind.TEMPERATURE_SENSOR:
        # Indoor temperature: a little cooler at night, small sensor noise.
        base = 21.5 - (1.0 if person.asleep(hour) else 0.0)
        return Sample("temperature", round(rng.gauss(base, 0.2), 2), "C")
    if kind is DeviceKind.SMOKE_DETECTOR:
        return Sample("smoke", round(abs(rng.gauss(0.0, 0.002)), 4), "dB/m")
    if kind is DeviceKind.WATER_SENSOR:
        return Sample("water", _flap(previous) if flapping else 0.0)
    return None


def _flap(previous: float | None) -> float:
    return 0.0 if previous == 1.0 else 1.0
