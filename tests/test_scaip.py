"""The SCAIP codec: <mrq> table, XML attacks, properties, <mrs>, mapping to trygg types."""

from __future__ import annotations

import dataclasses
from xml.sax.saxutils import escape

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alarms.model import AlarmType, DeviceStatus, Position, PositionSource
from devices.scaip import (
    DEVICE_TYPE_ROWS,
    MAX_SCAIP_XML,
    STATUS_CODE_ROWS,
    EventKind,
    Location,
    MessageType,
    ScaipError,
    ScaipReason,
    ScaipRequest,
    ScaipResponse,
    ScaipTables,
    Snu,
    StatusMeaning,
    StatusRule,
    check_sender,
    classify,
    content_of,
    describe,
    encode_mrq,
    encode_mrs,
    parse_mrq,
    parse_mrs,
    parse_status_rule,
    readable_ref,
)

# Shapes seen from deployed controllers (padding, field order, optional mty, a leading space
# in cid), plus the optional fields of the standard.
VALID: list[tuple[bytes, dict[str, object]]] = [
    (
        b"<mrq><ref>00001883</ref><cha>0</cha><mty>ME</mty><cid>26317</cid><dty>02</dty>"
        b"<did>00</did><crd>gsm:+37284463906</crd><stc>010</stc></mrq>",
        {
            "ref": "00001883",
            "cid": "26317",
            "dty": "02",
            "mty": MessageType.ALARM,
            "stc": "010",
            "did": "00",
            "crd": ("gsm:+37284463906",),
            "extra": (("cha", "0"),),
        },
    ),
    (
        b"<mrq><mty>PI</mty><ref>1998218577</ref><cid>10149471</cid><dty>2</dty></mrq>",
        {"mty": MessageType.HEARTBEAT, "dty": "2", "stc": None},
    ),
    (
        b"<mrq><ref>1193308443</ref><cid>10149471</cid><dty>3</dty><stc>10</stc>"
        b"<crd>gsm:</crd></mrq>",
        {"mty": MessageType.ALARM, "dty": "3"},
    ),
    (
        b"<mrq><ref>803137200003</ref><mty>ME</mty><cid> 8031372</cid><dty>0004</dty>"
        b"<stc>0010</stc><crd>gsm:+</crd></mrq>",
        {"cid": "8031372", "dty": "0004"},
    ),
    (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<mrq>\n  <ref>r</ref>\n  <cid>1</cid>\n'
        b"  <dty>5</dty>\n  <mty>re</mty>\n  <pri>2</pri>\n  <lco>021</lco>\n"
        b"  <lva>2</lva>\n  <lte>K\xc3\xb6ket</lte>\n"
        b"  <crd>gsm:+4670</crd><crd>sip:4711@h</crd><!-- a comment -->\n</mrq>",
        {
            "mty": MessageType.RESET,
            "pri": 2,
            "location": Location("021", "2", "Köket"),
            "crd": ("gsm:+4670", "sip:4711@h"),
            "position": None,
        },
    ),
    (
        b"<mrq><ref>abcdefghijklmnop</ref><cid>1234567890123456</cid><dty>1</dty><mty>IN</mty>"
        b"<ver>01.00</ver><hbo>0</hbo><dco>002</dco></mrq>",
        {
            "ref": "abcdefghijklmnop",
            "cid": "1234567890123456",
            "mty": MessageType.INFO,
            "ver": "01.00",
            "dco": "002",
            "extra": (("hbo", "0"),),
        },
    ),
    # A mobile alarm with a position (issue 18.2): the <lge> parts of the message model.
    (
        b"<mrq><ref>7</ref><mty>ME</mty><cid>26317</cid><dty>0051</dty><stc>0010</stc>"
        b"<lco>035</lco><lge><geo>59.329300,18.068600</geo><tim>2024-03-18T11:25:37+01</tim>"
        b"<gga>$GPGGA,102537.00,5919.758,N,01804.116,E,1,08,0.9,45.0,M,24.0,M,,*5D</gga>"
        b"</lge></mrq>",
        {
            "position": Position(59.3293, 18.0686, 4.5, 1710757537.0, PositionSource.SCAIP_GEO),
            "position_problem": None,
            "dty": "0051",
        },
    ),
    (
        b"<mrq><ref>8</ref><cid>26317</cid><dty>51</dty><lge><geo>59.3,18.0</geo></lge></mrq>",
        {"position": Position(59.3, 18.0, None, None, PositionSource.SCAIP_GEO)},
    ),
    # An unreadable position costs the position, never the alarm.
    (
        b"<mrq><ref>9</ref><cid>26317</cid><dty>51</dty><lge><geo>north</geo>"
        b"<tim>yesterday</tim></lge></mrq>",
        {"position": None, "position_problem":
            "tim is not an ISO 8601 time with a UTC offset; geo is not 'latitude,longitude' "
            "in decimal degrees"},
    ),
]


