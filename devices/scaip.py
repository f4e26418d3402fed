"""A sans-I/O SCAIP codec (SS 91100 / CLC/TS 50134-9): ``<mrq>`` in, ``<mrs>`` out.

A SCAIP controller (the base unit in the home) sends an ``<mrq>`` XML document in a SIP
MESSAGE with ``Content-Type: application/scaip+xml``; the receiver answers with an ``<mrs>``
that echoes ``ref`` and carries a status number ``snu``. This module parses the ``<mrq>``
into a frozen ``ScaipRequest`` or a ``ScaipError`` that already knows which ``snu`` to
answer with, encodes the ``<mrs>``, and maps SCAIP codes to trygg alarm types.

Security: the XML comes from the network, so it is size-limited before parsing and parsed
with defusedxml with DTDs, entity declarations and external references all forbidden
(billion laughs, XXE). Nothing here does I/O and ``parse_mrq`` never raises.

The code tables (``DEVICE_TYPES``, ``STATUS_CODES``) are NOT taken from SS 91100, which is
not public; see docs/scaip.md. Each row says whether it was observed in deployed traffic or
is a provisional placeholder that must be checked against the standard.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import TypeAlias
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape

import defusedxml
import defusedxml.ElementTree

from alarms.model import AlarmType

CONTENT_TYPE = "application/scaip+xml"

# Real <mrq> documents are 100-400 bytes (ten short tags). 4 KiB allows generous optional
# fields and whitespace; anything bigger is answered snu 1 ("too long") before any parsing,
# so a hostile peer cannot make us build large trees.
MAX_SCAIP_XML = 4 * 1024

# One tag's text: long enough for a free-text location (lva) or a SIP caller URI (crd),
# short enough to log and store without surprise.
MAX_FIELD_LEN = 256
MAX_FIELDS = 48

MAX_REF_LEN = 16
MAX_CID_LEN = 64

# Printable ASCII without spaces: ref and cid end up in SIP URIs, logs and the journal.
_ID = re.compile(r"^[\x21-\x7e]+$")
_CODE = re.compile(r"^\d{1,4}$")


class Snu(IntEnum):
    """``<snu>`` status numbers of the ``<mrs>`` response."""

    OK = 0
    TOO_LONG = 1
    INVALID_FORMAT = 2
    WRONG_CONTENT = 3
    HOLD = 4
    NOT_TREATED = 5
    BUSY = 6
    MANDATORY_MISSING = 7


class MessageType(StrEnum):
    """``<mty>``. Absent means ME: deployed controllers omit it on alarms."""

    ALARM = "ME"
    RESET = "RE"
    INFO = "IN"
    HEARTBEAT = "PI"


class ScaipReason(StrEnum):
    """Why an ``<mrq>`` was refused; also the label of the reject counter."""

    OVERSIZE = "oversize"
    FORBIDDEN_XML = "forbidden_xml"
    NOT_XML = "not_xml"
    WRONG_ROOT = "wrong_root"
    NESTED = "nested"
    DUPLICATE_TAG = "duplicate_tag"
    TOO_MANY_FIELDS = "too_many_fields"
    MISSING_TAG = "missing_tag"
    BAD_FIELD = "bad_field"
    UNKNOWN_MTY = "unknown_mty"
    CID_MISMATCH = "cid_mismatch"


_SNU_FOR: dict[ScaipReason, Snu] = {
    ScaipReason.OVERSIZE: Snu.TOO_LONG,
    ScaipReason.FORBIDDEN_XML: Snu.INVALID_FORMAT,
    ScaipReason.NOT_XML: Snu.INVALID_FORMAT,
    ScaipReason.WRONG_ROOT: Snu.INVALID_FORMAT,
    ScaipReason.NESTED: Snu.INVALID_FORMAT,
    ScaipReason.DUPLICATE_TAG: Snu.INVALID_FORMAT,
    ScaipReason.TOO_MANY_FIELDS: Snu.INVALID_FORMAT,
    ScaipReason.MISSING_TAG: Snu.MANDATORY_MISSING,
    ScaipReason.BAD_FIELD: Snu.WRONG_CONTENT,
    ScaipReason.UNKNOWN_MTY: Snu.WRONG_CONTENT,
    ScaipReason.CID_MISMATCH: Snu.WRONG_CONTENT,
}


@dataclass(frozen=True, slots=True)
class Location:
    """Where the alarm was raised: a fixed code/value, or a GPS position."""

    code: str | None = None  # lco, e.g. "002" (a room or zone number)
    value: str | None = None  # lva, free text
    lat: str | None = None  # lte, as sent
    lon: str | None = None  # lge, as sent

    @property
    def latitude(self) -> float | None:
        """``lte`` as decimal degrees if it is one, else None."""
        return _degrees(self.lat, 90.0)

    @property
    def longitude(self) -> float | None:
        """``lge`` as decimal degrees if it is one, else None."""
        return _degrees(self.lon, 180.0)


def _degrees(raw: str | None, limit: float) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and -limit <= value <= limit else None


@dataclass(frozen=True, slots=True)
class ScaipRequest:
    """A valid ``<mrq>``. Codes are kept as sent; ``*_code`` give their numeric value."""

    ref: str
    cid: str
    dty: str
    mty: MessageType
    stc: str | None = None
    pri: int | None = None
    did: str | None = None
    crd: tuple[str, ...] = ()
    location: Location = Location()
    # Every other tag, in document order (cha, ame, dte, hbo, mreq, sco, ver, ...).
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def dty_code(self) -> int:
        """Device type as a number: controllers pad it differently ("2", "02", "0002")."""
        return int(self.dty)

    @property
    def stc_code(self) -> int | None:
        """Status code as a number, or None when absent."""
        return int(self.stc) if self.stc is not None else None

    @property
    def extras(self) -> Mapping[str, str]:
        """``extra`` as a read-only mapping (first value wins for repeated tags)."""
        out: dict[str, str] = {}
        for tag, text in self.extra:
            out.setdefault(tag, text)
        return MappingProxyType(out)


@dataclass(frozen=True, slots=True)
class ScaipError:
    """A refused ``<mrq>``: answer it with ``<mrs>`` carrying ``snu`` and ``ref`` (if known)."""

    snu: Snu
    reason: ScaipReason
    detail: str
    ref: str | None = None
    cid: str | None = None


@dataclass(frozen=True, slots=True)
class ScaipResponse:
    """A parsed ``<mrs>`` (used by tests and by anything that sends ``<mrq>``)."""

    ref: str | None
    snu: int
    extra: tuple[tuple[str, str], ...] = ()


class _Invalid(Exception):
    def __init__(self, reason: ScaipReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# -- parsing -------------------------------------------------------------------------------


def _parse_xml(data: bytes, root_tag: str) -> Element:
    try:
        root: Element = defusedxml.ElementTree.fromstring(
            data, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except defusedxml.DefusedXmlException as exc:
        raise _Invalid(ScaipReason.FORBIDDEN_XML, f"refused XML construct: {exc}"[:200]) from None
    except (ParseError, ValueError, LookupError, RecursionError) as exc:
        # ParseError for malformed XML; LookupError for an unknown declared encoding;
        # ValueError/RecursionError are defensive for pathological inputs.
        raise _Invalid(ScaipReason.NOT_XML, f"not XML: {exc}"[:200]) from None
    if not isinstance(root.tag, str) or root.tag != root_tag:
        raise _Invalid(ScaipReason.WRONG_ROOT, f"root element must be <{root_tag}>")
    return root


def _fields(root: Element) -> list[tuple[str, str]]:
    """The children of the root as (tag, stripped text), refusing structure we don't know."""
    if (root.text or "").strip():
        raise _Invalid(ScaipReason.NESTED, "text directly inside the root element")
    out: list[tuple[str, str]] = []
    for child in root:
        if not isinstance(child.tag, str):  # comments and processing instructions
            continue
        if len(child):
            raise _Invalid(ScaipReason.NESTED, f"<{child.tag}> must not contain elements")
        if (child.tail or "").strip():
            raise _Invalid(ScaipReason.NESTED, "text between elements")
        text = (child.text or "").strip()
        if len(text) > MAX_FIELD_LEN:
            raise _Invalid(ScaipReason.BAD_FIELD, f"<{child.tag}> longer than {MAX_FIELD_LEN}")
        out.append((child.tag, text))
        if len(out) > MAX_FIELDS:
            raise _Invalid(ScaipReason.TOO_MANY_FIELDS, f"more than {MAX_FIELDS} elements")
    return out


