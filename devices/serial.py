"""A sans-I/O codec for the trygg serial line protocol (docs/serial.md).

Older base stations and radio receivers hang on an RS-232/USB serial line, and one line
carries many devices. Each record is one framed, checksummed ASCII line::

    STX  1|A|dev-17|b3f0-42|1712345678901|type=fall;battery=0.82  *  65BB  ETX  [CR LF]
         ^ ^ ^      ^       ^             ^                          ^
         | | device ref     device ms     payload (key=value;...)    CRC-16/CCITT-FALSE
         | kind: A alarm, H heartbeat, T telemetry, S status, K ack, N nak
         version

``SerialDecoder.feed(bytes)`` turns whatever arrives into contract messages
(``devices.contract.AlarmMessage`` and friends, the same types the MQTT path produces),
gateway replies (``Reply``, which the simulated receiver reads) and ``FrameError``s. It
resynchronises on the next STX after any noise, keeps at most ``MAX_FRAME`` bytes of state
and never raises. ``encode_ack`` / ``encode_nak`` build the gateway's answers and
``encode_record`` the device side. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

from alarms.model import AlarmType
from devices.contract import (
    MAX_REF_LEN,
    AlarmMessage,
    DeviceMessage,
    HeartbeatMessage,
    StatusMessage,
    TelemetryMessage,
    valid_id,
)

STX = 0x02
ETX = 0x03
VERSION = "1"

# STX to ETX inclusive. The longest legitimate record (64-char device id and ref, a status
# with a 64-char state and firmware) is about 260 bytes; 512 leaves room for a short vector
# of telemetry samples while a frame still takes only ~0.5 s at 9600 baud. It is also the
# whole of the decoder's memory: a line that never sends ETX cannot grow it.
MAX_FRAME = 512
_MAX_CONTENT = MAX_FRAME - 2  # between STX and ETX

# Field values are printable ASCII except the separators; no escaping keeps the firmware
# side (often an 8-bit microcontroller) trivial and a captured line readable.
_VALUE = re.compile(r"^[\x20-\x7e]*$")
_FORBIDDEN = frozenset("|;=*")
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,15}$")
_NUMBER = re.compile(r"^-?\d{1,12}(?:\.\d{1,9})?$")
_TS = re.compile(r"^\d{1,16}$")
_CRC = re.compile(r"^[0-9A-Fa-f]{4}$")
_MAX_TEXT = 64  # state, firmware, unit: as in the MQTT contract
_MAX_VECTOR = 64
_NEWLINE = frozenset(b"\r\n")


class Kind(StrEnum):
    """The record kind letter (second header field)."""

    ALARM = "A"
    HEARTBEAT = "H"
    TELEMETRY = "T"
    STATUS = "S"
    ACK = "K"
    NAK = "N"


class NakReason(StrEnum):
    """Why the gateway refused a record; the ``reason`` of a NAK frame."""

    BAD_CHECKSUM = "checksum"
    BAD_FRAME = "frame"
    BAD_CONTENT = "content"
    UNKNOWN_DEVICE = "unknown_device"
    BUSY = "busy"
    NOT_STORED = "not_stored"


# A device resends after these (the fault was on the line or in the gateway, not in the
# record); after the others, resending the same bytes can never succeed.
RETRYABLE = frozenset(
    {NakReason.BAD_CHECKSUM, NakReason.BAD_FRAME, NakReason.BUSY, NakReason.NOT_STORED}
)


class FrameErrorReason(StrEnum):
    """What was wrong with the bytes; also the label of the frame-error counter."""

    NOISE = "noise"  # bytes outside any frame
    TRUNCATED = "truncated"  # STX ... STX: the frame was cut off
    OVERSIZE = "oversize"  # no ETX within MAX_FRAME
    BAD_CHECKSUM = "bad_checksum"
    BAD_FRAME = "bad_frame"  # framed and checksummed, but not the record grammar
    BAD_CONTENT = "bad_content"  # well-formed, but a value is not allowed


_NAK_FOR: dict[FrameErrorReason, NakReason | None] = {
    # Noise is not a frame: nobody sent it on purpose, and a NAK without a ref would only
    # make every receiver on the line resend what it has pending.
    FrameErrorReason.NOISE: None,
    FrameErrorReason.TRUNCATED: NakReason.BAD_FRAME,
    FrameErrorReason.OVERSIZE: NakReason.BAD_FRAME,
    FrameErrorReason.BAD_CHECKSUM: NakReason.BAD_CHECKSUM,
    FrameErrorReason.BAD_FRAME: NakReason.BAD_FRAME,
    FrameErrorReason.BAD_CONTENT: NakReason.BAD_CONTENT,
}


@dataclass(frozen=True, slots=True)
class FrameError:
    """Bytes that did not make a record.

    ``device_id`` and ``ref`` are filled in when they could be read from the broken frame;
    after a checksum error they are a guess, good only for addressing the NAK.
    """

    reason: FrameErrorReason
    detail: str
    device_id: str | None = None
    ref: str | None = None

    @property
    def nak_reason(self) -> NakReason | None:
        """The NAK to answer with, or None when nothing should be answered."""
        return _NAK_FOR[self.reason]


@dataclass(frozen=True, slots=True)
class Reply:
    """A gateway -> line answer: an ACK when ``reason`` is None, else a NAK.

    A NAK for a frame whose header could not be read has no ``device_id`` or ``ref``.
    """

    device_id: str | None
    ref: str | None
    reason: NakReason | None = None

    @property
    def acked(self) -> bool:
        """Whether this is an ACK (the record is durably stored)."""
        return self.reason is None


SerialRecord: TypeAlias = AlarmMessage | TelemetryMessage | HeartbeatMessage | StatusMessage | Reply


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF): ``crc16(b"123456789") == 0x29B1``."""
    return binascii.crc_hqx(data, 0xFFFF)