@pytest.mark.parametrize(("doc", "expected"), VALID)
def test_valid_mrq(doc: bytes, expected: dict[str, object]) -> None:
    parsed = parse_mrq(doc)
    assert isinstance(parsed, ScaipRequest), parsed
    for name, value in expected.items():
        assert getattr(parsed, name) == value, name


def _mrq(*fields: str) -> bytes:
    return ("<mrq>" + "".join(fields) + "</mrq>").encode()


R, C, D = "<ref>r1</ref>", "<cid>41</cid>", "<dty>4</dty>"

INVALID: list[tuple[bytes, Snu, ScaipReason, str | None]] = [
    (_mrq(C, D), Snu.MANDATORY_MISSING, ScaipReason.MISSING_TAG, None),
    (_mrq(R, D), Snu.MANDATORY_MISSING, ScaipReason.MISSING_TAG, "r1"),
    (_mrq(R, C), Snu.MANDATORY_MISSING, ScaipReason.MISSING_TAG, "r1"),
    (_mrq(R, C, "<dty> </dty>"), Snu.MANDATORY_MISSING, ScaipReason.MISSING_TAG, "r1"),
    (_mrq("<ref>" + "x" * 17 + "</ref>", C, D), Snu.WRONG_CONTENT, ScaipReason.BAD_FIELD, None),
    (_mrq("<ref>a b</ref>", C, D), Snu.WRONG_CONTENT, ScaipReason.BAD_FIELD, None),
    # Issue 18.5: the message model's patterns, not "printable".
    (_mrq("<ref>a-b</ref>", C, D), Snu.WRONG_CONTENT, ScaipReason.BAD_FIELD, None),
    (_mrq("<ref>a_b</ref>", C, D), Snu.WRONG_CONTENT, ScaipReason.BAD_FIELD, None),
    (_mrq(R, "<cid>c1</cid>", D), Snu.WRONG_CONTENT, ScaipReason.BAD_FIELD, "r1"),
    (_mrq(R, "<cid>" + "1" * 17 + "</cid>", D), Snu.WRONG_CONTENT, ScaipReason.BAD_FIELD, "r1"),
    (_mrq(R, C, D, "<ver>1.0</ver>"), Snu.WRONG_CONTENT, ScaipReason.BAD_FIELD, "r1"),
    (_mrq(R, C, D, "<ver>01.0a</ver>"), Snu.WRONG_CONTENT, ScaipReason.BAD_FIELD, "r1"),
    (_mrq(R, C, D, "<dco>1234</dco>"), Snu.WRONG_CONTENT, ScaipReason.BAD_FIELD, "r1"),
    (_mrq(R, C, "<dty>x4</dty>"), Snu.WRONG_CONTENT, ScaipReason.BAD_FIELD, "r1"),
    (_mrq(R, C, "<dty>12345</dty>"), Snu.WRONG_CONTENT, ScaipReason.BAD_FIELD, "r1"),
    (_mrq(R, C, D, "<stc>ten</stc>"), Snu.WRONG_CONTENT, ScaipReason.BAD_FIELD, "r1"),
    (_mrq(R, C, D, "<pri>high</pri>"), Snu.WRONG_CONTENT, ScaipReason.BAD_FIELD, "r1"),
    (_mrq(R, C, D, "<mty>XX</mty>"), Snu.WRONG_CONTENT, ScaipReason.UNKNOWN_MTY, "r1"),
    # Every refusal carries the ref whenever it could be read (issue 18.5).
    (_mrq(R, C, D, "<lva>" + "x" * 300 + "</lva>"), Snu.WRONG_CONTENT, ScaipReason.BAD_FIELD, "r1"),
    (_mrq(R, R, C, D), Snu.INVALID_FORMAT, ScaipReason.DUPLICATE_TAG, "r1"),
    (_mrq(R, "<ref>r2</ref>", C, D), Snu.INVALID_FORMAT, ScaipReason.DUPLICATE_TAG, None),
    (_mrq(R, C, "<dty><x>4</x></dty>"), Snu.INVALID_FORMAT, ScaipReason.NESTED, "r1"),
    (_mrq(R, "stray text", C, D), Snu.INVALID_FORMAT, ScaipReason.NESTED, "r1"),
    (_mrq(R, C, D, "<lge><geo><x/></geo></lge>"), Snu.INVALID_FORMAT, ScaipReason.NESTED, "r1"),
    (_mrq(R, C, D, "<lge><geo>1,2</geo><geo>1,2</geo></lge>"), Snu.INVALID_FORMAT,
     ScaipReason.DUPLICATE_TAG, "r1"),
    (_mrq(R, C, D, "<lge><geo>1,2</geo></lge><lge><tim>x</tim></lge>"), Snu.INVALID_FORMAT,
     ScaipReason.DUPLICATE_TAG, "r1"),
    (b"<mrs><ref>r</ref><snu>0</snu></mrs>", Snu.INVALID_FORMAT, ScaipReason.WRONG_ROOT, "r"),
    (b"<mrq><ref>r</ref>", Snu.INVALID_FORMAT, ScaipReason.NOT_XML, "r"),
    (b"", Snu.INVALID_FORMAT, ScaipReason.NOT_XML, None),
    (b"\xff\xfe<\x00m", Snu.INVALID_FORMAT, ScaipReason.NOT_XML, None),
    (b'<?xml version="1.0" encoding="nope"?><mrq/>', Snu.INVALID_FORMAT, ScaipReason.NOT_XML, None),
    (
        _mrq(R, *[f"<x{i}>1</x{i}>" for i in range(60)]),
        Snu.INVALID_FORMAT,
        ScaipReason.TOO_MANY_FIELDS,
        "r1",
    ),
    (
        _mrq(R, C, D, "<lva>" + "x" * MAX_SCAIP_XML + "</lva>"),
        Snu.TOO_LONG,
        ScaipReason.OVERSIZE,
        "r1",
    ),
]