# Tags that may appear more than once: a controller may list several caller ids.
_REPEATABLE = frozenset({"crd"})
_KNOWN = frozenset(
    {"ref", "cid", "dty", "mty", "stc", "pri", "did", "crd", "lco", "lva", "lte", "lge"}
)


def parse_mrq(data: bytes) -> ScaipRequest | ScaipError:
    """Parse an ``<mrq>`` document. Never raises on any input."""
    if len(data) > MAX_SCAIP_XML:
        return ScaipError(
            Snu.TOO_LONG,
            ScaipReason.OVERSIZE,
            f"document of {len(data)} bytes exceeds {MAX_SCAIP_XML}",
        )
    ref: str | None = None
    cid: str | None = None
    try:
        fields = _fields(_parse_xml(data, "mrq"))
        single = _index(fields)
        # Pick ref/cid out first so even a refusal can be correlated by the sender.
        raw_ref = single.get("ref")
        if raw_ref and len(raw_ref) <= MAX_REF_LEN and _ID.match(raw_ref):
            ref = raw_ref
        raw_cid = single.get("cid")
        if raw_cid and len(raw_cid) <= MAX_CID_LEN and _ID.match(raw_cid):
            cid = raw_cid
        return _build(single, fields)
    except _Invalid as exc:
        return ScaipError(_SNU_FOR[exc.reason], exc.reason, exc.detail, ref=ref, cid=cid)


