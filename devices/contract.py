"""The MQTT device contract (docs/protocol.md): topics and payloads, bytes <-> typed messages.

Everything a device sends is parsed and validated here, once, into a frozen message or a
``Rejected`` with a machine-readable reason. Nothing here does I/O.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

from alarms.model import AlarmType, Position, PositionSource

DEFAULT_PREFIX = "trygg/v1"

# Bigger than any legitimate device message by two orders of magnitude (an accelerometer
# window of a few hundred samples is ~8 KiB), small enough that a hostile client cannot
# make the gateway parse megabytes per message.
MAX_PAYLOAD_BYTES = 64 * 1024

# Identifiers appear in MQTT topics, logs and URLs: keep them to a safe alphabet.
MAX_ID_LEN = 64
MAX_REF_LEN = 64
_ID = re.compile(r"[A-Za-z0-9_.:-]+")
_CHANNELS = frozenset({"alarm", "telemetry", "heartbeat", "status"})


class Channel(StrEnum):
    """The device -> gateway topics."""

    ALARM = "alarm"
    TELEMETRY = "telemetry"
    HEARTBEAT = "heartbeat"
    STATUS = "status"


class Reason(StrEnum):
    """Why a message was rejected; also the label of the reject counter."""

    OVERSIZE = "oversize"
    BAD_TOPIC = "bad_topic"
    BAD_JSON = "bad_json"
    NOT_OBJECT = "not_object"
    MISSING_FIELD = "missing_field"
    BAD_FIELD = "bad_field"
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_DEVICE = "unknown_device"


@dataclass(frozen=True, slots=True)
class AlarmMessage:
    """A device's alarm.

    ``position`` is where a mobile alarm is (optional). ``content`` and ``detail`` are set by
    transports whose messages carry no device time or say more than the type (SCAIP): the
    content key that tells a resend from a new message (``alarms.dedupe``; None: the type and
    ``ts_ms``) and a description for staff.
    """

    device_id: str
    ref: str
    ts_ms: int
    type: AlarmType
    battery: float | None
    position: Position | None = None
    content: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class TelemetryMessage:
    """One telemetry sample (a scalar, or a vector such as an accelerometer window)."""

    device_id: str
    ref: str
    ts_ms: int
    metric: str
    value: float | tuple[float, ...]
    unit: str | None


@dataclass(frozen=True, slots=True)
class HeartbeatMessage:
    """A device's sign of life; may carry battery and signal readings."""

    device_id: str
    ref: str
    ts_ms: int
    battery: float | None
    rssi: float | None


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """A device's status report (firmware, online/offline announcements, camera state)."""

    device_id: str
    ref: str
    ts_ms: int
    state: str
    firmware: str | None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that was refused, with the reason and the device if it could be told."""

    reason: Reason
    detail: str
    device_id: str | None = None
    ref: str | None = None


DeviceMessage: TypeAlias = AlarmMessage | TelemetryMessage | HeartbeatMessage | StatusMessage


class _Invalid(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def valid_id(value: str, max_len: int = MAX_ID_LEN) -> bool:
    """Whether ``value`` is a well-formed device id or ref."""
    return 0 < len(value) <= max_len and _ID.fullmatch(value) is not None


def split_topic(topic: str, prefix: str = DEFAULT_PREFIX) -> tuple[str, Channel] | None:
    """``prefix/{device_id}/{channel}`` -> (device_id, channel), or None if malformed."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    rest = topic[len(head) :].split("/")
    if len(rest) != 2 or rest[1] not in _CHANNELS or not valid_id(rest[0]):
        return None
    return rest[0], Channel(rest[1])