@pytest.mark.parametrize(("doc", "snu", "reason", "ref"), INVALID)
def test_invalid_mrq(doc: bytes, snu: Snu, reason: ScaipReason, ref: str | None) -> None:
    parsed = parse_mrq(doc)
    assert isinstance(parsed, ScaipError), parsed
    assert (parsed.snu, parsed.reason) == (snu, reason)
    assert parsed.ref == ref
    assert parsed.detail


# -- XML attacks ---------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<mrq><ref>r</ref><cid>c</cid><dty>4</dty><lva>&lol4;</lva></mrq>"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE mrq [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<mrq><ref>r</ref><cid>c</cid><dty>4</dty><lva>&xxe;</lva></mrq>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE mrq SYSTEM "http://127.0.0.1:1/evil.dtd">
<mrq><ref>r</ref><cid>c</cid><dty>4</dty></mrq>"""

PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE mrq [<!ENTITY % p SYSTEM "http://127.0.0.1:1/p.dtd"> %p;]>
<mrq><ref>r</ref><cid>c</cid><dty>4</dty></mrq>"""

PLAIN_DTD = b"""<!DOCTYPE mrq><mrq><ref>r</ref><cid>c</cid><dty>4</dty></mrq>"""


@pytest.mark.parametrize(
    "doc",
    [BILLION_LAUGHS, XXE, EXTERNAL_DTD, PARAMETER_ENTITY, PLAIN_DTD],
    ids=["billion_laughs", "xxe", "external_dtd", "parameter_entity", "plain_dtd"],
)
def test_xml_attacks_are_refused(doc: bytes) -> None:
    parsed = parse_mrq(doc)
    assert isinstance(parsed, ScaipError)
    assert parsed.snu is Snu.INVALID_FORMAT
    assert parsed.reason is ScaipReason.FORBIDDEN_XML