def _index(fields: list[tuple[str, str]]) -> dict[str, str]:
    single: dict[str, str] = {}
    for tag, text in fields:
        if tag in _KNOWN and tag not in _REPEATABLE:
            if tag in single:
                raise _Invalid(ScaipReason.DUPLICATE_TAG, f"<{tag}> given twice")
            single[tag] = text
    return single


def _build(single: dict[str, str], fields: list[tuple[str, str]]) -> ScaipRequest:
    for tag in ("ref", "cid", "dty"):
        if not single.get(tag):
            raise _Invalid(ScaipReason.MISSING_TAG, f"mandatory <{tag}> missing or empty")
    ref = single["ref"]
    if len(ref) > MAX_REF_LEN or not _ID.match(ref):
        raise _Invalid(ScaipReason.BAD_FIELD, f"<ref> must be 1-{MAX_REF_LEN} printable characters")
    cid = single["cid"]
    if len(cid) > MAX_CID_LEN or not _ID.match(cid):
        raise _Invalid(ScaipReason.BAD_FIELD, f"<cid> must be 1-{MAX_CID_LEN} printable characters")
    dty = single["dty"]
    if not _CODE.match(dty):
        raise _Invalid(ScaipReason.BAD_FIELD, "<dty> must be 1-4 digits")
    raw_mty = single.get("mty") or MessageType.ALARM.value
    try:
        mty = MessageType(raw_mty.upper())
    except ValueError:
        raise _Invalid(ScaipReason.UNKNOWN_MTY, f"unknown <mty> {raw_mty[:8]!r}") from None
    stc = single.get("stc") or None
    if stc is not None and not _CODE.match(stc):
        raise _Invalid(ScaipReason.BAD_FIELD, "<stc> must be 1-4 digits")
    raw_pri = single.get("pri") or None
    if raw_pri is not None and not re.fullmatch(r"\d{1,2}", raw_pri):
        raise _Invalid(ScaipReason.BAD_FIELD, "<pri> must be a number 0-99")
    pri = int(raw_pri) if raw_pri is not None else None
    return ScaipRequest(
        ref=ref,
        cid=cid,
        dty=dty,
        mty=mty,
        stc=stc,
        pri=pri,
        did=single.get("did") or None,
        crd=tuple(text for tag, text in fields if tag == "crd"),
        location=Location(
            code=single.get("lco") or None,
            value=single.get("lva") or None,
            lat=single.get("lte") or None,
            lon=single.get("lge") or None,
        ),
        extra=tuple((tag, text) for tag, text in fields if tag not in _KNOWN),
    )


