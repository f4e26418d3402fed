"""The serial line codec (devices/serial.py): frames, corruption, resync, never raising."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alarms.model import AlarmType
from devices.contract import (
    AlarmMessage,
    DeviceMessage,
    HeartbeatMessage,
    StatusMessage,
    TelemetryMessage,
)
from devices.serial import (
    MAX_FRAME,
    FrameError,
    FrameErrorReason,
    NakReason,
    Reply,
    SerialDecoder,
    SerialRecord,
    crc16,
    encode_ack,
    encode_nak,
    encode_record,
    frame_body,
)

ALARM = AlarmMessage("dev-1", "b0-a1", 1712345678901, AlarmType.FALL, 0.82)
FRAME = encode_record(ALARM)


def decode(data: bytes) -> list[SerialRecord | FrameError]:
    """Everything one fresh decoder makes of ``data``."""
    return SerialDecoder().feed(data)


def test_crc_is_ccitt_false() -> None:
    """The published check value of CRC-16/CCITT-FALSE."""
    assert crc16(b"123456789") == 0x29B1


def test_frame_layout() -> None:
    """The documented example frame, byte for byte."""
    assert FRAME.startswith(b"\x021|A|dev-1|b0-a1|1712345678901|type=fall;battery=0.82*")
    assert FRAME.endswith(b"\x03\r\n")


@pytest.mark.parametrize(
    "message",
    [
        ALARM,
        AlarmMessage("dev-2", "r", 0, AlarmType.MANUAL, None),
        HeartbeatMessage("dev-1", "h1", 5, 0.5, -71.0),
        HeartbeatMessage("dev-1", "h2", 5, None, None),
        TelemetryMessage("t-1", "t1", 6, "temperature", 21.25, "C"),
        TelemetryMessage("t-1", "t2", 6, "accel", (0.1, -0.98, 0.0), "g"),
        TelemetryMessage("t-1", "t3", 6, "accel", (1.5,), None),
        StatusMessage("s-1", "s1", 7, "online", "2.1.0"),
        StatusMessage("s-1", "s2", 7, "low battery", None),
    ],
)
def test_round_trip(message: DeviceMessage) -> None:
    """Every contract message survives the line unchanged."""
    assert decode(encode_record(message)) == [message]


def test_replies_round_trip() -> None:
    """ACK and NAK, with and without an address."""
    data = (
        encode_ack("dev-1", "r1")
        + encode_nak("dev-1", "r1", NakReason.BUSY)
        + encode_nak(None, None, NakReason.BAD_CHECKSUM)
    )
    assert decode(data) == [
        Reply("dev-1", "r1"),
        Reply("dev-1", "r1", NakReason.BUSY),
        Reply(None, None, NakReason.BAD_CHECKSUM),
    ]


def _flip(frame: bytes, at: int) -> bytes:
    return frame[:at] + bytes([frame[at] ^ 0x01]) + frame[at + 1 :]


@pytest.mark.parametrize(
    ("data", "reason", "nak"),
    [
        (_flip(FRAME, 20), FrameErrorReason.BAD_CHECKSUM, NakReason.BAD_CHECKSUM),
        (FRAME.replace(b"*", b"*0", 1), FrameErrorReason.BAD_FRAME, NakReason.BAD_FRAME),
        (
            FRAME.replace(b"type", "týpe".encode(), 1),
            FrameErrorReason.BAD_CHECKSUM,
            NakReason.BAD_CHECKSUM,
        ),
        (frame_body("2|A|dev-1|r|1|type=fall"), FrameErrorReason.BAD_FRAME, NakReason.BAD_FRAME),
        (frame_body("1|X|dev-1|r|1|"), FrameErrorReason.BAD_FRAME, NakReason.BAD_FRAME),
        (frame_body("1|A|dev-1|r|1"), FrameErrorReason.BAD_FRAME, NakReason.BAD_FRAME),
        (frame_body("1|A|dev 1|r|1|type=fall"), FrameErrorReason.BAD_FRAME, NakReason.BAD_FRAME),
        (frame_body("1|A|dev-1||1|type=fall"), FrameErrorReason.BAD_FRAME, NakReason.BAD_FRAME),
        (frame_body("1|A|dev-1|r|-1|type=fall"), FrameErrorReason.BAD_FRAME, NakReason.BAD_FRAME),
        (
            frame_body("1|A|dev-1|r|1|type=fall;type=fall"),
            FrameErrorReason.BAD_FRAME,
            NakReason.BAD_FRAME,
        ),
        (frame_body("1|A|dev-1|r|1|typefall"), FrameErrorReason.BAD_FRAME, NakReason.BAD_FRAME),
        (
            frame_body("1|A|dev-1|r|1|type=meteor"),
            FrameErrorReason.BAD_CONTENT,
            NakReason.BAD_CONTENT,
        ),
        (
            frame_body("1|A|dev-1|r|1|battery=0.5"),
            FrameErrorReason.BAD_CONTENT,
            NakReason.BAD_CONTENT,
        ),
        (
            frame_body("1|A|dev-1|r|1|type=fall;battery=1.5"),
            FrameErrorReason.BAD_CONTENT,
            NakReason.BAD_CONTENT,
        ),
        (
            frame_body("1|T|dev-1|r|1|metric=x;value=nan"),
            FrameErrorReason.BAD_CONTENT,
            NakReason.BAD_CONTENT,
        ),
        (
            frame_body("1|T|dev-1|r|1|metric=x;value=1e5"),
            FrameErrorReason.BAD_CONTENT,
            NakReason.BAD_CONTENT,
        ),
        (frame_body("1|T|dev-1|r|1|value=1"), FrameErrorReason.BAD_CONTENT, NakReason.BAD_CONTENT),
        (
            frame_body("1|N|dev-1|r||reason=tired"),
            FrameErrorReason.BAD_CONTENT,
            NakReason.BAD_CONTENT,
        ),
        (frame_body("1|K|||"), FrameErrorReason.BAD_FRAME, NakReason.BAD_FRAME),
    ],
)
def test_corrupt_frame(data: bytes, reason: FrameErrorReason, nak: NakReason) -> None:
    """Each kind of damage is one error with the right NAK, and the next frame still decodes."""
    items = decode(data + FRAME)
    assert len(items) == 2, items
    error = items[0]
    assert isinstance(error, FrameError)
    assert error.reason is reason
    assert error.nak_reason is nak
    assert items[1] == ALARM


def test_checksum_error_keeps_the_address_for_the_nak() -> None:
    """After a checksum error the header fields still address the NAK (best effort)."""
    (error,) = decode(_flip(FRAME, FRAME.index(b"type")))
    assert isinstance(error, FrameError)
    assert (error.device_id, error.ref) == ("dev-1", "b0-a1")


def test_lowercase_checksum_is_accepted() -> None:
    """Hex case is not significant."""
    star = FRAME.index(b"*")
    assert decode(FRAME[: star + 1] + FRAME[star + 1 : star + 5].lower() + FRAME[star + 5 :]) == [
        ALARM
    ]


def test_noise_is_reported_once_when_the_next_frame_starts() -> None:
    """Garbage between frames is one NOISE error (no NAK); CR/LF alone is not noise."""
    items = decode(b"\r\n\x00\xffgarbage\x03\r\n" + FRAME + b"\r\n\r\n" + FRAME)
    assert items == [FrameError(FrameErrorReason.NOISE, "10 bytes outside a frame"), ALARM, ALARM]
    assert isinstance(items[0], FrameError)
    assert items[0].nak_reason is None


def test_truncated_frame() -> None:
    """A frame cut off by a new STX is an error; the address is kept only if whole."""
    items = decode(FRAME[:22] + FRAME)
    error = items[0]
    assert isinstance(error, FrameError)
    assert error.reason is FrameErrorReason.TRUNCATED
    assert (error.device_id, error.ref) == ("dev-1", "b0-a1")
    assert items[1:] == [ALARM]
    cut = decode(FRAME[:12] + FRAME)[0]
    assert isinstance(cut, FrameError)
    assert cut.ref is None


def test_oversize_frame_is_dropped_and_the_buffer_stays_bounded() -> None:
    """A frame without ETX never grows the decoder past MAX_FRAME."""
    decoder = SerialDecoder()
    items = decoder.feed(b"\x02" + b"A" * 10_000)
    assert decoder.buffered <= MAX_FRAME
    assert [i.reason for i in items if isinstance(i, FrameError)] == [FrameErrorReason.OVERSIZE]
    assert decoder.feed(b"B" * 10_000 + b"\x03" + FRAME) == [ALARM]


def test_longest_frame_fits() -> None:
    """A frame of exactly MAX_FRAME bytes decodes."""
    state = "s" * 64
    base = StatusMessage("d" * 64, "r" * 64, 2**52, state, "f" * 64)
    frame = encode_record(base)
    assert len(frame) - 2 <= MAX_FRAME
    assert decode(frame) == [base]


def test_unknown_payload_keys_are_ignored() -> None:
    """Forward compatibility: a newer receiver may add fields."""
    items = decode(frame_body("1|A|dev-1|r|1|type=fall;zone=kitchen"))
    assert items == [AlarmMessage("dev-1", "r", 1, AlarmType.FALL, None)]


@pytest.mark.parametrize(
    "message",
    [
        StatusMessage("d", "r", 1, "on|line", None),
        StatusMessage("d", "r", 1, "a=b", None),
        TelemetryMessage("d", "r", 1, "x", float("nan"), None),
        TelemetryMessage("d", "r", 1, "x", (), None),
        AlarmMessage("d d", "r", 1, AlarmType.FALL, None),
    ],
)
def test_encoder_refuses_what_the_line_cannot_carry(message: DeviceMessage) -> None:
    """Encoding is for values we control: it raises instead of sending a bad frame."""
    with pytest.raises(ValueError):
        encode_record(message)


# -- properties -----------------------------------------------------------------------------

_IDS = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.:", min_size=1, max_size=24)
_TS = st.integers(0, 2**53 - 1)
_FRACTION = st.none() | st.integers(0, 1000).map(lambda n: n / 1000)
_READING = st.integers(-(10**6), 10**6).map(lambda n: n / 100)
_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="|;=*"),
    min_size=1,
    max_size=64,
)

MESSAGES = st.one_of(
    st.builds(AlarmMessage, _IDS, _IDS, _TS, st.sampled_from(AlarmType), _FRACTION),
    st.builds(HeartbeatMessage, _IDS, _IDS, _TS, _FRACTION, st.none() | _READING),
    st.builds(
        TelemetryMessage,
        _IDS,
        _IDS,
        _TS,
        _IDS,
        _READING | st.lists(_READING, min_size=1, max_size=16).map(tuple),
        st.none() | _TEXT,
    ),
    st.builds(StatusMessage, _IDS, _IDS, _TS, _TEXT, st.none() | _TEXT),
)


@given(st.binary(max_size=2048))
def test_random_bytes_never_raise(data: bytes) -> None:
    """Whatever the line carries, the decoder answers with items, never an exception."""
    decoder = SerialDecoder()
    items = decoder.feed(data) + decoder.feed(b"\x02" + data + b"\x03")
    kinds = (FrameError, Reply, AlarmMessage, HeartbeatMessage, TelemetryMessage, StatusMessage)
    assert all(isinstance(i, kinds) for i in items)
    assert decoder.buffered <= MAX_FRAME


@given(st.lists(MESSAGES, max_size=12))
def test_valid_stream_decodes_to_its_messages(messages: list[DeviceMessage]) -> None:
    """A clean stream is exactly its messages, in order."""
    assert decode(b"".join(encode_record(m) for m in messages)) == messages


FRAMES = MESSAGES.map(encode_record)
# Noise that is likely to contain framing bytes, and frames cut short or bit-flipped.
NOISE = st.binary(max_size=40) | st.lists(
    st.sampled_from([b"\x02", b"\x03", b"\r\n", b"*", b"|", b"x"]), max_size=8
).map(b"".join)
DAMAGED = st.tuples(FRAMES, st.integers(1, 80)).map(lambda t: t[0][: t[1]]) | st.tuples(
    FRAMES, st.integers(1, 40)
).map(lambda t: _flip(t[0], t[1] % (len(t[0]) - 3)))


@given(
    st.lists(FRAMES | NOISE | DAMAGED, max_size=12),
    st.lists(st.integers(0, 10_000), max_size=20),
)
def test_any_split_gives_the_same_items(pieces: list[bytes], cuts: list[int]) -> None:
    """Feeding a stream (frames and noise) in pieces gives exactly what one feed gives."""
    stream = b"".join(pieces)
    whole = decode(stream)
    decoder = SerialDecoder()
    split: list[SerialRecord | FrameError] = []
    start = 0
    for cut in [*sorted({c % (len(stream) + 1) for c in cuts}), len(stream)]:
        split += decoder.feed(stream[start:cut])
        start = cut
    assert split == whole
    records = [i for i in whole if not isinstance(i, FrameError)]
    assert len(records) <= len(pieces)


@pytest.mark.parametrize("noise", [b"\xe4", b"\xff\xfe", "ö".encode()])
def test_a_non_ascii_byte_naks_with_the_device_and_ref_that_were_readable(noise: bytes) -> None:
    """Issue 18.5: the NAK is addressed whenever the header fields were intact."""
    frame = encode_record(ALARM)
    broken = frame.replace(b"type=fall", b"type=f" + noise + b"ll")
    [error] = SerialDecoder().feed(broken)
    assert isinstance(error, FrameError)
    assert error.nak_reason is NakReason.BAD_CHECKSUM
    assert (error.device_id, error.ref) == ("dev-1", "b0-a1")
    # A non-ASCII byte inside the device id or ref leaves that field unaddressed.
    in_ref = frame.replace(b"b0-a1", b"b0-" + noise + b"1")
    [error] = SerialDecoder().feed(in_ref)
    assert isinstance(error, FrameError)
    assert (error.device_id, error.ref) == ("dev-1", None)
