"""One simulated device's state: refs, battery, pending alarms, and its reaction to acks/cmds.

Sans-I/O: methods take ``now`` (monotonic seconds) and ``wall_ms`` (epoch ms) and return
payload bytes or parsed results; the fleet decides when and where to publish them.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
from dataclasses import dataclass, field
from enum import StrEnum

from .models import (
    DeviceKind,
    DeviceSpec,
    Sample,
    alarm_payload,
    encode,
    heartbeat_payload,
    sample,
    status_payload,
    telemetry_payload,
)

ACK_STORED = "stored"


@dataclass(slots=True, eq=False)
class AlarmRecord:
    """One alarm's delivery: the payload resent verbatim until an ack with its ref arrives.

    Times are ``time.monotonic()`` seconds. ``status`` is None while pending, then the ack's
    status ("stored", or a refusal such as "rejected" with ``reason``).
    """

    device_id: str
    ref: str
    type: str
    payload: bytes
    raised_at: float
    sent_at: float | None = None
    acked_at: float | None = None
    sends: int = 0
    status: str | None = None
    reason: str | None = None
    acks: int = 0
    # Set on ack (stop) and on reconnect/revive (resend now); the delivery task waits on it.
    wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def pending(self) -> bool:
        """Whether the alarm still awaits a final ack."""
        return self.status is None

    @property
    def latency_s(self) -> float | None:
        """First send to first ack, in seconds (device -> ack latency)."""
        if self.sent_at is None or self.acked_at is None:
            return None
        return self.acked_at - self.sent_at

    def snapshot(self) -> AlarmResult:
        """An immutable copy for callers."""
        return AlarmResult(self.device_id, self.ref, self.type, self.raised_at, self.sent_at,
                           self.acked_at, self.sends, self.status, self.reason, self.acks)


@dataclass(frozen=True, slots=True)
class AlarmResult:
    """What happened to one alarm (see ``AlarmRecord``)."""

    device_id: str
    ref: str
    type: str
    raised_at: float
    sent_at: float | None
    acked_at: float | None
    sends: int
    status: str | None
    reason: str | None
    acks: int

    @property
    def latency_s(self) -> float | None:
        """First send to first ack, in seconds."""
        if self.sent_at is None or self.acked_at is None:
            return None
        return self.acked_at - self.sent_at


class AckOutcome(StrEnum):
    """How an incoming ack was matched."""

    SETTLED = "settled"  # first final ack for a pending alarm
    DUPLICATE = "duplicate"  # ack for an alarm already settled (resend raced the ack)
    UNMATCHED = "unmatched"  # ref we never sent as an alarm (e.g. a malformed message)
    INVALID = "invalid"  # not a well-formed ack


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed ``cmd`` message."""

    ref: str
    cmd: str
    args: dict[str, object]


