"""The SCAIP codec: <mrq> table, XML attacks, properties, <mrs>, mapping to trygg types."""

from __future__ import annotations

from xml.sax.saxutils import escape

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alarms.model import AlarmType
from devices.scaip import (
    DEVICE_TYPE_ROWS,
    MAX_SCAIP_XML,
    EventKind,
    Location,
    MessageType,
    ScaipError,
    ScaipReason,
    ScaipRequest,
    ScaipResponse,
    Snu,
    StatusMeaning,
    check_sender,
    classify,
    encode_mrq,
    encode_mrs,
    parse_mrq,
    parse_mrs,
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
        b'<?xml version="1.0" encoding="UTF-8"?>\n<mrq>\n  <ref>r</ref>\n  <cid>c</cid>\n'
        b"  <dty>5</dty>\n  <mty>re</mty>\n  <pri>2</pri>\n  <lco>002</lco>\n"
        b"  <lva>K\xc3\xb6k</lva>\n  <lte>59.3293</lte>\n  <lge>18.0686</lge>\n"
        b"  <crd>gsm:+4670</crd><crd>sip:4711@h</crd><!-- a comment -->\n</mrq>",
        {
            "mty": MessageType.RESET,
            "pri": 2,
            "location": Location("002", "Kök", "59.3293", "18.0686"),
            "crd": ("gsm:+4670", "sip:4711@h"),
        },
    ),
    (
        b"<mrq><ref>abcdefghijklmnop</ref><cid>c</cid><dty>1</dty><mty>IN</mty>"
        b"<ver>01.00</ver><hbo>0</hbo></mrq>",
        {
            "ref": "abcdefghijklmnop",
            "mty": MessageType.INFO,
            "extra": (("ver", "01.00"), ("hbo", "0")),
        },
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


R, C, D = "<ref>r1</ref>", "<cid>c1</cid>", "<dty>4</dty>"

INVALID: list[tuple[bytes, Snu, ScaipReason, str | None]] = [
    (_mrq(C, D), Snu.MANDATORY_MISSING, ScaipReason.MISSING_TAG, None),
    (_mrq(R, D), Snu.MANDATORY_MISSING, ScaipReason.MISSING_TAG, "r1"),
    (_mrq(R, C), Snu.MANDATORY_MISSING, ScaipReason.MISSING_TAG, "r1"),
    (_mrq(R, C, "<dty> </dty>"), Snu.MANDATORY_MISSING, ScaipReason.MISSING_TAG, "r1"),
    (_mrq("<ref>" + "x" * 17 + "</ref>", C, D), Snu.WRONG_CONTENT, ScaipReason.BAD_FIELD, None),
    (_mrq("<ref>a b</ref>", C, D), Snu.WRONG_CONTENT, ScaipReason.BAD_FIELD, None),
    (_mrq(R, C, "<dty>x4</dty>"), Snu.WRONG_CONTENT, ScaipReason.BAD_FIELD, "r1"),
    (_mrq(R, C, "<dty>12345</dty>"), Snu.WRONG_CONTENT, ScaipReason.BAD_FIELD, "r1"),
    (_mrq(R, C, D, "<stc>ten</stc>"), Snu.WRONG_CONTENT, ScaipReason.BAD_FIELD, "r1"),
    (_mrq(R, C, D, "<pri>high</pri>"), Snu.WRONG_CONTENT, ScaipReason.BAD_FIELD, "r1"),
    (_mrq(R, C, D, "<mty>XX</mty>"), Snu.WRONG_CONTENT, ScaipReason.UNKNOWN_MTY, "r1"),
    (_mrq(R, C, D, "<lva>" + "x" * 300 + "</lva>"), Snu.WRONG_CONTENT, ScaipReason.BAD_FIELD, None),
    (_mrq(R, R, C, D), Snu.INVALID_FORMAT, ScaipReason.DUPLICATE_TAG, None),
    (_mrq(R, C, "<dty><x>4</x></dty>"), Snu.INVALID_FORMAT, ScaipReason.NESTED, None),
    (_mrq(R, "stray text", C, D), Snu.INVALID_FORMAT, ScaipReason.NESTED, None),
    (b"<mrs><ref>r</ref><snu>0</snu></mrs>", Snu.INVALID_FORMAT, ScaipReason.WRONG_ROOT, None),
    (b"<mrq><ref>r</ref>", Snu.INVALID_FORMAT, ScaipReason.NOT_XML, None),
    (b"", Snu.INVALID_FORMAT, ScaipReason.NOT_XML, None),
    (b"\xff\xfe<\x00m", Snu.INVALID_FORMAT, ScaipReason.NOT_XML, None),
    (b'<?xml version="1.0" encoding="nope"?><mrq/>', Snu.INVALID_FORMAT, ScaipReason.NOT_XML, None),
    (
        _mrq(*[f"<x{i}>1</x{i}>" for i in range(60)]),
        Snu.INVALID_FORMAT,
        ScaipReason.TOO_MANY_FIELDS,
        None,
    ),
    (
        _mrq(R, C, D, "<lva>" + "x" * MAX_SCAIP_XML + "</lva>"),
        Snu.TOO_LONG,
        ScaipReason.OVERSIZE,
        None,
    ),
]


@pytest.mark.parametrize(("doc", "snu", "reason", "ref"), INVALID)
def test_invalid_mrq(doc: bytes, snu: Snu, reason: ScaipReason, ref: str | None) -> None:
    parsed = parse_mrq(doc)
    assert isinstance(parsed, ScaipError), parsed
    assert (parsed.snu, parsed.reason) == (snu, reason)
    if ref is not None:
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
        assert 1 <= len(parsed.ref) <= 16
        assert parsed.cid and parsed.dty.isdigit()
        # Everything the gateway derives from a valid request must also be total.
        classify(parsed)
        parse_mrs(encode_mrs(parsed.ref, Snu.OK))
    else:
        assert parsed.snu in set(Snu)


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
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=16),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64),
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
        ({"mty": MessageType.RESET}, EventKind.RESET, None, True),
        ({"mty": MessageType.INFO}, EventKind.INFO, None, True),
        ({"stc": "0010"}, EventKind.ALARM, AlarmType.MANUAL, True),
        ({"stc": "19"}, EventKind.RESET, None, True),
        ({"stc": "0102"}, EventKind.ALARM, AlarmType.TEST, True),
        ({"dty": "0005", "stc": "10"}, EventKind.ALARM, AlarmType.FALL, True),
        ({"dty": "6"}, EventKind.ALARM, AlarmType.SMOKE, True),
        ({"dty": "0007"}, EventKind.ALARM, AlarmType.WATER, True),
        ({"dty": "8"}, EventKind.ALARM, AlarmType.BED_EXIT, True),
        ({"dty": "9"}, EventKind.ALARM, AlarmType.DOOR, True),
        ({"dty": "10"}, EventKind.ALARM, AlarmType.INACTIVITY, True),
        ({"dty": "11"}, EventKind.ALARM, AlarmType.TEMPERATURE, True),
        # Unknown codes never drop an alarm: MANUAL, flagged as a fallback.
        ({"dty": "9999"}, EventKind.ALARM, AlarmType.MANUAL, False),
        ({"dty": "6", "stc": "777"}, EventKind.ALARM, AlarmType.SMOKE, False),
    ],
)
def test_classify(
    overrides: dict[str, object], kind: EventKind, alarm_type: AlarmType | None, known: bool
) -> None:
    result = classify(_request(**overrides))
    assert (result.kind, result.alarm_type, result.known) == (kind, alarm_type, known)


def test_classify_tables_are_injectable() -> None:
    result = classify(
        _request(dty="42", stc="555"),
        device_types={42: AlarmType.DOOR},
        status_codes={555: StatusMeaning.ALARM},
    )
    assert (result.alarm_type, result.known) == (AlarmType.DOOR, True)


def test_every_device_alarm_type_has_a_device_type() -> None:
    # Test alarms come as a status code; technical alarms are raised by the gateway itself.
    mapped = {alarm_type for _, alarm_type in DEVICE_TYPE_ROWS}
    assert mapped == set(AlarmType) - {AlarmType.TEST, AlarmType.TECHNICAL}


def test_location_coordinates() -> None:
    assert Location(lat="59.3293", lon="18.0686").latitude == pytest.approx(59.3293)
    assert Location(lat="91", lon="x").latitude is None
    assert Location(lon="nan").longitude is None
