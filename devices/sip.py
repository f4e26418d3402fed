"""A sans-I/O SIP codec (RFC 3261), just big enough to carry SCAIP.

SCAIP (SS 91100 / CLC/TS 50134-9, docs/scaip.md) rides in SIP MESSAGE requests. This module
turns bytes into a frozen ``SipRequest`` / ``SipResponse`` or a ``SipError`` with a reason and
the status code to answer with, and builds the few messages the gateway sends. It never
touches a socket; ``gateway/sip.py`` is the asyncio shell around it.

It is strict on purpose: a safety-alarm receiver should refuse what it does not understand
with a clear reason rather than guess. It is not a general SIP stack: no dialogs, no
authentication, no SDP.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeAlias

# A SCAIP MESSAGE is well under 2 KiB (the <mrq> is a few hundred bytes, the SIP head a few
# hundred more). 16 KiB leaves room for long Via chains through proxies, and matches the
# head-buffer limit h11 and most HTTP servers use. Anything larger is refused before it is
# parsed, so one peer cannot make the gateway buffer or parse megabytes. UDP datagrams
# are also far below the 64 KiB IP limit at this size.
MAX_SIP_MESSAGE = 16 * 1024

# Header counts and line lengths are bounded separately, so a message inside the size limit
# still cannot be made of thousands of tiny headers.
MAX_HEADERS = 64

SIP_VERSION = "SIP/2.0"

# RFC 3261 section 7.3.3 compact forms, mapped to the long names we store.
COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

# Canonical spelling for headers we emit or read, so stored names are predictable.
_CANONICAL: dict[str, str] = {
    name.lower(): name
    for name in (
        *COMPACT_FORMS.values(),
        "CSeq",
        "Max-Forwards",
        "User-Agent",
        "Server",
        "Allow",
        "Accept",
        "Expires",
        "Route",
        "Record-Route",
        "Warning",
        "WWW-Authenticate",
        "Authorization",
    )
}

# Request headers RFC 3261 section 8.1.1 makes mandatory and that we need to answer.
_MANDATORY = ("Via", "From", "To", "Call-ID", "CSeq")

_TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
# Methods are case-sensitive tokens (RFC 3261 section 7.1): "message" is not MESSAGE, it is
# an unknown method, answered 405 on every transport alike.
_REQUEST_LINE = re.compile(r"^([A-Za-z0-9\-.!%*_+`'~]{1,32}) (\S+) (SIP/\d\.\d)$")
_STATUS_LINE = re.compile(r"^(SIP/\d\.\d) ([1-6]\d\d) ?(.*)$")
# Where a new message may start in a stream; used to resynchronise after garbage. Not
# anchored to a line start: on TCP the next message follows the previous body directly.
_START = re.compile(
    rb"(?:[A-Za-z][A-Za-z0-9\-.!%*_+`'~]{0,31} [^ \r\n]+ SIP/2\.0\r\n|SIP/2\.0 [1-6]\d\d )"
)


class SipErrorReason(StrEnum):
    """Why bytes were not a SIP message; also the label of the reject counter."""

    OVERSIZE = "oversize"
    BAD_ENCODING = "bad_encoding"
    BAD_START_LINE = "bad_start_line"
    BAD_VERSION = "bad_version"
    BAD_HEADER = "bad_header"
    TOO_MANY_HEADERS = "too_many_headers"
    MISSING_HEADER = "missing_header"
    BAD_CSEQ = "bad_cseq"
    BAD_CONTENT_LENGTH = "bad_content_length"
    MISSING_CONTENT_LENGTH = "missing_content_length"
    TRUNCATED = "truncated"
    GARBAGE = "garbage"


Headers: TypeAlias = tuple[tuple[str, str], ...]


def _lookup(headers: Headers, name: str) -> tuple[str, ...]:
    key = name.lower()
    return tuple(value for hname, value in headers if hname.lower() == key)


@dataclass(frozen=True, slots=True)
class SipError:
    """Bytes that were refused. ``status`` is what to answer a request with.

    ``headers`` holds what could be parsed before the error (possibly nothing), so a 400
    can still echo Via/From/To/Call-ID/CSeq when they were readable.
    """

    reason: SipErrorReason
    detail: str
    status: int = 400
    is_request: bool = True
    headers: Headers = ()

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` that was readable, if any."""
        values = _lookup(self.headers, name)
        return values[0] if values else None


