"""The sans-I/O SIP codec: parsing, building, stream framing; never raises on any bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.sip import (
    MAX_SIP_MESSAGE,
    SipError,
    SipErrorReason,
    SipRequest,
    SipResponse,
    SipStreamReader,
    build_request,
    build_response,
    canonical_name,
    header_tag,
    header_uri,
    parse_message,
    uri_user,
    via_branch,
)

BODY = b"<mrq><ref>1</ref><cid>4711</cid><dty>4</dty></mrq>"


def message(
    *,
    start: str = "MESSAGE sip:trygg@127.0.0.1 SIP/2.0",
    headers: list[str] | None = None,
    body: bytes = BODY,
    length: bool = True,
) -> bytes:
    """A SIP MESSAGE with sensible defaults; ``headers`` replaces the default set."""
    lines = [start]
    lines += (
        headers
        if headers is not None
        else [
            "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKabc",
            "From: <sip:4711@10.0.0.2>;tag=x1",
            "To: <sip:trygg@127.0.0.1>",
            "Call-ID: call-1@10.0.0.2",
            "CSeq: 7 MESSAGE",
            "Content-Type: application/scaip+xml",
        ]
    )
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_parses_a_message_request() -> None:
    parsed = parse_message(message())
    assert isinstance(parsed, SipRequest)
    assert parsed.method == "MESSAGE"
    assert parsed.uri == "sip:trygg@127.0.0.1"
    assert parsed.call_id == "call-1@10.0.0.2"
    assert parsed.cseq == (7, "MESSAGE")
    assert parsed.content_type == "application/scaip+xml"
    assert parsed.from_user == "4711"
    assert parsed.branch == "z9hG4bKabc"
    assert parsed.body == BODY


def test_compact_header_forms_are_expanded() -> None:
    raw = message(
        headers=[
            "v: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK1",
            "f: <sip:4711@h>;tag=a",
            "t: <sip:trygg@h>",
            "i: compact@h",
            "CSeq: 1 MESSAGE",
            "c: application/scaip+xml; charset=utf-8",
        ],
        length=False,
    ).replace(b"\r\n\r\n", f"\r\nl: {len(BODY)}\r\n\r\n".encode(), 1)
    parsed = parse_message(raw, stream=True)
    assert isinstance(parsed, SipRequest)
    assert [name for name, _ in parsed.headers] == [
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Content-Type",
        "Content-Length",
    ]
    assert parsed.content_type == "application/scaip+xml"
    assert parsed.call_id == "compact@h"


def test_folded_header_lines_are_unfolded() -> None:
    raw = message().replace(b"Call-ID: call-1@10.0.0.2", b"Call-ID:\r\n  folded@h")
    parsed = parse_message(raw)
    assert isinstance(parsed, SipRequest)
    assert parsed.call_id == "folded@h"


def test_multiple_via_lines_keep_their_order() -> None:
    raw = message().replace(b"Via:", b"Via: SIP/2.0/UDP proxy;branch=z9hG4bKp\r\nVia:", 1)
    parsed = parse_message(raw)
    assert isinstance(parsed, SipRequest)
    assert len(parsed.header_values("via")) == 2
    assert parsed.branch == "z9hG4bKp"


@pytest.mark.parametrize(
    ("raw", "reason", "status"),
    [
        (message(start="MESSAGE sip:x SIP/3.0"), SipErrorReason.BAD_VERSION, 505),
        (message(start="HELLO"), SipErrorReason.BAD_START_LINE, 400),
        (message(start="MESSAGE  sip:x SIP/2.0"), SipErrorReason.BAD_START_LINE, 400),
        (
            message().replace(b"Call-ID: call-1@10.0.0.2\r\n", b""),
            SipErrorReason.MISSING_HEADER,
            400,
        ),
        (message().replace(b"Via: ", b"Xyz: "), SipErrorReason.MISSING_HEADER, 400),
        (message().replace(b"CSeq: 7 MESSAGE", b"CSeq: 7 INVITE"), SipErrorReason.BAD_CSEQ, 400),
        (message().replace(b"CSeq: 7 MESSAGE", b"CSeq: x MESSAGE"), SipErrorReason.BAD_CSEQ, 400),
        (message().replace(b"To: <", b"To <"), SipErrorReason.BAD_HEADER, 400),
        (message().replace(b"To: <sip", b"To: \x01<sip"), SipErrorReason.BAD_HEADER, 400),
        (message() + b"", SipErrorReason.TRUNCATED, 400),  # replaced below
        (
            message().replace(b"Content-Length: ", b"Content-Length: -"),
            SipErrorReason.BAD_CONTENT_LENGTH,
            400,
        ),
        (message().split(b"\r\n\r\n")[0], SipErrorReason.TRUNCATED, 400),
        (b"MESSAGE sip:x SIP/2.0\r\nVia: \xff\r\n\r\n", SipErrorReason.BAD_ENCODING, 400),
        (message(body=b"x" * MAX_SIP_MESSAGE), SipErrorReason.OVERSIZE, 513),
        (
            message(headers=[f"X-{i}: {i}" for i in range(70)]),
            SipErrorReason.TOO_MANY_HEADERS,
            400,
        ),
    ],
)
def test_malformed_requests_are_refused_with_a_reason(
    raw: bytes, reason: SipErrorReason, status: int
) -> None:
    if raw == message():
        raw = message().replace(f"Content-Length: {len(BODY)}".encode(), b"Content-Length: 999")
    parsed = parse_message(raw)
    assert isinstance(parsed, SipError)
    assert parsed.reason is reason
    assert parsed.status == status
    assert parsed.detail


def test_error_keeps_readable_headers_for_the_400() -> None:
    parsed = parse_message(message().replace(b"CSeq: 7 MESSAGE", b"CSeq: nope"))
    assert isinstance(parsed, SipError)
    assert parsed.header("Call-ID") == "call-1@10.0.0.2"
    assert parsed.header("via") is not None


def test_udp_without_content_length_takes_the_datagram_tcp_refuses() -> None:
    raw = message(length=False)
    udp = parse_message(raw)
    assert isinstance(udp, SipRequest)
    assert udp.body == BODY
    tcp = parse_message(raw, stream=True)
    assert isinstance(tcp, SipError)
    assert tcp.reason is SipErrorReason.MISSING_CONTENT_LENGTH


def test_bytes_beyond_content_length_are_discarded_on_udp() -> None:
    parsed = parse_message(message() + b"trailing junk")
    assert isinstance(parsed, SipRequest)
    assert parsed.body == BODY


def test_parses_a_response() -> None:
    raw = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKq\r\nCall-ID: c\r\n\r\n"
    parsed = parse_message(raw)
    assert isinstance(parsed, SipResponse)
    assert (parsed.status, parsed.reason, parsed.branch, parsed.call_id) == (
        200,
        "OK",
        "z9hG4bKq",
        "c",
    )


def test_build_response_echoes_the_transaction_and_adds_a_to_tag() -> None:
    request = parse_message(message())
    assert isinstance(request, SipRequest)
    raw = build_response(200, request=request, to_tag="gw1", body=b"<mrs/>", content_type="a/b")
    response = parse_message(raw, stream=True)
    assert isinstance(response, SipResponse)
    assert response.status == 200
    for name in ("Via", "From", "Call-ID", "CSeq"):
        assert response.header(name) == request.header(name)
    assert response.header("To") == "<sip:trygg@127.0.0.1>;tag=gw1"
    assert response.body == b"<mrs/>"
    assert response.header("Content-Type") == "a/b"


def test_build_response_keeps_an_existing_to_tag_and_sanitises_the_reason() -> None:
    request = parse_message(message().replace(b"To: <sip:trygg@127.0.0.1>", b"To: <sip:t@h>;tag=a"))
    assert isinstance(request, SipRequest)
    raw = build_response(400, request=request, to_tag="b", reason="bad\r\nInjected: yes")
    response = parse_message(raw)
    assert isinstance(response, SipResponse)
    assert response.header("To") == "<sip:t@h>;tag=a"
    assert response.header("Injected") is None
    assert response.reason == "bad  Injected: yes"


def test_build_request_round_trips() -> None:
    raw = build_request(
        "MESSAGE",
        "sip:4711@10.0.0.2:5060",
        via_host="127.0.0.1",
        via_port=5060,
        transport="tcp",
        branch="z9hG4bKxyz",
        from_uri="sip:trygg@127.0.0.1",
        from_tag="t1",
        to_uri="sip:4711@10.0.0.2:5060",
        call_id="c1",
        cseq=3,
        body=b"<mrs><ref>1</ref><snu>0</snu></mrs>",
        content_type="application/scaip+xml",
    )
    parsed = parse_message(raw, stream=True)
    assert isinstance(parsed, SipRequest)
    assert parsed.branch == "z9hG4bKxyz"
    assert (parsed.header("Via") or "").startswith("SIP/2.0/TCP 127.0.0.1:5060")
    assert parsed.cseq == (3, "MESSAGE")
    assert header_tag(parsed.header("From") or "") == "t1"
    assert parsed.body.startswith(b"<mrs>")


@pytest.mark.parametrize(
    ("value", "user"),
    [
        ("<sip:4711@10.0.0.2>;tag=x", "4711"),
        ('"Anna" <sips:cid-9@host:5061;transport=tls>', "cid-9"),
        ("sip:host.only", None),
        ("<tel:+4670123>", "+4670123"),
        ("garbage", None),
    ],
)
def test_uri_user(value: str, user: str | None) -> None:
    assert uri_user(value) == user


def test_header_helpers() -> None:
    assert header_uri('"A" <sip:a@b>;tag=1') == "sip:a@b"
    assert header_uri("sip:a@b;tag=1") == "sip:a@b"
    assert header_tag("<sip:a@b;tag=notme>;tag=me") == "me"
    assert via_branch("SIP/2.0/UDP h;rport;branch=z9hG4bK1, SIP/2.0/UDP p;branch=z9hG4bK2") == (
        "z9hG4bK1"
    )
    assert canonical_name("call-id") == "Call-ID"
    assert canonical_name("x-custom-thing") == "X-Custom-Thing"


# -- stream framing ------------------------------------------------------------------------


def test_stream_reader_frames_byte_by_byte() -> None:
    reader = SipStreamReader()
    raw = message() + message().replace(b"call-1", b"call-2")
    out = [item for byte in raw for item in reader.feed(bytes([byte]))]
    assert [m.call_id for m in out if isinstance(m, SipRequest)] == [
        "call-1@10.0.0.2",
        "call-2@10.0.0.2",
    ]
    assert reader.buffered == 0


def test_stream_reader_skips_keepalive_crlfs() -> None:
    out = SipStreamReader().feed(b"\r\n\r\n" + message() + b"\r\n\r\n")
    assert len(out) == 1
    assert isinstance(out[0], SipRequest)


def test_stream_reader_resyncs_after_garbage() -> None:
    reader = SipStreamReader()
    out = reader.feed(b"\x00\xffhello there\r\nmore junk\r\n" + message())
    assert isinstance(out[0], SipError)
    assert out[0].reason is SipErrorReason.GARBAGE
    assert isinstance(out[-1], SipRequest)


def test_stream_reader_refuses_missing_content_length_and_continues() -> None:
    out = SipStreamReader().feed(message(length=False, body=b"") + message())
    assert isinstance(out[0], SipError)
    assert out[0].reason is SipErrorReason.MISSING_CONTENT_LENGTH
    assert out[0].header("Call-ID") == "call-1@10.0.0.2"
    assert isinstance(out[1], SipRequest)


def test_stream_reader_refuses_oversize_content_length_and_continues() -> None:
    huge = message().replace(f"Content-Length: {len(BODY)}".encode(), b"Content-Length: 999999")
    out = SipStreamReader().feed(huge + message())
    assert isinstance(out[0], SipError)
    assert out[0].reason is SipErrorReason.OVERSIZE
    assert isinstance(out[-1], SipRequest)


def test_stream_reader_bounds_an_endless_header() -> None:
    reader = SipStreamReader()
    out = reader.feed(b"MESSAGE sip:x SIP/2.0\r\nX: " + b"a" * (MAX_SIP_MESSAGE + 10))
    assert any(
        isinstance(item, SipError) and item.reason is SipErrorReason.OVERSIZE for item in out
    )
    assert reader.buffered <= MAX_SIP_MESSAGE
    assert isinstance(reader.feed(b"\r\n" + message())[-1], SipRequest)


# -- properties ----------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=2048))
def test_parse_never_raises_on_random_bytes(data: bytes) -> None:
    for stream in (False, True):
        assert isinstance(parse_message(data, stream=stream), SipRequest | SipResponse | SipError)


_TOKENS = st.sampled_from(
    [
        b"MESSAGE sip:a@b SIP/2.0\r\n",
        b"SIP/2.0 200 OK\r\n",
        b"Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\n",
        b"Content-Length: 3\r\n",
        b"Content-Length: 99999\r\n",
        b"l: 0\r\n",
        b"CSeq: 1 MESSAGE\r\n",
        b"\r\n",
        b"abc",
        b"\xff\x00",
        b" folded\r\n",
    ]
)


@settings(max_examples=300)
@given(st.lists(st.one_of(_TOKENS, st.binary(max_size=40)), max_size=40), st.integers(1, 64))
def test_stream_reader_never_raises_and_stays_bounded(parts: list[bytes], chunk: int) -> None:
    reader = SipStreamReader()
    data = b"".join(parts)
    for i in range(0, len(data), chunk):
        for item in reader.feed(data[i : i + chunk]):
            assert isinstance(item, SipRequest | SipResponse | SipError)
        assert reader.buffered <= MAX_SIP_MESSAGE + chunk


# -- issue 18.5 ----------------------------------------------------------------------------


def test_methods_are_case_sensitive() -> None:
    lower = message(start="message sip:trygg@127.0.0.1 SIP/2.0").replace(
        b"CSeq: 7 MESSAGE", b"CSeq: 7 message")
    for stream in (False, True):
        parsed = parse_message(lower, stream=stream)
        assert isinstance(parsed, SipRequest)
        assert parsed.method == "message", "an unknown method, for the listener to answer 405"
    # ... and the stream reader frames it like any request (it used to be skipped as junk).
    out = SipStreamReader().feed(lower + message())
    assert [m.method for m in out if isinstance(m, SipRequest)] == ["message", "MESSAGE"]
    # CSeq must name the method exactly.
    mixed = message().replace(b"CSeq: 7 MESSAGE", b"CSeq: 7 Message")
    assert isinstance(parse_message(mixed), SipError)


@pytest.mark.parametrize(("value", "user"), [
    ("<sip:4711@h>;tag=1", "4711"),
    ('"sip:4711@evil" <sip:666@h>;tag=1', "666"),
    ('"A \\"quoted\\" <sip:4711@x>" <sip:666@h>', "666"),
    ("Mallory sip:4711@x <sip:666@h>", "666"),
    ("sip:4711@h;tag=1", "4711"),
    ('"unterminated <sip:4711@h>', None),
    ('"a" sip:4711@h', None),
    ("<sip:4711@h", None),
    ("", None),
])
def test_from_user_is_the_uri_user_never_the_display_name(value: str, user: str | None) -> None:
    raw = message().replace(b"From: <sip:4711@10.0.0.2>;tag=x1", f"From: {value}".encode())
    parsed = parse_message(raw)
    assert isinstance(parsed, SipRequest)
    assert parsed.from_user == user


def test_oversize_datagram_keeps_the_addressing_headers_for_the_513() -> None:
    big = message(body=b"x" * (20 * 1024))
    parsed = parse_message(big)
    assert isinstance(parsed, SipError) and parsed.status == 513
    assert parsed.header("Via") == "SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKabc"
    assert parsed.header("Call-ID") == "call-1@10.0.0.2"
    assert parsed.header("Content-Type") is None, "only what a response echoes"
    # A 20 KiB header block, too.
    huge_head = message(headers=[
        "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKabc", "From: <sip:4711@h>;tag=1",
        "To: <sip:t@h>", "Call-ID: c", "CSeq: 1 MESSAGE", "X-Pad: " + "p" * 20 * 1024])
    error = parse_message(huge_head)
    assert isinstance(error, SipError) and error.status == 513
    assert error.header("CSeq") == "1 MESSAGE"
    reply = build_response(513, request=error)
    assert reply.startswith(b"SIP/2.0 513 Message Too Large\r\nVia: SIP/2.0/UDP 10.0.0.2")


def test_oversize_header_block_on_a_stream_is_answerable_then_resyncs() -> None:
    reader = SipStreamReader()
    head = (b"MESSAGE sip:x SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bKbig\r\n"
            b"From: <sip:1@h>;tag=1\r\nTo: <sip:t@h>\r\nCall-ID: big\r\nCSeq: 1 MESSAGE\r\n")
    out = reader.feed(head + b"X-Pad: " + b"p" * (20 * 1024))
    errors = [o for o in out if isinstance(o, SipError)]
    assert errors[0].status == 513 and errors[0].is_request
    assert errors[0].header("Call-ID") == "big"
    out = reader.feed(b"\r\n\r\n" + message())
    assert isinstance(out[-1], SipRequest)


def test_too_many_headers_keep_the_first_ones_for_the_400() -> None:
    many = message().replace(b"Content-Type:", b"".join(
        f"X-H{i}: {i}\r\n".encode() for i in range(80)) + b"Content-Type:")
    for stream in (False, True):
        parsed = parse_message(many, stream=stream)
        assert isinstance(parsed, SipError)
        assert parsed.reason is SipErrorReason.TOO_MANY_HEADERS and parsed.status == 400
        assert parsed.header("Via") is not None and parsed.header("CSeq") == "7 MESSAGE"
    streamed = SipStreamReader().feed(many + message())
    assert isinstance(streamed[0], SipError) and streamed[0].header("Via") is not None
    assert isinstance(streamed[-1], SipRequest)