def test_oversize_is_refused_before_parsing() -> None:
    # Deeply nested junk that would be expensive to parse; refused on size alone.
    doc = b"<mrq>" + b"<a>" * 5000 + b"</a>" * 5000 + b"</mrq>"
    parsed = parse_mrq(doc)
    assert isinstance(parsed, ScaipError)
    assert parsed.snu is Snu.TOO_LONG


# -- properties ----------------------------------------------------------------------------

_TAGS = st.sampled_from(
    ["ref", "cid", "dty", "mty", "stc", "pri", "did", "crd", "lco", "lva", "lte", "lge", "cha", "x"]
)
_TEXT = st.one_of(
    st.sampled_from(["", " ", "ME", "PI", "RE", "IN", "0004", "10", "a" * 17, "-1", "1e9"]),
    st.text(max_size=20),
)


@st.composite
def mrq_documents(draw: st.DrawFn) -> bytes:
    fields = draw(st.lists(st.tuples(_TAGS, _TEXT), max_size=14))
    body = "".join(f"<{tag}>{escape(text)}</{tag}>" for tag, text in fields)
    root = draw(st.sampled_from(["mrq", "mrq", "mrq", "mrs", "x"]))
    prolog = draw(
        st.sampled_from(["", '<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-8"?>\n'])
    )
    return f"{prolog}<{root}>{body}</{root}>".encode("utf-8", "surrogatepass")


@settings(max_examples=400)
@given(mrq_documents())
def test_generated_mrq_never_raises(doc: bytes) -> None:
    parsed = parse_mrq(doc)
    assert isinstance(parsed, ScaipRequest | ScaipError)
    if isinstance(parsed, ScaipRequest):
        assert 1 <= len(parsed.ref) <= 16 and parsed.ref.isalnum() and parsed.ref.isascii()
        assert parsed.cid.isdigit() and parsed.dty.isdigit()
        # Everything the gateway derives from a valid request must also be total.
        classify(parsed)
        content_of(parsed)
        describe(parsed)
        parse_mrs(encode_mrs(parsed.ref, Snu.OK))
    else:
        assert parsed.snu in set(Snu)
        assert parsed.ref is None or (parsed.ref.isalnum() and parsed.ref.isascii())


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    assert isinstance(parse_mrq(data), ScaipRequest | ScaipError)
    assert isinstance(parse_mrs(data), ScaipResponse | ScaipError)


@settings(max_examples=200)
@given(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=16),
    st.sampled_from(list(Snu)),
)
def test_mrs_round_trips(ref: str, snu: Snu) -> None:
    parsed = parse_mrs(encode_mrs(ref, snu))
    assert parsed == ScaipResponse(ref=ref, snu=int(snu))