def decode(topic: str, payload: bytes, prefix: str = DEFAULT_PREFIX) -> DeviceMessage | Rejected:
    """Parse one device message. Never raises on any input."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        parsed = split_topic(topic, prefix)
        return Rejected(
            Reason.OVERSIZE,
            f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}",
            device_id=parsed[0] if parsed else None,
        )
    parsed = split_topic(topic, prefix)
    if parsed is None:
        return Rejected(Reason.BAD_TOPIC, f"topic {topic[:120]!r} is not {prefix}/<device>/<kind>")
    device_id, channel = parsed
    try:
        body = _JSON.decode(payload.decode())
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return Rejected(Reason.BAD_JSON, f"not JSON: {exc}"[:200], device_id=device_id)
    if not isinstance(body, dict):
        return Rejected(Reason.NOT_OBJECT, "payload must be a JSON object", device_id=device_id)
    ref_value = body.get("ref")
    ref = ref_value if isinstance(ref_value, str) else None
    try:
        return _decode_body(device_id, channel, body)
    except _Invalid as exc:
        return Rejected(exc.reason, exc.detail, device_id=device_id, ref=ref)


def _no_constant(name: str) -> object:
    # NaN and Infinity are not JSON (RFC 8259) although Python's parser takes them.
    raise ValueError(f"{name} is not a JSON value")


# One decoder for every message: ``json.loads`` with an option builds a new one per call.
_JSON = json.JSONDecoder(parse_constant=_no_constant)


def _finite(value: object) -> float | None:
    """``value`` as a finite float, or None if it is not a number a float can hold.

    An integer too large for a float (400 digits, say) must be refused here like any other
    bad value: ``math.isfinite`` and ``float`` raise OverflowError on it.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _decode_body(device_id: str, channel: Channel, body: dict[str, object]) -> DeviceMessage:
    ref = _ref(body)
    ts_ms = _ts(body)
    if channel is Channel.ALARM:
        raw_type = _required_str(body, "type")
        try:
            alarm_type = AlarmType(raw_type)
        except ValueError:
            raise _Invalid(Reason.UNKNOWN_TYPE, f"unknown alarm type {raw_type!r}") from None
        return AlarmMessage(
            device_id, ref, ts_ms, alarm_type, _fraction(body, "battery"), _position(body)
        )
    if channel is Channel.TELEMETRY:
        metric = _required_str(body, "metric")
        if not valid_id(metric, 32):
            raise _Invalid(Reason.BAD_FIELD, "metric must be 1-32 chars of [A-Za-z0-9-_.:]")
        return TelemetryMessage(
            device_id, ref, ts_ms, metric, _value(body), _str(body, "unit", required=False)
        )
    if channel is Channel.HEARTBEAT:
        return HeartbeatMessage(
            device_id, ref, ts_ms, _fraction(body, "battery"), _number(body, "rssi")
        )
    state = _str(body, "state", required=False) or "online"
    return StatusMessage(device_id, ref, ts_ms, state, _str(body, "firmware", required=False))


def _ref(body: dict[str, object]) -> str:
    ref = body.get("ref")
    if ref is None:
        raise _Invalid(Reason.MISSING_FIELD, "missing 'ref'")
    if not isinstance(ref, str) or not valid_id(ref, MAX_REF_LEN):
        raise _Invalid(Reason.BAD_FIELD, f"'ref' must be 1-{MAX_REF_LEN} chars of [A-Za-z0-9-_.:]")
    return ref


def _ts(body: dict[str, object]) -> int:
    ts = body.get("ts")
    if ts is None:
        raise _Invalid(Reason.MISSING_FIELD, "missing 'ts'")
    number = _finite(ts)
    if number is None:
        raise _Invalid(Reason.BAD_FIELD, "'ts' must be epoch milliseconds")
    if not 0 <= number < 2**53:
        raise _Invalid(Reason.BAD_FIELD, "'ts' out of range")
    return int(number)


def _str(body: dict[str, object], key: str, *, required: bool) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise _Invalid(Reason.MISSING_FIELD, f"missing {key!r}")
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise _Invalid(Reason.BAD_FIELD, f"{key!r} must be a string of at most 64 chars")
    # A lone surrogate cannot be stored or sent on as UTF-8 (one such unit once made the
    # store drop a whole batch of other devices' samples); control characters have no place
    # in a unit or firmware name. Refused here, one message at a time.
    if not value.isprintable():
        raise _Invalid(Reason.BAD_FIELD, f"{key!r} must be printable text")
    return value


