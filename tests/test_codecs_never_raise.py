"""Every decoder facing a device answers any input with a value, never an exception.

One exception escaping a codec once stopped all MQTT intake (an integer too large for a float
in ``ts``). These properties feed arbitrary bytes and arbitrary, hostile JSON to every decoder
of the gateway's edge and require a typed message or a typed refusal back.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.contract import (
    AlarmMessage,
    DeviceMessage,
    HeartbeatMessage,
    Reason,
    Rejected,
    StatusMessage,
    TelemetryMessage,
    decode,
)
from devices.scaip import ScaipError, ScaipRequest, ScaipResponse, parse_mrq, parse_mrs
from devices.serial import FrameError, SerialDecoder
from devices.sip import SipError, SipStreamReader, parse_message

PREFIX = "trygg/v1"
TOPICS = [f"{PREFIX}/dev-1/{c}" for c in ("alarm", "telemetry", "heartbeat", "status")]
FIELDS = ("ref", "ts", "type", "battery", "rssi", "metric", "value", "unit", "state", "firmware")

# Values chosen to break naive validation: integers beyond a float, floats at the edges,
# lone surrogates and control characters, wrong types, nesting.
HOSTILE_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.integers(min_value=-(10**400), max_value=-(10**300)),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    st.sampled_from(["\ud800", "a\udfffb", "\x00", "°C", "é" * 70, "manual", "fall", "1"]),
)
JSON_VALUES = st.recursive(
    HOSTILE_SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=5),
    max_leaves=20,
)


def _dumps(body: Any) -> bytes:
    # surrogatepass: the JSON text may carry a lone surrogate as a \\u escape, as a
    # hostile device would send it.
    return json.dumps(body).encode("utf-8", "surrogatepass")


def _check_message(result: DeviceMessage | Rejected) -> None:
    assert isinstance(result, AlarmMessage | TelemetryMessage | HeartbeatMessage | StatusMessage
                      | Rejected)
    if isinstance(result, Rejected):
        assert isinstance(result.reason, Reason) and result.detail
        return
    # What passes is safe to store and show: printable UTF-8 text, finite numbers.
    for name in ("device_id", "ref", "metric", "unit", "state", "firmware"):
        text = getattr(result, name, None)
        if text is not None:
            text.encode("utf-8")
            assert text.isprintable()
    for name in ("battery", "rssi"):
        number = getattr(result, name, None)
        assert number is None or math.isfinite(number)
    if isinstance(result, TelemetryMessage):
        values = result.value if isinstance(result.value, tuple) else (result.value,)
        assert all(math.isfinite(v) for v in values)
    assert 0 <= result.ts_ms < 2**53


@given(topic=st.sampled_from([*TOPICS, "x", f"{PREFIX}/\ud800/alarm"]), payload=st.binary())
def test_mqtt_contract_takes_any_bytes(topic: str, payload: bytes) -> None:
    _check_message(decode(topic, payload, PREFIX))


@given(
    topic=st.sampled_from(TOPICS),
    body=st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=len(FIELDS)),
)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_mqtt_contract_takes_any_json_object(topic: str, body: dict[str, Any]) -> None:
    _check_message(decode(topic, _dumps(body), PREFIX))


@given(
    topic=st.sampled_from(TOPICS),
    field=st.sampled_from(FIELDS),
    value=HOSTILE_SCALARS,
)
def test_one_hostile_field_in_a_valid_message(topic: str, field: str, value: Any) -> None:
    body: dict[str, Any] = {"ref": "r1", "ts": 1_700_000_000_000, "type": "manual",
                            "metric": "temperature", "value": 21.5}
    body[field] = value
    _check_message(decode(topic, _dumps(body), PREFIX))


def test_huge_integers_nan_infinity_and_deep_nesting_are_refused() -> None:
    huge = "1" + "0" * 400
    cases = {
        "ts": f'{{"ref":"r","ts":{huge},"type":"manual"}}',
        "battery": f'{{"ref":"r","ts":1,"type":"manual","battery":{huge}}}',
        "nan": '{"ref":"r","ts":NaN,"type":"manual"}',
        "infinity": '{"ref":"r","ts":1,"type":"manual","battery":Infinity}',
        "digits": '{"ref":"r","ts":' + "9" * 5000 + ',"type":"manual"}',
        "deep": '{"ref":"r","ts":1,"type":"manual","x":' + "[" * 100_000 + "]" * 100_000 + "}",
    }
    for name, text in cases.items():
        result = decode(TOPICS[0], text.encode(), PREFIX)
        assert isinstance(result, Rejected), name
        assert result.reason in (Reason.BAD_FIELD, Reason.BAD_JSON, Reason.OVERSIZE), name
    telemetry = decode(TOPICS[1], f'{{"ref":"r","ts":1,"metric":"m","value":[1,{huge}]}}'
                       .encode(), PREFIX)
    assert isinstance(telemetry, Rejected) and telemetry.reason is Reason.BAD_FIELD
    unit = decode(TOPICS[1], b'{"ref":"r","ts":1,"metric":"m","value":1,"unit":"\\ud800"}',
                  PREFIX)
    assert isinstance(unit, Rejected) and unit.reason is Reason.BAD_FIELD
    status = decode(TOPICS[3], b'{"ref":"r","ts":1,"firmware":"1.0\\ud800"}', PREFIX)
    assert isinstance(status, Rejected) and status.reason is Reason.BAD_FIELD


@given(chunks=st.lists(st.binary(max_size=300), max_size=20))
def test_serial_decoder_takes_any_bytes(chunks: list[bytes]) -> None:
    decoder = SerialDecoder()
    for chunk in chunks:
        for item in decoder.feed(chunk):
            assert isinstance(item, FrameError) or hasattr(item, "device_id")


@given(data=st.binary(max_size=2000), stream=st.booleans())
def test_sip_parser_takes_any_bytes(data: bytes, stream: bool) -> None:
    result = parse_message(data, stream=stream)
    assert result is not None
    if isinstance(result, SipError):
        assert result.reason


@given(chunks=st.lists(st.binary(max_size=500), max_size=10))
def test_sip_stream_takes_any_bytes(chunks: list[bytes]) -> None:
    stream = SipStreamReader()
    for chunk in chunks:
        stream.feed(chunk)


@given(data=st.binary(max_size=2000))
def test_scaip_parsers_take_any_bytes(data: bytes) -> None:
    assert isinstance(parse_mrq(data), ScaipRequest | ScaipError)
    assert isinstance(parse_mrs(data), ScaipResponse | ScaipError)


@given(text=st.text(max_size=300))
def test_scaip_parsers_take_any_text_in_an_envelope(text: str) -> None:
    for template in ("<mrq>{}</mrq>", "<mrq><ref>1</ref><cid>{}</cid><dty>0001</dty></mrq>",
                     "<mrs><ref>{}</ref><snu>0</snu></mrs>"):
        data = template.format(text).encode("utf-8", "surrogatepass")
        assert isinstance(parse_mrq(data), ScaipRequest | ScaipError)
        assert isinstance(parse_mrs(data), ScaipResponse | ScaipError)
