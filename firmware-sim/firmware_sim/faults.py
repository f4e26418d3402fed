"""Fault injection: a pure, seeded schedule of faults, and the malformed payloads themselves.

``FaultPlan.generate(seed, devices, duration)`` returns the same plan for the same arguments
on every machine and every run (``random.Random`` seeded with a string is stable across
processes, unlike ``hash()``), so a soak-test failure can be replayed exactly. The fleet
only executes the plan; nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from devices.contract import MAX_PAYLOAD_BYTES

from .models import DeviceKind, DeviceSpec


class FaultKind(StrEnum):
    """The faults the simulator can inject (the names are the CLI's ``--faults`` values)."""

    DISCONNECT_STORM = "disconnect_storm"  # many connections drop at once, then reconnect
    DUPLICATE = "duplicate"  # messages published twice with the same ref
    OUT_OF_ORDER = "out_of_order"  # consecutive messages swapped
    CLOCK_SKEW = "clock_skew"  # device clock off by minutes to a day
    MALFORMED = "malformed"  # payloads the contract must reject
    OVERSIZE = "oversize"  # payload above the gateway's size limit
    FLAPPING = "flapping"  # binary sensor toggling on every reading, readings sped up
    SILENT = "silent"  # device goes dead (no heartbeats, nothing), maybe comes back
    SLOW_CONSUMER = "slow_consumer"  # device reads its acks and commands slowly


ALL_FAULTS: tuple[FaultKind, ...] = tuple(FaultKind)

# Binary sensors are the ones whose contacts flap in the field.
_FLAPPY = frozenset(
    {DeviceKind.BED_SENSOR, DeviceKind.DOOR_SENSOR, DeviceKind.MOTION_SENSOR,
     DeviceKind.WATER_SENSOR}
)

# Skews seen on devices without NTP or with a dead RTC battery: slightly fast or slow,
# stuck on the wrong DST offset, a day off.
_SKEWS_S = (-86_400.0, -3_600.0, -300.0, -20.0, 45.0, 600.0, 3_600.0)


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """One fault: starts ``at`` seconds into the run, on ``device_ids``, for ``duration`` s.

    ``param`` depends on the kind: the clock offset in seconds for ``clock_skew``, the
    per-message delay in seconds for ``slow_consumer``, the variant for ``malformed``; 0 if
    unused. A ``duration`` of 0 is a one-shot fault (malformed, oversize); ``inf`` lasts
    to the end of the run.
    """

    at: float
    kind: FaultKind
    device_ids: tuple[str, ...]
    duration: float = 0.0
    param: float = 0.0

    @property
    def ends(self) -> float:
        """When the fault is over (seconds into the run)."""
        return self.at + self.duration


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """A reproducible fault schedule, ordered by start time."""

    seed: int
    duration: float
    events: tuple[FaultEvent, ...]

    @classmethod
    def none(cls) -> FaultPlan:
        """No faults."""
        return cls(0, 0.0, ())

    @classmethod
    def generate(
        cls,
        seed: int,
        devices: Sequence[DeviceSpec | str],
        duration: float,
        kinds: Iterable[FaultKind | str] = ALL_FAULTS,
        *,
        intensity: float = 1.0,
    ) -> FaultPlan:
        """The fault schedule for ``devices`` over ``duration`` seconds.

        ``intensity`` scales how many faults happen (1.0: a few per minute of run time).
        Each kind draws from its own stream, so enabling one more kind does not change the
        schedule of the others.
        """
        specs = [d if isinstance(d, DeviceSpec) else None for d in devices]
        ids = [d.device_id if isinstance(d, DeviceSpec) else d for d in devices]
        events: list[FaultEvent] = []
        if not ids or duration <= 0:
            return cls(seed, duration, ())
        selected = sorted({FaultKind(k) for k in kinds})
        for kind in selected:
            rng = random.Random(f"trygg-faults:{seed}:{kind.value}")
            pool = ids
            if kind is FaultKind.FLAPPING:
                # Unknown kinds (plain ids) may flap; known non-binary sensors may not.
                pool = [i for i, s in zip(ids, specs, strict=True) if s is None
                        or s.kind in _FLAPPY] or ids
            events += _generate_kind(kind, rng, pool, duration, intensity)
        events.sort(key=lambda e: (e.at, e.kind.value, e.device_ids))
        return cls(seed, duration, tuple(events))

    def active(self, kind: FaultKind, device_id: str, t: float) -> FaultEvent | None:
        """The ``kind`` fault affecting ``device_id`` at ``t`` seconds into the run, if any."""
        for event in self.events:
            if (event.kind is kind and event.at <= t < event.ends
                    and device_id in event.device_ids):
                return event
        return None

    def kinds(self) -> set[FaultKind]:
        """The kinds of fault in the plan."""
        return {e.kind for e in self.events}


def _count(rng: random.Random, duration: float, per_minute: float, intensity: float) -> int:
    expected = duration / 60.0 * per_minute * intensity
    # At least one of each selected kind, so a short test run still exercises it.
    return max(1, round(expected + rng.uniform(-0.5, 0.5)))


def _subset(rng: random.Random, ids: Sequence[str], fraction: float) -> tuple[str, ...]:
    k = max(1, min(len(ids), round(len(ids) * fraction)))
    return tuple(sorted(rng.sample(list(ids), k)))


def _generate_kind(
    kind: FaultKind, rng: random.Random, ids: Sequence[str], duration: float, intensity: float
) -> list[FaultEvent]:
    def start() -> float:
        return round(rng.uniform(0.1, 0.8) * duration, 3)

    def window(lo: float, hi: float) -> float:
        return round(min(duration * rng.uniform(lo, hi), duration), 3)

    out: list[FaultEvent] = []
    if kind is FaultKind.CLOCK_SKEW:
        # Skew is a property of a device for the whole run.
        for device_id in _subset(rng, ids, 0.1):
            out.append(FaultEvent(0.0, kind, (device_id,), float("inf"), rng.choice(_SKEWS_S)))
    elif kind is FaultKind.DISCONNECT_STORM:
        for _ in range(_count(rng, duration, 0.5, intensity)):
            # Down long enough for the gateway to notice, short next to heartbeat supervision.
            out.append(FaultEvent(start(), kind, _subset(rng, ids, rng.uniform(0.3, 0.8)),
                                  round(rng.uniform(0.5, 3.0), 3)))
    elif kind in (FaultKind.MALFORMED, FaultKind.OVERSIZE):
        for _ in range(_count(rng, duration, 2.0, intensity)):
            variant = float(rng.randrange(len(MALFORMED_VARIANTS)))
            out.append(FaultEvent(start(), kind, (rng.choice(list(ids)),), 0.0, variant))
    elif kind is FaultKind.SILENT:
        for device_id in _subset(rng, ids, 0.05 * intensity):
            # Half die for good (the gateway must raise a technical alarm), half come back.
            span = float("inf") if rng.random() < 0.5 else window(0.1, 0.4)
            out.append(FaultEvent(start(), kind, (device_id,), span))
    elif kind is FaultKind.SLOW_CONSUMER:
        for _ in range(_count(rng, duration, 0.5, intensity)):
            out.append(FaultEvent(start(), kind, _subset(rng, ids, 0.1), window(0.1, 0.3),
                                  round(rng.uniform(0.2, 1.5), 3)))
    else:  # DUPLICATE, OUT_OF_ORDER, FLAPPING: windows on a few devices
        for _ in range(_count(rng, duration, 1.0, intensity)):
            out.append(FaultEvent(start(), kind, _subset(rng, ids, 0.1), window(0.1, 0.3)))
    return out


# -- malformed payloads ----------------------------------------------------------------------

# Each variant is (channel, payload builder); every one must be refused by devices.contract.
def _json(body: object) -> bytes:
    return json.dumps(body).encode()


def _variants(ref: str, ts_ms: int) -> list[tuple[str, bytes]]:
    return [
        ("alarm", b"{not json"),
        ("alarm", b"[1, 2, 3]"),
        ("alarm", _json({"ts": ts_ms, "type": "manual"})),  # missing ref
        ("alarm", _json({"ref": "bad ref/with space", "ts": ts_ms, "type": "manual"})),
        ("alarm", _json({"ref": ref, "ts": "yesterday", "type": "manual"})),
        ("alarm", _json({"ref": ref, "ts": ts_ms, "type": "explode"})),
        ("alarm", _json({"ref": ref, "ts": ts_ms, "type": "manual", "battery": 1.7})),
        ("telemetry", b'{"ref":"%s","ts":%d,"metric":"temperature","value":NaN}'
         % (ref.encode(), ts_ms)),
        ("heartbeat", b"\xff\xfe\x00garbage"),
        ("telemetry", _json({"ref": ref, "ts": ts_ms, "metric": "accel", "value": ["x", "y"]})),
        ("heartbeat", _json({"ref": ref})),  # missing ts
        ("status", _json({"ref": ref, "ts": -5, "state": "online"})),
    ]


MALFORMED_VARIANTS: tuple[int, ...] = tuple(range(len(_variants("r", 0))))


def malformed_payload(variant: int, ref: str, ts_ms: int) -> tuple[str, bytes]:
    """(channel, payload) of malformed variant ``variant`` (taken modulo the variant count)."""
    variants = _variants(ref, ts_ms)
    return variants[variant % len(variants)]


def oversize_payload(ref: str, ts_ms: int) -> tuple[str, bytes]:
    """(channel, payload): an otherwise valid alarm padded past the gateway's size limit."""
    body = {"ref": ref, "ts": ts_ms, "type": "manual", "pad": "x" * (MAX_PAYLOAD_BYTES + 1)}
    return "alarm", _json(body)