@settings(max_examples=200)
@given(
    st.from_regex(r"\A[0-9A-Za-z]{1,16}\Z"),
    st.from_regex(r"\A[0-9]{1,16}\Z"),
    st.from_regex(r"\A\d{1,4}\Z"),
    st.sampled_from(list(MessageType)),
)
def test_mrq_round_trips(ref: str, cid: str, dty: str, mty: MessageType) -> None:
    parsed = parse_mrq(encode_mrq(ref=ref, cid=cid, dty=dty, mty=mty))
    assert isinstance(parsed, ScaipRequest)
    assert (parsed.ref, parsed.cid, parsed.dty, parsed.mty) == (ref, cid, dty, mty)


# -- <mrs> ---------------------------------------------------------------------------------


def test_encode_mrs_escapes_and_omits_an_unknown_ref() -> None:
    assert encode_mrs("a<&", 3) == b"<mrs><ref>a&lt;&amp;</ref><snu>3</snu></mrs>"
    assert encode_mrs(None, Snu.MANDATORY_MISSING) == b"<mrs><snu>7</snu></mrs>"
    assert encode_mrs("r", 0, [("mre", "0"), ("Bad Tag", "x")]) == (
        b"<mrs><ref>r</ref><snu>0</snu><mre>0</mre></mrs>"
    )


def test_parse_mrs_requires_snu() -> None:
    parsed = parse_mrs(b"<mrs><ref>r</ref></mrs>")
    assert isinstance(parsed, ScaipError)
    assert parsed.reason is ScaipReason.MISSING_TAG


# -- sender check and mapping --------------------------------------------------------------


def _request(**overrides: object) -> ScaipRequest:
    base: dict[str, object] = {"ref": "r", "cid": "4711", "dty": "4", "mty": MessageType.ALARM}
    base.update(overrides)
    return ScaipRequest(**base)  # type: ignore[arg-type]


def test_from_user_must_equal_cid() -> None:
    assert check_sender(_request(), "4711") is None
    mismatch = check_sender(_request(), "4712")
    assert mismatch is not None
    assert (mismatch.snu, mismatch.reason, mismatch.ref) == (
        Snu.WRONG_CONTENT,
        ScaipReason.CID_MISMATCH,
        "r",
    )
    assert check_sender(_request(), None) is not None