class SimDevice:
    """State of one simulated device."""

    def __init__(self, spec: DeviceSpec, rng: random.Random, *, heartbeat_s: float,
                 telemetry_s: float | None) -> None:
        self.spec = spec
        self.rng = rng
        self.heartbeat_s = heartbeat_s
        self.telemetry_s = telemetry_s
        model = spec.model
        self.battery: float | None = None if model.mains_powered else rng.uniform(0.55, 1.0)
        self.rssi_base = rng.uniform(-85.0, -45.0)
        self.alive = True
        self.booted = False
        self.skew_ms = 0
        self.flapping = False
        self.camera_state = "standby"
        self.last_value: float | None = None
        self.alarms: dict[str, AlarmRecord] = {}
        self.pending: dict[str, AlarmRecord] = {}
        # Refs must be unique per device across simulator restarts too, or the gateway's
        # de-duplication would swallow a new alarm that reuses an old ref: so the boot id
        # comes from the OS, not from the (reproducible) seed.
        self._boot = secrets.token_hex(4)
        self._seq = 0

    @property
    def device_id(self) -> str:
        """The device id."""
        return self.spec.device_id

    @property
    def kind(self) -> DeviceKind:
        """The device model."""
        return self.spec.kind

    def next_ref(self, tag: str = "m") -> str:
        """A fresh ref: boot id, message kind, sequence number (short; ≤ 64 chars)."""
        self._seq += 1
        return f"{self._boot}-{tag}{self._seq}"

    def device_ts(self, wall_ms: int) -> int:
        """The device's idea of the time, skewed when a clock-skew fault is active."""
        return max(0, wall_ms + self.skew_ms)

    def drain(self, hours: float) -> None:
        """Battery use over ``hours``; a flat battery stays at 2 % so the device keeps talking."""
        if self.battery is not None:
            self.battery = max(0.02, self.battery - self.spec.model.battery_drain_per_hour * hours)

    # -- outgoing ------------------------------------------------------------------------------

    def heartbeat(self, wall_ms: int) -> bytes:
        """A heartbeat payload."""
        self.drain(self.heartbeat_s / 3600.0)
        rssi = self.rssi_base + self.rng.gauss(0.0, 2.0)
        return encode(heartbeat_payload(self.next_ref("h"), self.device_ts(wall_ms),
                                        self.battery, rssi))

    def status(self, wall_ms: int, state: str) -> bytes:
        """A status payload (with firmware version)."""
        return encode(status_payload(self.next_ref("s"), self.device_ts(wall_ms), state,
                                     self.spec.model.firmware))

    def telemetry(self, wall_ms: int, hour: float) -> bytes | None:
        """A telemetry payload typical of the model, or None if it has no telemetry."""
        reading: Sample | None = sample(self.kind, self.spec.person, hour, self.rng,
                                        flapping=self.flapping, previous=self.last_value)
        if reading is None:
            return None
        if isinstance(reading.value, float):
            self.last_value = reading.value
        return encode(telemetry_payload(self.next_ref("t"), self.device_ts(wall_ms),
                                        reading.metric, reading.value, reading.unit))

    def battery_telemetry(self, wall_ms: int) -> bytes | None:
        """A battery reading as telemetry (battery devices only)."""
        if self.battery is None:
            return None
        return encode(telemetry_payload(self.next_ref("t"), self.device_ts(wall_ms), "battery",
                                        round(self.battery, 3), None))

    def new_alarm(self, alarm_type: str, now: float, wall_ms: int) -> AlarmRecord:
        """Create and track an alarm; its payload is fixed, so resends are byte-identical."""
        ref = self.next_ref("a")
        payload = encode(alarm_payload(ref, self.device_ts(wall_ms), alarm_type, self.battery))
        record = AlarmRecord(self.device_id, ref, alarm_type, payload, now)
        self.alarms[ref] = record
        self.pending[ref] = record
        return record

    # -- incoming ------------------------------------------------------------------------------

    def on_ack(self, payload: bytes, now: float) -> tuple[AckOutcome, AlarmRecord | None]:
        """Match an ack to its alarm; any status but "stored" is a final refusal."""
        try:
            body = json.loads(payload)
        except ValueError:
            return AckOutcome.INVALID, None
        if not isinstance(body, dict):
            return AckOutcome.INVALID, None
        ref, status = body.get("ref"), body.get("status")
        if not isinstance(ref, str) or not isinstance(status, str):
            return AckOutcome.INVALID, None
        record = self.alarms.get(ref)
        if record is None:
            return AckOutcome.UNMATCHED, None
        record.acks += 1
        if record.status is not None:
            return AckOutcome.DUPLICATE, record
        record.status = status
        reason = body.get("reason")
        record.reason = reason if isinstance(reason, str) else None
        record.acked_at = now
        self.pending.pop(ref, None)
        record.wake.set()
        return AckOutcome.SETTLED, record

    @staticmethod
    def parse_command(payload: bytes) -> Command | None:
        """Parse a ``cmd`` payload; None if it is not a well-formed command."""
        try:
            body = json.loads(payload)
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        ref, cmd = body.get("ref"), body.get("cmd")
        if not isinstance(ref, str) or not isinstance(cmd, str):
            return None
        args = {k: v for k, v in body.items() if k not in ("ref", "cmd")}
        return Command(ref, cmd, args)


# Keys a ``config`` command may use for the heartbeat interval (seconds).
HEARTBEAT_KEYS = ("heartbeat_interval", "heartbeat_interval_s", "heartbeat_s", "heartbeat")


def configured_heartbeat(args: dict[str, object]) -> float | None:
    """The new heartbeat interval from a ``config`` command's arguments, if it sets one."""
    for key in HEARTBEAT_KEYS:
        value = args.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None