def check_sender(request: ScaipRequest, from_user: str | None) -> ScaipError | None:
    """SCAIP requires the SIP From user to be the controller id; else answer snu 3."""
    if from_user == request.cid:
        return None
    return ScaipError(
        Snu.WRONG_CONTENT,
        ScaipReason.CID_MISMATCH,
        f"SIP From user {str(from_user)[:64]!r} is not <cid> {request.cid!r}",
        ref=request.ref,
        cid=request.cid,
    )


# -- encoding ------------------------------------------------------------------------------


def encode_mrs(ref: str | None, snu: int, extra: Iterable[tuple[str, str]] = ()) -> bytes:
    """An ``<mrs>`` answering ``ref`` with ``snu``. ``ref`` is omitted if it was unreadable."""
    parts = ["<mrs>"]
    if ref is not None:
        parts.append(f"<ref>{escape(ref)}</ref>")
    parts.append(f"<snu>{int(snu)}</snu>")
    parts.extend(f"<{tag}>{escape(text)}</{tag}>" for tag, text in extra if _is_tag(tag))
    parts.append("</mrs>")
    return "".join(parts).encode()


def encode_mrq(
    *,
    ref: str,
    cid: str,
    dty: str,
    mty: MessageType | str = MessageType.ALARM,
    stc: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
) -> bytes:
    """An ``<mrq>``: for tests, the simulator and anything that talks SCAIP upstream."""
    fields: list[tuple[str, str]] = [("ref", ref), ("mty", str(mty)), ("cid", cid), ("dty", dty)]
    if stc is not None:
        fields.append(("stc", stc))
    fields.extend(extra)
    body = "".join(f"<{tag}>{escape(text)}</{tag}>" for tag, text in fields if _is_tag(tag))
    return f"<mrq>{body}</mrq>".encode()


def _is_tag(tag: str) -> bool:
    return re.fullmatch(r"[a-z][a-z0-9]{0,15}", tag) is not None


def _snu(raw: str) -> int:
    if not re.fullmatch(r"\d{1,3}", raw):
        raise _Invalid(ScaipReason.MISSING_TAG, "<snu> missing or not a number")
    return int(raw)


def parse_mrs(data: bytes) -> ScaipResponse | ScaipError:
    """Parse an ``<mrs>``. Never raises on any input."""
    if len(data) > MAX_SCAIP_XML:
        return ScaipError(Snu.TOO_LONG, ScaipReason.OVERSIZE, "document too long")
    try:
        fields = _fields(_parse_xml(data, "mrs"))
        values = dict(fields)
        return ScaipResponse(
            ref=values.get("ref") or None,
            snu=_snu(values.get("snu", "")),
            extra=tuple((t, v) for t, v in fields if t not in ("ref", "snu")),
        )
    except _Invalid as exc:
        return ScaipError(_SNU_FOR[exc.reason], exc.reason, exc.detail)


# -- mapping to trygg ----------------------------------------------------------------------


class EventKind(StrEnum):
    """What a SCAIP request means to the alarm core."""

    ALARM = "alarm"
    HEARTBEAT = "heartbeat"
    RESET = "reset"
    INFO = "info"


class StatusMeaning(StrEnum):
    """What an ``<stc>`` on an ME message means, before the device type is considered."""

    ALARM = "alarm"  # an alarm; its type comes from the device type
    CANCEL = "cancel"  # the alarm was cancelled at the controller
    TEST = "test"  # a test transmission (provlarm)


@dataclass(frozen=True, slots=True)
class CodeRow:
    """One row of a code table, with where it came from."""

    code: int
    meaning: str
    verified: bool  # True: seen in deployed traffic; False: provisional, check SS 91100