@pytest.mark.parametrize(
    ("overrides", "kind", "alarm_type", "known"),
    [
        ({"mty": MessageType.HEARTBEAT}, EventKind.HEARTBEAT, None, True),
        ({"mty": MessageType.HEARTBEAT, "stc": "0009"}, EventKind.HEARTBEAT, None, True),
        ({"mty": MessageType.RESET}, EventKind.STATUS, None, True),
        ({"mty": MessageType.INFO}, EventKind.INFO, None, True),
        ({"mty": MessageType.INFO, "stc": "0010"}, EventKind.INFO, None, True),
        ({"stc": "0010"}, EventKind.ALARM, AlarmType.MANUAL, True),
        ({"stc": "0102"}, EventKind.ALARM, AlarmType.TEST, True),
        ({"stc": "103"}, EventKind.ALARM, AlarmType.TEST, True),
        ({"dty": "0005", "stc": "10"}, EventKind.ALARM, AlarmType.FALL, True),
        # Issue 18.3: smoke and flood (priority 1), door, bed, wandering; provisional codes.
        ({"dty": "0023", "stc": "0010"}, EventKind.ALARM, AlarmType.SMOKE, True),
        ({"dty": "0033", "stc": "0009"}, EventKind.ALARM, AlarmType.WATER, True),
        ({"dty": "0014", "stc": "0076"}, EventKind.ALARM, AlarmType.DOOR, True),
        ({"dty": "0012", "stc": "0003"}, EventKind.ALARM, AlarmType.BED_EXIT, True),
        ({"dty": "0015"}, EventKind.ALARM, AlarmType.DOOR, True),
        ({"dty": "0006"}, EventKind.ALARM, AlarmType.MANUAL, True),
        ({"dty": "0007"}, EventKind.ALARM, AlarmType.MANUAL, True),
        ({"dty": "0008"}, EventKind.ALARM, AlarmType.MANUAL, True),
        ({"dty": "0009"}, EventKind.ALARM, AlarmType.MANUAL, True),
        ({"dty": "0011", "stc": "0081"}, EventKind.ALARM, AlarmType.MEDICATION, True),
        ({"dty": "0010", "stc": "0104"}, EventKind.ALARM, AlarmType.INACTIVITY, True),
        ({"dty": "0024", "stc": "0101"}, EventKind.ALARM, AlarmType.TEMPERATURE, True),
        # Issue 18.4: status events are not alarms.
        ({"stc": "0019"}, EventKind.STATUS, None, True),
        ({"stc": "0093"}, EventKind.STATUS, None, True),
        ({"stc": "0111"}, EventKind.STATUS, None, True),
        ({"stc": "0088"}, EventKind.STATUS, None, True),
        ({"dty": "0003", "stc": "0016"}, EventKind.FAULT, None, True),
        ({"dty": "0002", "stc": "0085"}, EventKind.FAULT, None, True),
        ({"dty": "0002", "stc": "0086"}, EventKind.RESTORE, None, True),
        ({"stc": "0070"}, EventKind.INFO, None, True),
        # An "alarm" from infrastructure is a fault of it.
        ({"dty": "0040", "stc": "0010"}, EventKind.FAULT, None, True),
        # Unknown codes never drop an alarm: MANUAL or the device's type, flagged.
        ({"dty": "9999"}, EventKind.ALARM, AlarmType.MANUAL, False),
        ({"dty": "23", "stc": "777"}, EventKind.ALARM, AlarmType.SMOKE, False),
        ({"dty": "23", "stc": "49"}, EventKind.ALARM, AlarmType.SMOKE, False),
    ],
)
def test_classify(
    overrides: dict[str, object], kind: EventKind, alarm_type: AlarmType | None, known: bool
) -> None:
    result = classify(_request(**overrides))
    assert (result.kind, result.alarm_type, result.known) == (kind, alarm_type, known)


@pytest.mark.parametrize(("stc", "status"), [
    ("0019", DeviceStatus.CANCELLED), ("0002", DeviceStatus.CANCELLED),
    ("0092", DeviceStatus.RESET), ("0093", DeviceStatus.RESET),
    ("0111", DeviceStatus.COMPLETE), ("0088", DeviceStatus.PRESENCE)])
def test_status_codes_name_the_device_status(stc: str, status: DeviceStatus) -> None:
    assert classify(_request(stc=stc)).status is status
    assert classify(_request(mty=MessageType.RESET)).status is DeviceStatus.RESET


def test_fault_kinds_pair_a_fault_with_its_restore() -> None:
    pendant_low = classify(_request(dty="0003", did="01", stc="0016"))
    pendant_ok = classify(_request(dty="3", did="01", stc="15"))
    assert pendant_low.faults == ("scaip.battery.3.01",) == pendant_ok.faults
    # Another pendant's battery is another fault; the controller's power is one per controller.
    assert classify(_request(dty="3", did="02", stc="16")).faults == ("scaip.battery.3.02",)
    assert classify(_request(dty="2", stc="85")).faults == ("scaip.power",)
    assert classify(_request(dty="48", stc="86")).faults == ("scaip.power",)
    # A restoral clears every fault of the device that sent it.
    assert set(classify(_request(dty="3", did="01", stc="94")).faults) == {
        "scaip.battery.3.01", "scaip.device.3.01", "scaip.tamper.3.01"}
    # A device id that is not a plain id does not end up in a ref.
    assert classify(_request(dty="3", did="a/b", stc="16")).faults == ("scaip.battery.3.-",)