def _required_str(body: dict[str, object], key: str) -> str:
    value = _str(body, key, required=True)
    assert value is not None
    return value


def _number(body: dict[str, object], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    number = _finite(value)
    if number is None:
        raise _Invalid(Reason.BAD_FIELD, f"{key!r} must be a finite number")
    return number


def _fraction(body: dict[str, object], key: str) -> float | None:
    value = _number(body, key)
    if value is not None and not 0.0 <= value <= 1.0:
        raise _Invalid(Reason.BAD_FIELD, f"{key!r} must be between 0 and 1")
    return value


# A fix's accuracy radius beyond this is no position staff could walk to (a cell-id fix is a
# few km at worst); it also keeps a garbage number from looking precise.
MAX_ACCURACY_M = 100_000.0


def _position(body: dict[str, object]) -> Position | None:
    """The optional ``position`` of an alarm: ``lat``, ``lon``, ``accuracy`` (m), ``ts`` (ms)."""
    value = body.get("position")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Invalid(Reason.BAD_FIELD, "'position' must be an object")
    unknown = set(value) - {"lat", "lon", "accuracy", "ts"}
    if unknown:
        raise _Invalid(Reason.BAD_FIELD, f"unknown position field {sorted(unknown)[0][:16]!r}")
    lat = _number(value, "lat")
    lon = _number(value, "lon")
    if lat is None or lon is None:
        raise _Invalid(Reason.MISSING_FIELD, "'position' needs 'lat' and 'lon'")
    if not -90.0 <= lat <= 90.0 or not -180.0 <= lon <= 180.0:
        raise _Invalid(Reason.BAD_FIELD, "'position' lat must be -90..90 and lon -180..180")
    accuracy = _number(value, "accuracy")
    if accuracy is not None and not 0.0 <= accuracy <= MAX_ACCURACY_M:
        raise _Invalid(Reason.BAD_FIELD, f"'accuracy' must be 0..{MAX_ACCURACY_M:.0f} m")
    fixed_at: float | None = None
    if value.get("ts") is not None:
        fixed_at = _ts({"ts": value["ts"]}) / 1000.0
    return Position(lat, lon, accuracy, fixed_at, PositionSource.DEVICE)


def _value(body: dict[str, object]) -> float | tuple[float, ...]:
    value = body.get("value")
    if value is None:
        raise _Invalid(Reason.MISSING_FIELD, "missing 'value'")
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        number = _finite(value)
        if number is None:
            raise _Invalid(Reason.BAD_FIELD, "'value' must be a finite number")
        return number
    if isinstance(value, list) and 0 < len(value) <= 4096:
        numbers = [_finite(v) for v in value]
        if any(n is None for n in numbers):
            raise _Invalid(Reason.BAD_FIELD, "'value' list must hold finite numbers")
        return tuple(n for n in numbers if n is not None)
    raise _Invalid(Reason.BAD_FIELD, "'value' must be a number or a list of 1-4096 numbers")


# -- gateway -> device ---------------------------------------------------------------------


# One encoder for every answer: ``json.dumps`` with options builds a new one per call.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def topic(prefix: str, device_id: str, leaf: str) -> str:
    """``prefix/{device_id}/{leaf}``."""
    return f"{prefix}/{device_id}/{leaf}"


def encode_ack(ref: str, status: str, reason: str | None = None) -> bytes:
    """The payload of ``{prefix}/{device_id}/ack``."""
    body: dict[str, str] = {"ref": ref, "status": status}
    if reason is not None:
        body["reason"] = reason
    return _COMPACT.encode(body).encode()


def encode_command(ref: str, command: str, **args: str | int | float | bool) -> bytes:
    """The payload of ``{prefix}/{device_id}/cmd``."""
    return _COMPACT.encode({"ref": ref, "cmd": command, **args}).encode()