# -- decoding ------------------------------------------------------------------------------


class _Invalid(Exception):
    def __init__(self, reason: FrameErrorReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class SerialDecoder:
    """Bytes from the line -> records and frame errors, in line order.

    Feeding a stream in any split gives the same items as feeding it at once. A noise run
    is reported as one error when the next STX ends it; CR and LF between frames are not
    noise (receivers end each frame with CR LF so a terminal shows one per line).
    """

    def __init__(self) -> None:
        self._frame = bytearray()
        self._in_frame = False
        self._skipping = False  # inside an oversize frame: drop until ETX or STX
        self._noise = 0

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished frame held right now (never more than MAX_FRAME)."""
        return len(self._frame)

    def feed(self, data: bytes) -> list[SerialRecord | FrameError]:
        """Decode what ``data`` completes. Never raises."""
        out: list[SerialRecord | FrameError] = []
        view = bytes(data)
        i, n = 0, len(view)
        while i < n:
            if self._in_frame or self._skipping:
                end = _next_delimiter(view, i)
                if self._in_frame:
                    room = _MAX_CONTENT - len(self._frame)
                    if end - i > room:
                        out.append(
                            _error(
                                FrameErrorReason.OVERSIZE,
                                f"no ETX within {MAX_FRAME} bytes",
                                bytes(self._frame) + view[i : i + max(room, 0)],
                            )
                        )
                        self._frame.clear()
                        self._in_frame, self._skipping = False, True
                    else:
                        self._frame += view[i:end]
                i = end
                if i == n:
                    break
                if view[i] == STX:
                    if self._in_frame:
                        out.append(
                            _error(
                                FrameErrorReason.TRUNCATED,
                                "new STX before ETX",
                                bytes(self._frame),
                            )
                        )
                    self._frame.clear()
                    self._in_frame, self._skipping = True, False
                else:  # ETX
                    if self._in_frame:
                        out.append(_decode_frame(bytes(self._frame)))
                    self._frame.clear()
                    self._in_frame = self._skipping = False
                i += 1
            else:
                start = view.find(STX, i)
                stop = n if start < 0 else start
                self._noise += sum(1 for b in view[i:stop] if b not in _NEWLINE)
                if start < 0:
                    break
                if self._noise:
                    out.append(
                        FrameError(FrameErrorReason.NOISE, f"{self._noise} bytes outside a frame")
                    )
                    self._noise = 0
                self._in_frame = True
                i = start + 1
        return out


def _next_delimiter(view: bytes, start: int) -> int:
    stx = view.find(STX, start)
    etx = view.find(ETX, start)
    candidates = [p for p in (stx, etx) if p >= 0]
    return min(candidates) if candidates else len(view)


def _error(reason: FrameErrorReason, detail: str, content: bytes) -> FrameError:
    device_id, ref = _guess_address(content)
    return FrameError(reason, detail, device_id, ref)


def _guess_address(content: bytes) -> tuple[str | None, str | None]:
    # Only fields followed by a separator are whole; a cut-off ref would NAK the wrong one.
    # Each field is decoded on its own: a non-ASCII byte in the payload (line noise) must
    # not cost the device and ref that were read intact before it (issue 18.5).
    parts = content.split(b"|")
    device = _field(parts[2]) if len(parts) > 3 else None
    ref = _field(parts[3]) if len(parts) > 4 else None
    return (
        device if device is not None and valid_id(device) else None,
        ref if ref is not None and valid_id(ref, MAX_REF_LEN) else None,
    )


def _field(raw: bytes) -> str | None:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return None


def _decode_frame(content: bytes) -> SerialRecord | FrameError:
    try:
        return _decode_content(content)
    except _Invalid as exc:
        return _error(exc.reason, exc.detail, content)


def _decode_content(content: bytes) -> SerialRecord:
    star = content.rfind(b"*")
    if star < 0:
        raise _Invalid(FrameErrorReason.BAD_FRAME, "no '*' before the checksum")
    body, crc_text = content[:star], content[star + 1 :]
    try:
        crc_str = crc_text.decode("ascii")
        text = body.decode("ascii")
    except UnicodeDecodeError:
        # Non-ASCII inside STX..ETX is line corruption as much as a bad CRC is.
        raise _Invalid(FrameErrorReason.BAD_CHECKSUM, "non-ASCII bytes in frame") from None
    if not _CRC.match(crc_str):
        raise _Invalid(FrameErrorReason.BAD_FRAME, "checksum is not 4 hex digits")
    if int(crc_str, 16) != crc16(body):
        raise _Invalid(FrameErrorReason.BAD_CHECKSUM, f"checksum {crc_str} does not match")
    if not _VALUE.match(text):
        raise _Invalid(FrameErrorReason.BAD_FRAME, "control characters in frame")
    parts = text.split("|")
    if len(parts) != 6:
        raise _Invalid(FrameErrorReason.BAD_FRAME, f"{len(parts)} fields, expected 6")
    version, kind_text, device_id, ref, ts_text, payload_text = parts
    if version != VERSION:
        raise _Invalid(FrameErrorReason.BAD_FRAME, f"unsupported version {version[:8]!r}")
    try:
        kind = Kind(kind_text)
    except ValueError:
        raise _Invalid(FrameErrorReason.BAD_FRAME, f"unknown kind {kind_text[:8]!r}") from None
    payload = _payload(payload_text)
    if kind is Kind.ACK or kind is Kind.NAK:
        return _reply(kind, device_id, ref, payload)
    if not valid_id(device_id):
        raise _Invalid(FrameErrorReason.BAD_FRAME, "bad device id")
    if not valid_id(ref, MAX_REF_LEN):
        raise _Invalid(FrameErrorReason.BAD_FRAME, "bad ref")
    if not _TS.match(ts_text) or int(ts_text) >= 2**53:
        raise _Invalid(FrameErrorReason.BAD_FRAME, "ts must be epoch milliseconds")
    ts_ms = int(ts_text)
    if kind is Kind.ALARM:
        raw_type = payload.get("type")
        if raw_type is None:
            raise _Invalid(FrameErrorReason.BAD_CONTENT, "alarm without type")
        try:
            alarm_type = AlarmType(raw_type)
        except ValueError:
            raise _Invalid(
                FrameErrorReason.BAD_CONTENT, f"unknown alarm type {raw_type[:32]!r}"
            ) from None
        return AlarmMessage(device_id, ref, ts_ms, alarm_type, _fraction(payload, "battery"))
    if kind is Kind.HEARTBEAT:
        return HeartbeatMessage(
            device_id, ref, ts_ms, _fraction(payload, "battery"), _number(payload, "rssi")
        )
    if kind is Kind.TELEMETRY:
        metric = payload.get("metric")
        if metric is None or not valid_id(metric, 32):
            raise _Invalid(FrameErrorReason.BAD_CONTENT, "metric must be 1-32 id chars")
        return TelemetryMessage(
            device_id, ref, ts_ms, metric, _value(payload), _text(payload, "unit")
        )
    return StatusMessage(
        device_id, ref, ts_ms, _text(payload, "state") or "online", _text(payload, "firmware")
    )


def _payload(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    if not text:
        return fields
    for item in text.split(";"):
        key, sep, value = item.partition("=")
        if not sep or not _KEY.match(key):
            raise _Invalid(FrameErrorReason.BAD_FRAME, f"bad payload field {item[:24]!r}")
        if key in fields:
            raise _Invalid(FrameErrorReason.BAD_FRAME, f"payload key {key!r} twice")
        fields[key] = value
    return fields


def _reply(kind: Kind, device_id: str, ref: str, payload: dict[str, str]) -> Reply:
    device = device_id or None
    reference = ref or None
    if device is not None and not valid_id(device):
        raise _Invalid(FrameErrorReason.BAD_FRAME, "bad device id")
    if reference is not None and not valid_id(reference, MAX_REF_LEN):
        raise _Invalid(FrameErrorReason.BAD_FRAME, "bad ref")
    if kind is Kind.ACK:
        if device is None or reference is None:
            raise _Invalid(FrameErrorReason.BAD_FRAME, "ACK without device and ref")
        return Reply(device, reference)
    try:
        reason = NakReason(payload.get("reason", ""))
    except ValueError:
        raise _Invalid(FrameErrorReason.BAD_CONTENT, "NAK without a known reason") from None
    return Reply(device, reference, reason)


def _number(payload: dict[str, str], key: str) -> float | None:
    value = payload.get(key)
    if value is None:
        return None
    if not _NUMBER.match(value):
        raise _Invalid(FrameErrorReason.BAD_CONTENT, f"{key!r} must be a decimal number")
    return float(value)


def _fraction(payload: dict[str, str], key: str) -> float | None:
    value = _number(payload, key)
    if value is not None and not 0.0 <= value <= 1.0:
        raise _Invalid(FrameErrorReason.BAD_CONTENT, f"{key!r} must be between 0 and 1")
    return value


def _value(payload: dict[str, str]) -> float | tuple[float, ...]:
    raw = payload.get("value")
    if raw is None:
        raise _Invalid(FrameErrorReason.BAD_CONTENT, "telemetry without value")
    # A vector always has a comma, so a one-sample vector is sent as "x," (see encoder).
    is_vector = "," in raw
    items = (raw[:-1] if raw.endswith(",") else raw).split(",")
    if len(items) > _MAX_VECTOR or not all(_NUMBER.match(item) for item in items):
        raise _Invalid(
            FrameErrorReason.BAD_CONTENT,
            f"value must be a number or up to {_MAX_VECTOR} comma-separated numbers",
        )
    numbers = tuple(float(item) for item in items)
    return numbers if is_vector else numbers[0]


def _text(payload: dict[str, str], key: str) -> str | None:
    value = payload.get(key)
    if value is None:
        return None
    if not value or len(value) > _MAX_TEXT:
        raise _Invalid(FrameErrorReason.BAD_CONTENT, f"{key!r} must be 1-{_MAX_TEXT} chars")
    return value


# -- encoding ------------------------------------------------------------------------------
# Encoders take values the caller controls and raise ValueError on ones the wire format
# cannot carry; only the decoder faces the line.


def encode_ack(device_id: str, ref: str) -> bytes:
    """The ACK for ``ref`` of ``device_id``: send only after the record is durably stored."""
    return _frame(Kind.ACK, device_id, ref, "", {})


def encode_nak(device_id: str | None, ref: str | None, reason: NakReason) -> bytes:
    """A NAK; ``device_id`` and ``ref`` are None when the broken frame did not tell them."""
    return _frame(Kind.NAK, device_id or "", ref or "", "", {"reason": reason.value})


def encode_reply(reply: Reply) -> bytes:
    """``encode_ack`` or ``encode_nak`` for a ``Reply``."""
    if reply.reason is None:
        if reply.device_id is None or reply.ref is None:
            raise ValueError("an ACK needs a device id and a ref")
        return encode_ack(reply.device_id, reply.ref)
    return encode_nak(reply.device_id, reply.ref, reply.reason)


def encode_record(message: DeviceMessage) -> bytes:
    """The frame a receiver sends for ``message`` (the simulator and tests use this)."""
    fields: dict[str, str] = {}
    if isinstance(message, AlarmMessage):
        kind = Kind.ALARM
        fields["type"] = message.type.value
        _put_number(fields, "battery", message.battery)
    elif isinstance(message, HeartbeatMessage):
        kind = Kind.HEARTBEAT
        _put_number(fields, "battery", message.battery)
        _put_number(fields, "rssi", message.rssi)
    elif isinstance(message, TelemetryMessage):
        kind = Kind.TELEMETRY
        fields["metric"] = message.metric
        if isinstance(message.value, tuple):
            if not 0 < len(message.value) <= _MAX_VECTOR:
                raise ValueError(f"a vector sample has 1-{_MAX_VECTOR} values on the line")
            samples = ",".join(_format_number(v) for v in message.value)
            fields["value"] = samples + ("," if len(message.value) == 1 else "")
        else:
            fields["value"] = _format_number(message.value)
        if message.unit is not None:
            fields["unit"] = message.unit
    else:
        kind = Kind.STATUS
        fields["state"] = message.state
        if message.firmware is not None:
            fields["firmware"] = message.firmware
    if not valid_id(message.device_id) or not valid_id(message.ref, MAX_REF_LEN):
        raise ValueError("device id and ref must be 1-64 chars of [A-Za-z0-9-_.:]")
    return _frame(kind, message.device_id, message.ref, str(message.ts_ms), fields)


def frame_body(body: str) -> bytes:
    """Wrap an already formatted body in STX, checksum, ETX and CR LF (for tests and tools)."""
    raw = body.encode("ascii")
    return b"\x02" + raw + b"*" + f"{crc16(raw):04X}".encode() + b"\x03\r\n"


def _frame(kind: Kind, device_id: str, ref: str, ts: str, fields: dict[str, str]) -> bytes:
    for key, value in fields.items():
        if not _KEY.match(key) or not _VALUE.match(value) or _FORBIDDEN & set(value):
            raise ValueError(f"payload field {key!r}={value!r} cannot be sent on the line")
    payload = ";".join(f"{key}={value}" for key, value in fields.items())
    data = frame_body("|".join((VERSION, kind.value, device_id, ref, ts, payload)))
    if len(data) - 2 > MAX_FRAME:  # CR LF are outside the frame
        raise ValueError(f"record longer than {MAX_FRAME} bytes")
    return data


def _put_number(fields: dict[str, str], key: str, value: float | None) -> None:
    if value is not None:
        fields[key] = _format_number(value)


def _format_number(value: float) -> str:
    # Fixed-point, never exponent notation: the decoder (and 8-bit firmware) only parse
    # plain decimals. Six decimals hold any battery fraction or sensor reading we use.
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    text = "0" if text == "-0" else text
    if not _NUMBER.match(text):
        raise ValueError(f"{value!r} cannot be sent as a plain decimal")
    return text