def test_classify_tables_are_injectable() -> None:
    result = classify(
        _request(dty="42", stc="555"),
        device_types={42: AlarmType.DOOR},
        status_codes={555: StatusMeaning.ALARM},
    )
    assert (result.alarm_type, result.known) == (AlarmType.DOOR, True)
    site = ScaipTables.with_overrides({23: AlarmType.WATER}, {10: StatusRule(StatusMeaning.INFO)})
    assert classify(_request(dty="23", stc="9"), tables=site).alarm_type is AlarmType.WATER
    assert classify(_request(dty="23", stc="10"), tables=site).kind is EventKind.INFO
    assert classify(_request(dty="5", stc="9"), tables=site).alarm_type is AlarmType.FALL


def test_site_tables_are_validated() -> None:
    with pytest.raises(ValueError, match="test"):
        ScaipTables.with_overrides({1: AlarmType.TEST}, {})
    with pytest.raises(ValueError, match="0-9999"):
        ScaipTables.with_overrides({10_000: AlarmType.FALL}, {})
    assert parse_status_rule("fault:battery") == StatusRule(StatusMeaning.FAULT, "battery")
    assert parse_status_rule("restore:*") == StatusRule(StatusMeaning.RESTORE, "*")
    assert str(parse_status_rule(" presence ")) == "presence"
    for bad in ("alarmx", "fault", "fault:*", "fault:Battery", "reset:battery", "restore:"):
        with pytest.raises(ValueError):
            parse_status_rule(bad)


def test_every_device_alarm_type_has_a_device_type() -> None:
    # Test alarms come as a status code.
    mapped = {alarm_type for _, alarm_type in DEVICE_TYPE_ROWS}
    assert mapped == set(AlarmType) - {AlarmType.TEST}


def test_code_tables_are_the_public_lists() -> None:
    """Spot checks against the public code lists (docs/scaip.md, "Sources")."""
    devices = {row.code: row.meaning for row, _ in DEVICE_TYPE_ROWS}
    statuses = {row.code: row.meaning for row, _ in STATUS_CODE_ROWS}
    assert devices[23] == "smoke detector" and devices[33] == "flood detector"
    assert devices[6] == "personal attack trigger" and devices[7] == "panic button"
    assert devices[8].startswith("duty switch") and devices[9].startswith("duty switch")
    assert devices[11] == "pill dispenser"
    assert statuses[16] == "battery low" and statuses[85] == "power failure"
    assert statuses[88] == "presence after alarm" and statuses[111] == "intervention complete"
    assert statuses[93] == "manual reset" and statuses[102].startswith("test transmission")
    assert sorted(devices) == [c for c in range(52) if c != 42]
    assert sorted(statuses) == [c for c in range(128) if c != 49]


def test_content_key_ignores_ref_and_position_only() -> None:
    base = _request(stc="0010")
    assert content_of(base) == content_of(dataclasses.replace(base, ref="other"))
    moved = Position(59.3, 18.0, None, None, PositionSource.SCAIP_GEO)
    assert content_of(base) == content_of(dataclasses.replace(base, position=moved))
    for change in ({"stc": "0009"}, {"dty": "23"}, {"did": "2"}, {"cid": "4712"},
                   {"location": Location("021")}, {"crd": ("gsm:+46",)},
                   {"extra": (("cha", "1"),)}):
        assert content_of(base) != content_of(dataclasses.replace(base, **change)), change
    # Padding is not content: "10" and "0010" are the same code.
    assert content_of(base) == content_of(dataclasses.replace(base, stc="10"))


def test_describe_names_device_status_and_place() -> None:
    text = describe(_request(dty="0023", stc="0010", location=Location("021", None, "Köket")))
    assert text == "SCAIP smoke detector (dty 0023), manual alarm (stc 0010), at kitchen / Köket"


def test_readable_ref_from_broken_documents() -> None:
    assert readable_ref(b"<mrq><ref>abc1</ref><cid>1") == "abc1"
    assert readable_ref(b"<mrq><ref>a-b</ref>") is None
    assert readable_ref(b"<ref>a</ref><ref>b</ref>") is None
    assert readable_ref(b"<ref>a</ref><ref>a</ref>") == "a"