@dataclass(frozen=True, slots=True)
class SipRequest:
    """A parsed SIP request. Header names are stored in long, canonical form."""

    method: str
    uri: str
    headers: Headers
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        values = _lookup(self.headers, name)
        return values[0] if values else None

    def header_values(self, name: str) -> tuple[str, ...]:
        """All values of header ``name`` in order (one per header line)."""
        return _lookup(self.headers, name)

    @property
    def call_id(self) -> str:
        """The Call-ID (mandatory, so always present on a parsed request)."""
        return self.header("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        """(sequence number, method) from CSeq; validated by the parser."""
        number, method = (self.header("CSeq") or "0 ?").split()
        return int(number), method

    @property
    def content_type(self) -> str | None:
        """The media type without parameters, lower-cased, or None."""
        value = self.header("Content-Type")
        return value.split(";", 1)[0].strip().lower() if value else None

    @property
    def from_user(self) -> str | None:
        """The user part of the From URI (``sip:USER@host``), or None.

        Only the URI counts, never the display name: ``"sip:4711@x" <sip:666@y>`` is 666.
        """
        uri = name_addr_uri(self.header("From") or "")
        return None if uri is None else uri_user(uri)

    @property
    def branch(self) -> str | None:
        """The branch parameter of the topmost Via, or None."""
        return via_branch(self.header("Via") or "")


@dataclass(frozen=True, slots=True)
class SipResponse:
    """A parsed SIP response."""

    status: int
    reason: str
    headers: Headers
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        values = _lookup(self.headers, name)
        return values[0] if values else None

    @property
    def call_id(self) -> str:
        """The Call-ID."""
        return self.header("Call-ID") or ""

    @property
    def branch(self) -> str | None:
        """The branch parameter of the topmost Via, or None."""
        return via_branch(self.header("Via") or "")


SipMessage: TypeAlias = SipRequest | SipResponse


class _Invalid(Exception):
    def __init__(
        self, reason: SipErrorReason, detail: str, status: int = 400, headers: Headers = ()
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.status = status
        self.headers = headers


# -- parsing -------------------------------------------------------------------------------


def parse_message(data: bytes, *, stream: bool = False) -> SipMessage | SipError:
    """Parse one complete SIP message. Never raises on any input.

    ``stream=True`` is for TCP, where Content-Length is the only framing and so is
    mandatory (RFC 3261 section 18.3). On UDP a missing Content-Length means "the rest of
    the datagram", and bytes beyond Content-Length are discarded as the RFC says.
    """
    is_request = not data.startswith(b"SIP/")
    if len(data) > MAX_SIP_MESSAGE:
        return SipError(
            SipErrorReason.OVERSIZE,
            f"message of {len(data)} bytes exceeds {MAX_SIP_MESSAGE}",
            status=513,
            is_request=is_request,
            headers=salvage_headers(data),
        )
    try:
        return _parse(data, stream=stream)
    except _Invalid as exc:
        return SipError(exc.reason, exc.detail, exc.status, is_request, exc.headers)


def _parse(data: bytes, *, stream: bool) -> SipMessage:
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        raise _Invalid(SipErrorReason.TRUNCATED, "no blank line after the headers")
    try:
        head = data[:head_end].decode("utf-8")
    except UnicodeDecodeError:
        raise _Invalid(SipErrorReason.BAD_ENCODING, "headers are not UTF-8") from None
    lines = head.split("\r\n")
    start = lines[0]
    headers = _parse_headers(lines[1:])
    body = data[head_end + 4 :]
    body = _frame_body(body, headers, stream=stream)
    request = _REQUEST_LINE.match(start)
    if request:
        method, uri, version = request.groups()
        if version != SIP_VERSION:
            raise _Invalid(SipErrorReason.BAD_VERSION, f"unsupported {version}", 505, headers)
        _check_request_headers(method, headers)
        return SipRequest(method, uri, headers, body)
    status = _STATUS_LINE.match(start)
    if status:
        version, code, reason = status.groups()
        if version != SIP_VERSION:
            raise _Invalid(SipErrorReason.BAD_VERSION, f"unsupported {version}", 505, headers)
        return SipResponse(int(code), reason, headers, body)
    raise _Invalid(SipErrorReason.BAD_START_LINE, f"bad start line {start[:80]!r}", 400, headers)


def _parse_headers(lines: list[str]) -> Headers:
    parsed: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            # RFC 3261 section 7.3.1: a line starting with whitespace continues the last
            # header (folding). Unfold it rather than refuse; old stacks still fold Via.
            if not parsed:
                raise _Invalid(SipErrorReason.BAD_HEADER, "continuation line before any header")
            name, value = parsed[-1]
            parsed[-1] = (name, f"{value} {line.strip()}".strip())
            continue
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not _TOKEN.match(name):
            raise _Invalid(
                SipErrorReason.BAD_HEADER, f"bad header line {line[:60]!r}", 400, tuple(parsed)
            )
        if any(ord(c) < 32 and c != "\t" for c in value):
            raise _Invalid(
                SipErrorReason.BAD_HEADER, f"control character in {name}", 400, tuple(parsed)
            )
        if len(parsed) >= MAX_HEADERS:
            # Keep the headers read so far: Via and the rest address the 400 (issue 18.5).
            raise _Invalid(
                SipErrorReason.TOO_MANY_HEADERS, f"more than {MAX_HEADERS} headers", 400,
                tuple(parsed),
            )
        parsed.append((canonical_name(name), value.strip()))
    return tuple(parsed)


def _declared_length(headers: Headers, *, stream: bool) -> int | None:
    lengths = _lookup(headers, "Content-Length")
    if not lengths:
        if stream:
            raise _Invalid(
                SipErrorReason.MISSING_CONTENT_LENGTH,
                "Content-Length is required on stream transports",
                400,
                headers,
            )
        return None
    if len(set(lengths)) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 6:
        raise _Invalid(
            SipErrorReason.BAD_CONTENT_LENGTH,
            f"bad Content-Length {lengths[0][:20]!r}",
            400,
            headers,
        )
    return int(lengths[0])


def _frame_body(body: bytes, headers: Headers, *, stream: bool) -> bytes:
    length = _declared_length(headers, stream=stream)
    if length is None:
        return body
    if length > len(body):
        raise _Invalid(
            SipErrorReason.TRUNCATED,
            f"Content-Length {length} but only {len(body)} body bytes",
            400,
            headers,
        )
    return body[:length]


def _check_request_headers(method: str, headers: Headers) -> None:
    for name in _MANDATORY:
        if not _lookup(headers, name):
            raise _Invalid(SipErrorReason.MISSING_HEADER, f"missing {name}", 400, headers)
    for name in ("From", "To", "Call-ID", "CSeq"):
        if len(_lookup(headers, name)) != 1:
            raise _Invalid(SipErrorReason.BAD_HEADER, f"more than one {name}", 400, headers)
    parts = (_lookup(headers, "CSeq")[0]).split()
    if (
        len(parts) != 2
        or not parts[0].isdigit()
        or len(parts[0]) > 10
        or int(parts[0]) >= 2**31
        or parts[1] != method
    ):
        raise _Invalid(
            SipErrorReason.BAD_CSEQ, "CSeq must be '<number> <request method>'", 400, headers
        )


def canonical_name(name: str) -> str:
    """The long, canonically cased header name (compact forms expanded)."""
    lower = name.lower()
    if len(lower) == 1 and lower in COMPACT_FORMS:
        return COMPACT_FORMS[lower]
    if lower in _CANONICAL:
        return _CANONICAL[lower]
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def uri_user(value: str) -> str | None:
    """The user part of the first SIP/SIPS URI (``sip:USER@host``) or TEL number, or None."""
    match = re.search(r"\bsips?:([^@;>\s:]+)@", value, re.IGNORECASE)
    if match:
        return match.group(1)
    match = re.search(r"\btel:([^;>\s]+)", value, re.IGNORECASE)
    return match.group(1) if match else None


def name_addr_uri(value: str) -> str | None:
    """The URI of a From/To/Contact value (RFC 3261 section 25.1), or None if malformed.

    ``name-addr`` is an optional display name (a quoted string, which may itself contain
    ``<`` or a URI, or tokens) then ``<URI>``; ``addr-spec`` is a bare URI, ended by ``;``
    parameters. The display name is skipped as a whole, so nothing in it is taken for the
    address.
    """
    rest = value.strip()
    if rest.startswith('"'):
        i, escaped = 1, False
        while i < len(rest):
            char = rest[i]
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                break
            i += 1
        else:
            return None  # unterminated quoted string
        rest = rest[i + 1 :].lstrip()
        if not rest.startswith("<"):
            return None
    if "<" in rest:
        display, _, after = rest.partition("<")
        if '"' in display:
            return None
        uri, closed, _ = after.partition(">")
        return uri.strip() if closed and uri.strip() else None
    uri = rest.split(";", 1)[0].strip()
    return uri or None


def header_uri(value: str) -> str:
    """The URI of a From/To/Contact value: what is inside ``<...>``, or the bare URI."""
    return name_addr_uri(value) or ""


def header_tag(value: str) -> str | None:
    """The ``tag`` parameter of a From/To value, or None."""
    after = value.rsplit(">", 1)[-1]
    match = re.search(r";\s*tag=([^;\s]+)", after, re.IGNORECASE)
    return match.group(1) if match else None


def via_branch(value: str) -> str | None:
    """The branch parameter of the first Via value, or None."""
    match = re.search(r";\s*branch=([^;,\s]+)", value.split(",", 1)[0], re.IGNORECASE)
    return match.group(1) if match else None


# -- stream framing ------------------------------------------------------------------------


@dataclass(slots=True)
class SipStreamReader:
    """Frames SIP messages out of a TCP byte stream: ``feed(bytes) -> messages``.

    After garbage or a refused message it resynchronises on the next line that looks like a
    request or status line, so one bad message does not poison the connection. Its buffer
    never grows beyond ``MAX_SIP_MESSAGE`` plus one read.
    """

    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[SipMessage | SipError]:
        """Add received bytes; return every complete message (or error) they finish."""
        self._buffer += data
        out: list[SipMessage | SipError] = []
        while True:
            item = self._next()
            if item is None:
                return out
            out.append(item)

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a message."""
        return len(self._buffer)

    def _next(self) -> SipMessage | SipError | None:
        buf = self._buffer
        # RFC 5626 keep-alives are bare CRLFs between messages; skip them silently.
        skip = 0
        while buf[skip : skip + 2] == b"\r\n":
            skip += 2
        if skip:
            del buf[:skip]
        if not buf:
            return None
        first_line_end = buf.find(b"\r\n")
        if first_line_end >= 0 and not _START.match(bytes(buf[: first_line_end + 2])):
            return self._resync(SipErrorReason.GARBAGE, "bytes before a SIP start line")
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            if len(buf) > MAX_SIP_MESSAGE:
                # Answer 513 where the head says where to (issue 18.5), then resynchronise.
                error = SipError(
                    SipErrorReason.OVERSIZE,
                    f"headers exceed {MAX_SIP_MESSAGE} bytes",
                    status=513,
                    is_request=not buf.startswith(b"SIP/"),
                    headers=salvage_headers(bytes(buf)),
                )
                self._resync(SipErrorReason.OVERSIZE, "")
                return error
            return None
        head = bytes(buf[: head_end + 4])
        length = _content_length(head)
        if isinstance(length, SipError):
            self._drop(head_end + 4)
            return self._after_drop(length)
        total = head_end + 4 + length
        if total > MAX_SIP_MESSAGE:
            self._drop(head_end + 4)
            return self._after_drop(
                SipError(
                    SipErrorReason.OVERSIZE,
                    f"message of {total} bytes exceeds {MAX_SIP_MESSAGE}",
                    status=513,
                    is_request=not head.startswith(b"SIP/"),
                    headers=_safe_headers(head),
                )
            )
        if len(buf) < total:
            return None
        message = bytes(buf[:total])
        del buf[:total]
        return parse_message(message, stream=True)

    def _drop(self, count: int) -> None:
        del self._buffer[:count]

    def _after_drop(self, error: SipError) -> SipError:
        self._skip_to_start()
        return error

    def _resync(self, reason: SipErrorReason, detail: str) -> SipError:
        # Skip the first byte so we always make progress, then look for a start line.
        del self._buffer[:1]
        self._skip_to_start()
        return SipError(reason, detail, is_request=False)

    def _skip_to_start(self) -> None:
        buf = self._buffer
        match = _START.search(bytes(buf))
        if match:
            del buf[: match.start()]
            return
        # No start line yet: keep only the trailing partial line, which may be the
        # beginning of the next message.
        last = buf.rfind(b"\n")
        del buf[: last + 1]
        if len(buf) > 256:
            del buf[:]


def _safe_headers(head: bytes) -> Headers:
    try:
        return _parse_headers(head.decode("utf-8").split("\r\n")[1:-2])
    except (_Invalid, UnicodeDecodeError):
        return ()


# Headers a refusal needs to be addressed (RFC 3261 section 8.2.6.2): the response echoes
# them, and Via says where it goes.
_ADDRESSING = frozenset({"via", "from", "to", "call-id", "cseq"})


def salvage_headers(data: bytes) -> Headers:
    """The addressing headers of a message too large (or too broken) to parse whole.

    Reads complete header lines from the first ``MAX_SIP_MESSAGE`` bytes and keeps Via,
    From, To, Call-ID and CSeq when they are well-formed, so that a 513 or 400 can still be
    answered (issue 18.5); a line cut off by the limit is not used.
    """
    head = bytes(data[:MAX_SIP_MESSAGE])
    end = head.find(b"\r\n\r\n")
    lines = head[: end if end >= 0 else head.rfind(b"\r\n")].split(b"\r\n")[1:]
    found: list[tuple[str, str]] = []
    for raw in lines:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not _TOKEN.match(name) or any(ord(c) < 32 and c != "\t" for c in value):
            continue
        canonical = canonical_name(name)
        if canonical.lower() in _ADDRESSING:
            found.append((canonical, value.strip()))
        if len(found) >= MAX_HEADERS:
            break
    return tuple(found)


def _content_length(head: bytes) -> int | SipError:
    is_request = not head.startswith(b"SIP/")
    try:
        headers = _parse_headers(head.decode("utf-8").split("\r\n")[1:-2])
        return _declared_length(headers, stream=True) or 0
    except UnicodeDecodeError:
        return SipError(SipErrorReason.BAD_ENCODING, "headers are not UTF-8", 400, is_request)
    except _Invalid as exc:
        return SipError(exc.reason, exc.detail, exc.status, is_request, exc.headers)


# -- building ------------------------------------------------------------------------------

REASONS: dict[int, str] = {
    100: "Trying",
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    408: "Request Timeout",
    415: "Unsupported Media Type",
    481: "Call/Transaction Does Not Exist",
    486: "Busy Here",
    500: "Server Internal Error",
    503: "Service Unavailable",
    505: "Version Not Supported",
    513: "Message Too Large",
}


def new_tag() -> str:
    """A random From/To tag (RFC 3261 section 19.3: at least 32 bits of randomness)."""
    return secrets.token_hex(8)


def new_branch() -> str:
    """A random Via branch with the RFC 3261 magic cookie."""
    return "z9hG4bK" + secrets.token_hex(10)


def reason_phrase(text: str) -> str:
    """Make ``text`` safe as a reason phrase: one line, printable, bounded."""
    cleaned = "".join(c if c.isprintable() else " " for c in text)
    return cleaned[:100].strip() or "Error"


def build_response(
    status: int,
    *,
    request: SipRequest | SipError,
    reason: str | None = None,
    to_tag: str | None = None,
    body: bytes = b"",
    content_type: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
    server: str = "trygg",
) -> bytes:
    """A response echoing Via, From, To (adding ``to_tag`` if it has none), Call-ID, CSeq."""
    lines = [f"{SIP_VERSION} {status} {reason_phrase(reason or REASONS.get(status, 'Unknown'))}"]
    lines.extend(f"Via: {value}" for value in _lookup(request.headers, "Via"))
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = request.header(name)
        if value is None:
            continue
        if name == "To" and to_tag and header_tag(value) is None:
            value = f"{value};tag={to_tag}"
        lines.append(f"{name}: {value}")
    lines.append(f"Server: {server}")
    lines.extend(f"{name}: {value}" for name, value in extra_headers)
    if body:
        lines.append(f"Content-Type: {content_type or 'application/octet-stream'}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def build_request(
    method: str,
    uri: str,
    *,
    via_host: str,
    via_port: int,
    transport: str,
    branch: str,
    from_uri: str,
    from_tag: str,
    to_uri: str,
    call_id: str,
    cseq: int,
    body: bytes = b"",
    content_type: str | None = None,
    max_forwards: int = 70,
    user_agent: str = "trygg",
) -> bytes:
    """An out-of-dialog request such as the MESSAGE that carries a SCAIP ``<mrs>``."""
    lines = [
        f"{method} {uri} {SIP_VERSION}",
        f"Via: {SIP_VERSION}/{transport.upper()} {via_host}:{via_port};branch={branch};rport",
        f"Max-Forwards: {max_forwards}",
        f"From: <{from_uri}>;tag={from_tag}",
        f"To: <{to_uri}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        f"User-Agent: {user_agent}",
    ]
    if body:
        lines.append(f"Content-Type: {content_type or 'application/octet-stream'}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