# Device types (<dty>). Rows marked verified=False are PROVISIONAL placeholders chosen for
# this gateway, not codes from SS 91100; they must be checked against the standard (or the
# controller vendor's SCAIP implementation notes) before production. Unknown device types
# on an alarm become MANUAL alarms: an alarm is never dropped for an unknown code.
DEVICE_TYPE_ROWS: tuple[tuple[CodeRow, AlarmType], ...] = (
    (CodeRow(1, "alarm unit / controller", False), AlarmType.MANUAL),
    (CodeRow(2, "alarm unit (seen on heartbeats and alarms)", True), AlarmType.MANUAL),
    (CodeRow(3, "personal trigger (seen on stc 10 alarms)", True), AlarmType.MANUAL),
    (CodeRow(4, "personal trigger (seen on stc 10 alarms)", True), AlarmType.MANUAL),
    (CodeRow(5, "fall detector", False), AlarmType.FALL),
    (CodeRow(6, "smoke detector", False), AlarmType.SMOKE),
    (CodeRow(7, "water / flood detector", False), AlarmType.WATER),
    (CodeRow(8, "bed / chair occupancy sensor", False), AlarmType.BED_EXIT),
    (CodeRow(9, "door sensor", False), AlarmType.DOOR),
    (CodeRow(10, "inactivity / activity monitor", False), AlarmType.INACTIVITY),
    (CodeRow(11, "temperature sensor", False), AlarmType.TEMPERATURE),
)
DEVICE_TYPES: Mapping[int, AlarmType] = MappingProxyType(
    {row.code: alarm_type for row, alarm_type in DEVICE_TYPE_ROWS}
)

# Status codes (<stc>) on ME messages. 10, 19 and 102 are what deployed receivers act on
# (10 the ordinary alarm, 19 "cancel", 102 "test transmission, primary channel"); the
# standard defines many more, which fall back to ALARM so nothing is lost.
STATUS_CODE_ROWS: tuple[tuple[CodeRow, StatusMeaning], ...] = (
    (CodeRow(10, "alarm", True), StatusMeaning.ALARM),
    (CodeRow(19, "cancel", True), StatusMeaning.CANCEL),
    (CodeRow(102, "test transmission, primary channel", True), StatusMeaning.TEST),
)
STATUS_CODES: Mapping[int, StatusMeaning] = MappingProxyType(
    {row.code: meaning for row, meaning in STATUS_CODE_ROWS}
)


@dataclass(frozen=True, slots=True)
class Classification:
    """A SCAIP request in trygg's terms. ``alarm_type`` is set only for ALARM."""

    kind: EventKind
    alarm_type: AlarmType | None
    known: bool  # False when a fallback was used (unknown dty or stc): log it, store it


Table: TypeAlias = Mapping[int, AlarmType]


def classify(
    request: ScaipRequest,
    *,
    device_types: Table = DEVICE_TYPES,
    status_codes: Mapping[int, StatusMeaning] = STATUS_CODES,
) -> Classification:
    """Map a request to heartbeat/reset/info or an alarm with a trygg ``AlarmType``.

    PI is a heartbeat, RE a reset, IN information. An ME is an alarm unless its ``stc``
    says cancel (a reset) or test (a TEST alarm); the alarm type comes from ``dty``, and an
    unknown ``dty`` gives a MANUAL alarm with ``known=False``. Both tables are parameters so
    a site can correct them without a code change.
    """
    if request.mty is MessageType.HEARTBEAT:
        return Classification(EventKind.HEARTBEAT, None, known=True)
    if request.mty is MessageType.RESET:
        return Classification(EventKind.RESET, None, known=True)
    if request.mty is MessageType.INFO:
        return Classification(EventKind.INFO, None, known=True)
    stc = request.stc_code
    meaning = status_codes.get(stc) if stc is not None else StatusMeaning.ALARM
    stc_known = meaning is not None
    if meaning is StatusMeaning.CANCEL:
        return Classification(EventKind.RESET, None, known=True)
    if meaning is StatusMeaning.TEST:
        return Classification(EventKind.ALARM, AlarmType.TEST, known=True)
    alarm_type = device_types.get(request.dty_code)
    if alarm_type is None:
        return Classification(EventKind.ALARM, AlarmType.MANUAL, known=False)
    return Classification(EventKind.ALARM, alarm_type, known=stc_known)
